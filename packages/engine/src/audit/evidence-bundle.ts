import { createHash, type KeyObject } from 'node:crypto';
import type { Db } from '../store/db.js';
import { ChainVerifier, type CheckpointRow, type VerifyResult } from './chain-verifier.js';
import { readBundleTar, writeBundleTar } from './bundle-tar.js';
import { parsePublicKey } from './signing-key.js';

/**
 * Evidence bundles (docs/audit.md): the events of one sandbox (or all since a time) with enough
 * of the chain to check them offline. Every event from the first selected one up to the first
 * signed checkpoint at or after the last is in the bundle; unselected ones are "redacted" to
 * their seq, prev and hash, so the chain still links and the checkpoint signature anchors it.
 */
export const BUNDLE_FORMAT = 'airlock-audit-bundle/1';
const SHA256_HEX = /^[0-9a-f]{64}$/;

export interface ExportSelection {
  sandbox?: string;
  /** ISO time: every event at or after it. */
  since?: string;
}

interface BundleManifest {
  format: string;
  createdAt: string;
  selection: ExportSelection;
  /** Seq and hash just before the first event in the bundle (genesis: 0 and 64 zeros). */
  startAfter: { seq: number; hash: string };
  range: { fromSeq: number; toSeq: number };
  selectedEvents: number;
}

type Row = { seq: number; ts: string; tenant: string; sandbox: string | null; type: string; data: string; prev: string; hash: string };

export interface ExportSources {
  db: Db;
  publicKeyPem: string;
  /** The whole log's verification at export time (recorded in the bundle). */
  logVerification: VerifyResult;
  /** Recorded exec output by sha256 (records/blob-store.ts); exec.exited events name these hashes. */
  blob?: (sha256: string) => Buffer | null;
}

/** Builds the bundle tar.gz. The caller signs a head checkpoint first so the range ends at one. */
export function buildEvidenceBundle(src: ExportSources, sel: ExportSelection): Buffer {
  const { db } = src;
  const match = (r: Pick<Row, 'sandbox' | 'ts'>): boolean =>
    (sel.sandbox === undefined || r.sandbox === sel.sandbox) && (sel.since === undefined || r.ts >= sel.since);
  const where: string[] = [];
  const args: string[] = [];
  if (sel.sandbox !== undefined) { where.push('sandbox = ?'); args.push(sel.sandbox); }
  if (sel.since !== undefined) { where.push('ts >= ?'); args.push(sel.since); }
  const cond = where.length ? `WHERE ${where.join(' AND ')}` : '';
  const bounds = db.prepare(`SELECT MIN(seq) AS lo, MAX(seq) AS hi, COUNT(*) AS n FROM events ${cond}`).get(...args) as { lo: number | null; hi: number | null; n: number };
  if (bounds.lo === null || bounds.hi === null) throw new Error('no events match the selection');
  const anchor = db.prepare('SELECT MIN(seq) FROM audit_checkpoints WHERE seq >= ?').pluck().get(bounds.hi) as number | null;
  const toSeq = anchor ?? bounds.hi;
  const checkpoints = db.prepare('SELECT seq, hash, ts, signature FROM audit_checkpoints WHERE seq BETWEEN ? AND ? ORDER BY seq, id')
    .all(bounds.lo, toSeq) as CheckpointRow[];

  const lines: string[] = [];
  const selected: Row[] = [];
  let startAfter: BundleManifest['startAfter'] | null = null;
  for (const r of db.prepare('SELECT seq, ts, tenant, sandbox, type, data, prev, hash FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq')
    .iterate(bounds.lo, toSeq) as IterableIterator<Row>) {
    startAfter ??= { seq: r.seq - 1, hash: r.prev };
    if (match(r)) {
      selected.push(r);
      lines.push(`{"seq":${r.seq},"ts":${JSON.stringify(r.ts)},"tenant":${JSON.stringify(r.tenant)},"sandbox":${JSON.stringify(r.sandbox)},"type":${JSON.stringify(r.type)},"data":${r.data},"prev":"${r.prev}","hash":"${r.hash}"}`);
    } else {
      lines.push(`{"seq":${r.seq},"redacted":true,"prev":"${r.prev}","hash":"${r.hash}"}`);
    }
  }
  const manifest: BundleManifest = {
    format: BUNDLE_FORMAT, createdAt: new Date().toISOString(), selection: sel,
    startAfter: startAfter!, range: { fromSeq: bounds.lo, toSeq }, selectedEvents: selected.length,
  };
  const files = new Map<string, string | Buffer>([
    ['manifest.json', JSON.stringify(manifest, null, 2)],
    ['events.ndjson', lines.join('\n') + '\n'],
    ['checkpoints.json', JSON.stringify(checkpoints, null, 2)],
    ['public-key.pem', src.publicKeyPem],
  ]);
  const parsed = selected.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> }));
  const outputs = new Map<string, Buffer>();
  for (const e of parsed) {
    if (e.type !== 'exec.exited') continue;
    for (const sha of [e.data.stdoutSha256, e.data.stderrSha256]) {
      if (typeof sha !== 'string' || !SHA256_HEX.test(sha) || outputs.has(sha)) continue;
      const content = src.blob?.(sha);
      if (content) outputs.set(sha, content);
    }
  }
  files.set('exec-outputs.ndjson', execOutputs(parsed, outputs));
  // Each output blob is named by its sha256, which the (chained) exec.exited event carries.
  for (const [sha, content] of outputs) files.set(`output-${sha}`, content);
  files.set('file-manifest.json', JSON.stringify(fileManifest(parsed), null, 2));
  files.set('policy.json', JSON.stringify(policiesInForce(db, parsed), null, 2));
  const bundleCheck = verifyBundleFiles(files, null);
  files.set('verification.json', JSON.stringify({ log: src.logVerification, bundle: bundleCheck }, null, 2));
  return writeBundleTar(files);
}

