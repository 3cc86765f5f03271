/**
 * `airlock audit verify | tail | export` (docs/audit.md). Against the daemon (AIRLOCK_URL, or the
 * local one with its admin.key) or, with --data-dir, on a data dir in this process: verify reads
 * the database read-only; tail polls it; export opens the engine.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { BundleVerifyResult, VerifyResult } from '@airlock/engine';
import { UsageError } from '../flags.js';
import { EXIT, printJson, warn } from '../output.js';
import { DEFAULT_DAEMON_URL, DEFAULT_DATA_DIR, healthy, readAdminKey } from '../select-backend.js';
import { followEvents, type FollowFilter } from '../audit-follow.js';

interface Daemon { url: string; apiKey?: string }

/** The daemon to talk to, or null for the data dir in this process (same choice as every command). */
async function daemonFor(dataDir: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Daemon | null> {
  if (dataDir !== undefined) return null;
  if (env.AIRLOCK_URL) return { url: env.AIRLOCK_URL, ...(env.AIRLOCK_API_KEY ? { apiKey: env.AIRLOCK_API_KEY } : {}) };
  const key = readAdminKey(DEFAULT_DATA_DIR);
  if (key !== null && (await healthy(DEFAULT_DAEMON_URL, 300))) return { url: DEFAULT_DAEMON_URL, apiKey: key };
  return null;
}

async function get(d: Daemon, path: string): Promise<Response> {
  const res = await fetch(new URL(path, d.url), { headers: d.apiKey ? { authorization: `Bearer ${d.apiKey}` } : {} });
  if (!res.ok) {
    const body = await res.json().catch(() => null) as { error?: { message?: string } } | null;
    throw new Error(`${path}: HTTP ${res.status}${body?.error?.message ? `: ${body.error.message}` : ''}`);
  }
  return res;
}

function report(r: VerifyResult | BundleVerifyResult, json: boolean | undefined, what: string): number {
  if (json) printJson(r);
  else if (r.ok) process.stdout.write(`${what} intact: ${r.events} events (head ${r.headSeq}), ${r.checkpoints} signed checkpoints verified\n`);
  else process.stdout.write(`${what} BROKEN at seq ${r.firstBroken!.seq}: ${r.firstBroken!.reason} (${r.firstBroken!.detail}); ${r.events} events before it verified\n`);
  return r.ok ? EXIT.ok : EXIT.failure;
}

export interface VerifyFlags { dataDir?: string; bundle?: string; publicKey?: string; json?: boolean }

export async function auditVerifyCommand(flags: VerifyFlags): Promise<number> {
  const publicKeyPem = flags.publicKey !== undefined ? readFileSync(flags.publicKey, 'utf8') : undefined;
  const engine = await import('@airlock/engine');
  if (flags.bundle !== undefined) {
    return report(engine.verifyBundle(readFileSync(flags.bundle), publicKeyPem), flags.json, 'bundle');
  }
  const d = await daemonFor(flags.dataDir);
  if (d) {
    if (publicKeyPem !== undefined) throw new UsageError('--public-key applies to --bundle and --data-dir; the daemon checks with its own key');
    return report(await (await get(d, '/v1/audit/verify')).json() as VerifyResult, flags.json, 'audit log');
  }
  const dataDir = flags.dataDir ?? DEFAULT_DATA_DIR;
  const r = engine.verifyDataDir(dataDir, publicKeyPem !== undefined ? { publicKeyPem } : {});
  if (!r.signaturesChecked && !flags.json) warn('no audit key readable (give --public-key FILE): checkpoint signatures were not checked');
  return report(r, flags.json, 'audit log');
}

export interface TailFlags { dataDir?: string; sandbox?: string; type?: string; tenant?: string; after?: number; json?: boolean }

function printEvent(e: Record<string, unknown>, json: boolean | undefined): void {
  if (json) process.stdout.write(`${JSON.stringify(e)}\n`);
  else process.stdout.write(`${String(e.seq).padStart(8)} ${String(e.ts)} ${String(e.tenant)} ${String(e.sandbox ?? '-')} ${String(e.type)} ${JSON.stringify(e.data)}\n`);
}

export async function auditTailCommand(flags: TailFlags): Promise<number> {
  const filter: FollowFilter = {};
  if (flags.sandbox !== undefined) filter.sandbox = flags.sandbox;
  if (flags.type !== undefined) filter.type = flags.type;
  if (flags.tenant !== undefined) filter.tenant = flags.tenant;
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const d = await daemonFor(flags.dataDir);
    if (d) {
      await followEvents({
        url: d.url, ...(d.apiKey ? { apiKey: d.apiKey } : {}), filter, signal: ac.signal,
        ...(flags.after !== undefined ? { after: flags.after } : {}),
        onEvent: (e) => printEvent(e, flags.json),
        onReconnect: (seq, why) => warn(`event stream dropped (${why}); resuming after ${seq ?? 'the live point'}`),
      });
      return EXIT.ok;
    }
    await tailDataDir(flags.dataDir ?? DEFAULT_DATA_DIR, filter, flags, ac.signal);
    return EXIT.ok;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/** Embedded: the log is shared with other processes on the data dir, so poll the store by seq. */
async function tailDataDir(dataDir: string, filter: FollowFilter, flags: TailFlags, signal: AbortSignal): Promise<void> {
  const { openEngine } = await import('../backend-embedded.js');
  const engine = await openEngine({ dataDir });
  const admin = { tenant: null };
  try {
    let after = flags.after;
    if (after === undefined) {
      // Live only: skip to the current head.
      after = 0;
      for (;;) {
        const page = engine.listEvents(admin, { afterSeq: after, limit: 10_000 });
        if (page.length === 0) break;
        after = page[page.length - 1]!.seq;
      }
    }
    while (!signal.aborted) {
      const page = engine.listEvents(admin, { ...filter, afterSeq: after, limit: 1000 });
      for (const e of page) printEvent(e as unknown as Record<string, unknown>, flags.json);
      if (page.length > 0) after = page[page.length - 1]!.seq;
      if (page.length < 1000) await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    await engine.close();
  }
}

export interface ExportFlags { dataDir?: string; sandbox?: string; since?: string; output?: string }

export async function auditExportCommand(flags: ExportFlags): Promise<number> {
  if (flags.sandbox === undefined && flags.since === undefined) throw new UsageError('give --sandbox ID or --since TIME');
  const out = flags.output ?? `airlock-audit-${flags.sandbox ?? 'since'}.tar.gz`;
  const d = await daemonFor(flags.dataDir);
  let bundle: Buffer;
  if (d) {
    const q = new URLSearchParams();
    if (flags.sandbox !== undefined) q.set('sandbox', flags.sandbox);
    if (flags.since !== undefined) q.set('since', flags.since);
    bundle = Buffer.from(await (await get(d, `/v1/audit/export?${q.toString()}`)).arrayBuffer());
  } else {
    const { openEngine } = await import('../backend-embedded.js');
    const engine = await openEngine({ dataDir: flags.dataDir ?? DEFAULT_DATA_DIR });
    try {
      bundle = engine.exportAudit({ tenant: null }, { ...(flags.sandbox !== undefined ? { sandbox: flags.sandbox } : {}), ...(flags.since !== undefined ? { since: flags.since } : {}) });
    } finally {
      await engine.close();
    }
  }
  writeFileSync(out, bundle, { mode: 0o600 });
  process.stdout.write(`${out}\n`);
  return EXIT.ok;
}
