/**
 * `airlock approvals ls | approve | deny`: what a policy marked `ask` waits here for a person
 * (docs/approvals.md). Over the daemon (AIRLOCK_URL + AIRLOCK_API_KEY, or the local daemon and
 * its admin.key), or with --data-dir over the engine in this process, acting as admin.
 */
import type { ApprovalInfo, ApprovalState } from '@airlock/engine';
import type { BackendOptions } from '../backend.js';
import { UsageError } from '../flags.js';
import { EXIT, formatTable, printJson, shortTime } from '../output.js';
import { DEFAULT_DAEMON_URL, DEFAULT_DATA_DIR, healthy, readAdminKey } from '../select-backend.js';

type Flags = BackendOptions & { json?: boolean };

export interface ApprovalBackend {
  list(q: { state?: ApprovalState; sandbox?: string; tenant?: string }): Promise<ApprovalInfo[]>;
  approve(id: string, reason?: string): Promise<ApprovalInfo>;
  deny(id: string, reason?: string): Promise<ApprovalInfo>;
  close(): Promise<void>;
}

async function remote(url: string, apiKey: string | undefined): Promise<ApprovalBackend> {
  const { ApiClient } = await import('@airlock/sdk');
  const c = new ApiClient({ url, apiKey });
  const opts = (reason?: string) => (reason !== undefined ? { reason } : {});
  return {
    list: (q) => c.listApprovals(q) as Promise<ApprovalInfo[]>,
    approve: (id, reason) => c.approveApproval(id, opts(reason)) as Promise<ApprovalInfo>,
    deny: (id, reason) => c.denyApproval(id, opts(reason)) as Promise<ApprovalInfo>,
    close: async () => {},
  };
}

async function embedded(dataDir: string): Promise<ApprovalBackend> {
  const { openEngine } = await import('../backend-embedded.js');
  const engine = await openEngine({ dataDir });
  // The operator at the keyboard owns the data dir: the admin view.
  const admin = { tenant: null };
  const input = (reason?: string) => (reason !== undefined ? { reason } : {});
  return {
    list: async (q) => engine.listApprovals(admin, q),
    approve: async (id, reason) => engine.approveApproval(admin, id, input(reason)),
    deny: async (id, reason) => engine.denyApproval(admin, id, input(reason)),
    close: () => engine.close(),
  };
}

async function openApprovalBackend(opts: BackendOptions, env: NodeJS.ProcessEnv = process.env): Promise<ApprovalBackend> {
  if (opts.dataDir === undefined && env.AIRLOCK_URL) return remote(env.AIRLOCK_URL, env.AIRLOCK_API_KEY || undefined);
  if (opts.dataDir === undefined) {
    const key = readAdminKey(DEFAULT_DATA_DIR);
    if (key !== null && (await healthy(DEFAULT_DAEMON_URL, 300))) return remote(DEFAULT_DAEMON_URL, key);
  }
  if (opts.dnsUpstream) throw new UsageError('--dns-upstream does not apply here');
  return embedded(opts.dataDir ?? DEFAULT_DATA_DIR);
}

async function withApprovals<T>(opts: BackendOptions, fn: (b: ApprovalBackend) => Promise<T>): Promise<T> {
  const b = await openApprovalBackend(opts);
  try {
    return await fn(b);
  } finally {
    await b.close().catch(() => undefined);
  }
}

/** One line saying what is asked for: hosts, mounts or a lifetime. */
export function subjectSummary(a: ApprovalInfo): string {
  const s = a.subject;
  const parts: string[] = [];
  if (s.hosts?.length) parts.push(`egress ${s.hosts.join(', ')}${s.port !== undefined ? ` (port ${s.port})` : ''}`);
  if (s.mounts?.length) parts.push(`rw mount ${s.mounts.map((m) => `${m.source}:${m.target}`).join(', ')}`);
  if (s.lifetimeSeconds !== undefined) parts.push(`lifetime ${s.lifetimeSeconds} s`);
  return parts.join('; ') || s.rules.map((r) => r.rule).join(', ');
}

export async function approvalsListCommand(flags: Flags & { state?: ApprovalState; sandbox?: string; tenant?: string }): Promise<number> {
  return withApprovals(flags, async (b) => {
    const list = await b.list({
      ...(flags.state ? { state: flags.state } : {}), ...(flags.sandbox ? { sandbox: flags.sandbox } : {}), ...(flags.tenant ? { tenant: flags.tenant } : {}),
    });
    if (flags.json) printJson(list);
    else {
      process.stdout.write(formatTable(['ID', 'STATE', 'TENANT', 'SANDBOX', 'ACTION', 'REQUESTED', 'EXPIRES/DECIDED', 'SUBJECT'],
        list.map((a) => [a.id, a.state, a.tenant, a.sandbox ?? '-', a.action, shortTime(a.requestedAt), shortTime(a.decidedAt ?? a.expiresAt), subjectSummary(a)])));
    }
    return EXIT.ok;
  });
}

export async function approvalDecideCommand(verdict: 'approve' | 'deny', ids: string[], flags: Flags & { reason?: string }): Promise<number> {
  return withApprovals(flags, async (b) => {
    const done: ApprovalInfo[] = [];
    for (const id of ids) done.push(verdict === 'approve' ? await b.approve(id, flags.reason) : await b.deny(id, flags.reason));
    if (flags.json) printJson(done.length === 1 ? done[0] : done);
    else for (const a of done) process.stdout.write(`${a.id} ${a.state}: ${subjectSummary(a)}\n`);
    return EXIT.ok;
  });
}