type Parsed = Omit<Row, 'data'> & { data: Record<string, unknown> };

/** One line per exec: the command (exec.started) joined with its end and recorded output (exec.exited). */
function execOutputs(events: Parsed[], outputs: Map<string, Buffer>): string {
  const text = (sha: unknown): string | null => (typeof sha === 'string' ? outputs.get(sha)?.toString('utf8') ?? null : null);
  const started = new Map<unknown, Parsed>();
  const out: string[] = [];
  for (const e of events) {
    if (e.type === 'exec.started') started.set(e.data.execId, e);
    if (e.type === 'exec.exited') {
      const s = started.get(e.data.execId);
      out.push(JSON.stringify({
        execId: e.data.execId, sandbox: e.sandbox, cmd: s?.data.cmd ?? null, startedSeq: s?.seq ?? null, exitedSeq: e.seq, ...e.data,
        stdout: text(e.data.stdoutSha256) ?? e.data.stdout ?? null, stderr: text(e.data.stderrSha256) ?? e.data.stderr ?? null,
      }));
    }
  }
  return out.length ? out.join('\n') + '\n' : '';
}

/** Each path's history from file.* events, ending with its last known state. */
function fileManifest(events: Parsed[]): Array<{ path: string; state: 'written' | 'deleted'; size: number | null; history: Array<{ seq: number; ts: string; type: string; size?: unknown }> }> {
  const byPath = new Map<string, ReturnType<typeof fileManifest>[number]>();
  for (const e of events) {
    if (e.type !== 'file.written' && e.type !== 'file.deleted') continue;
    const path = String(e.data.path);
    const entry = byPath.get(path) ?? { path, state: 'written' as const, size: null, history: [] };
    entry.state = e.type === 'file.written' ? 'written' : 'deleted';
    entry.size = e.type === 'file.written' && typeof e.data.size === 'number' ? e.data.size : null;
    entry.history.push({ seq: e.seq, ts: e.ts, type: e.type, ...(e.data.size !== undefined ? { size: e.data.size } : {}) });
    byPath.set(path, entry);
  }
  return [...byPath.values()];
}

/** Policy versions of the selected events' tenants (and the server default) in force during them. */
function policiesInForce(db: Db, events: Parsed[]): unknown {
  if (events.length === 0) return { versions: [] };
  const tenants = [...new Set(events.map((e) => e.tenant))];
  const from = Date.parse(events[0]!.ts);
  const to = Date.parse(events[events.length - 1]!.ts);
  const versions: unknown[] = [];
  for (const tenant of [...tenants, '*']) {
    const rows = db.prepare('SELECT tenant, version, document, created_at, created_by FROM policies WHERE tenant = ? ORDER BY version')
      .all(tenant) as Array<{ tenant: string; version: number; document: string; created_at: number; created_by: string | null }>;
    // The version in force at the start, and every one made before the end.
    const before = rows.filter((r) => r.created_at <= from).pop();
    for (const r of rows) {
      if (r === before || (r.created_at > from && r.created_at <= to)) {
        versions.push({ tenant: r.tenant, version: r.version, createdAt: new Date(r.created_at).toISOString(), createdBy: r.created_by, document: JSON.parse(r.document) });
      }
    }
  }
  return { tenants, from: events[0]!.ts, to: events[events.length - 1]!.ts, versions };
}

