/** `airlock usage`: metered usage and cost (docs/metering.md). */
import type { UsageQuery, UsageReport, UsageTotals } from '@airlock/engine';
import type { BackendOptions } from '../backend.js';
import { UsageError } from '../flags.js';
import { EXIT, formatTable, printJson } from '../output.js';
import { DEFAULT_DAEMON_URL, DEFAULT_DATA_DIR, healthy, readAdminKey } from '../select-backend.js';

export type UsageFlags = BackendOptions & { sandbox?: string; tenant?: string; from?: string; to?: string; json?: boolean };

/** Over the daemon (AIRLOCK_URL with any key: a tenant's sees its own) or the engine in this process (admin). */
async function fetchUsage(flags: UsageFlags, q: UsageQuery, env: NodeJS.ProcessEnv = process.env): Promise<UsageReport> {
  const remote = async (url: string, apiKey: string | undefined) => {
    const { ApiClient } = await import('@airlock/sdk');
    return new ApiClient({ url, apiKey }).usage(q) as Promise<UsageReport>;
  };
  if (flags.dataDir === undefined && env.AIRLOCK_URL) return remote(env.AIRLOCK_URL, env.AIRLOCK_API_KEY || undefined);
  if (flags.dataDir === undefined) {
    const key = readAdminKey(DEFAULT_DATA_DIR);
    if (key !== null && (await healthy(DEFAULT_DAEMON_URL, 300))) return remote(DEFAULT_DAEMON_URL, key);
  }
  const { openEngine } = await import('../backend-embedded.js');
  const engine = await openEngine({ dataDir: flags.dataDir ?? DEFAULT_DATA_DIR });
  try {
    return engine.usage({ tenant: null }, q);
  } finally {
    await engine.close();
  }
}

const num = (n: number, digits: number) => n.toFixed(digits);
const cost = (n: number) => n.toFixed(4);

export async function usageCommand(flags: UsageFlags): Promise<number> {
  if (flags.sandbox !== undefined && flags.tenant !== undefined) throw new UsageError('give --sandbox or --tenant, not both');
  const q: UsageQuery = {
    ...(flags.sandbox !== undefined ? { sandbox: flags.sandbox } : {}),
    ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}),
    ...(flags.from !== undefined ? { from: flags.from } : {}),
    ...(flags.to !== undefined ? { to: flags.to } : {}),
  };
  const u = await fetchUsage(flags, q);
  if (flags.json) {
    printJson(u);
    return EXIT.ok;
  }
  const head = ['', 'CPU S', 'MEM GIB·S', 'DISK GIB·H', 'NET IN', 'NET OUT', 'COST'];
  const cells = (t: UsageTotals) => [num(t.cpuSeconds, 2), num(t.memoryGiBSeconds, 2), num(t.diskGiBHours, 4), String(t.netBytesIn), String(t.netBytesOut), cost(t.cost)];
  if (u.days.length > 0) {
    process.stdout.write(formatTable(['DAY', 'TENANT', ...head.slice(1)], u.days.map((d) => [d.day, d.tenant, ...cells(d)])));
    process.stdout.write('\n');
  }
  process.stdout.write(formatTable(['SANDBOX', 'TENANT', ...head.slice(1)], [
    ...u.sandboxes.map((s) => [s.sandbox, s.tenant, ...cells(s)]),
    ['TOTAL', '', ...cells(u)],
  ]));
  return EXIT.ok;
}