export interface BundleVerifyResult extends VerifyResult {
  selectedEvents: number;
  redactedEvents: number;
  selection?: ExportSelection;
}

/** Checks a bundle tar.gz offline; `publicKeyPem` overrides the key shipped in it. */
export function verifyBundle(gz: Buffer, publicKeyPem?: string): BundleVerifyResult {
  const files = readBundleTar(gz);
  return verifyBundleFiles(files, publicKeyPem ?? null);
}

function verifyBundleFiles(files: Map<string, string | Buffer>, keyOverride: string | null): BundleVerifyResult {
  const need = (name: string): string => {
    const v = files.get(name);
    if (v === undefined) throw new Error(`bundle lacks ${name}`);
    return v.toString();
  };
  /** Output hashes named by verified exec.exited events, with the event's seq. */
  const outputRefs = new Map<string, number>();
  const manifest = JSON.parse(need('manifest.json')) as BundleManifest;
  if (manifest.format !== BUNDLE_FORMAT) throw new Error(`unknown bundle format ${String(manifest.format)}`);
  const checkpoints = JSON.parse(need('checkpoints.json')) as CheckpointRow[];
  const key: KeyObject = parsePublicKey(keyOverride ?? need('public-key.pem'));
  const v = new ChainVerifier(checkpoints, key, manifest.startAfter);
  let selected = 0;
  let redacted = 0;
  for (const line of need('events.ndjson').split('\n')) {
    if (!line) continue;
    const e = JSON.parse(line) as Partial<Row> & { redacted?: boolean; data?: unknown };
    if (e.redacted) {
      redacted++;
      if (!v.redacted(Number(e.seq), String(e.prev), String(e.hash))) break;
    } else {
      selected++;
      // Hash over the canonical form of the data as read (the bundle's text need not be canonical).
      if (!v.row(Number(e.seq), String(e.ts), String(e.tenant), e.sandbox ?? null, String(e.type), JSON.stringify(e.data ?? null), String(e.prev), String(e.hash))) break;
      const d = e.data as Record<string, unknown> | undefined;
      if (e.type === 'exec.exited' && d) for (const sha of [d.stdoutSha256, d.stderrSha256]) if (typeof sha === 'string') outputRefs.set(sha, Number(e.seq));
    }
  }
  let result = v.finish();
  // Without a signature at its end, the bundle's last events could have been made up.
  const lastSigned = checkpoints.filter((c) => c.seq === result.headSeq).length > 0;
  if (result.ok && !lastSigned) {
    result = { ...result, ok: false, firstBroken: { seq: result.headSeq, reason: 'checkpoint-signature', detail: `no signed checkpoint covers the bundle's last event ${result.headSeq}` } };
  }
  if (result.ok && selected !== manifest.selectedEvents) {
    result = { ...result, ok: false, firstBroken: { seq: manifest.range.fromSeq, reason: 'seq-gap', detail: `the manifest lists ${manifest.selectedEvents} events, the bundle holds ${selected}` } };
  }
  // Output blobs: each must hash to its name, and a verified exec.exited event must name it.
  for (const [name, content] of files) {
    if (!result.ok || !name.startsWith('output-')) continue;
    const sha = name.slice('output-'.length);
    const seq = outputRefs.get(sha);
    const actual = createHash('sha256').update(content).digest('hex');
    if (seq === undefined || actual !== sha) {
      result = { ...result, ok: false, firstBroken: { seq: seq ?? result.headSeq, reason: 'output-mismatch', detail: `${name} ${seq === undefined ? 'is named by no exec.exited event' : 'does not hash to its name'}` } };
    }
  }
  return { ...result, selectedEvents: selected, redactedEvents: redacted, selection: manifest.selection };
}
