/**
 * Exec records (docs/records.md): rows + content-addressed output blobs, dedupe and the cap,
 * the per-tenant switch, blob access across tenants, the history timeline and process snapshots,
 * against real sandboxes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Caller } from '../src/engine-api.js';
import type { Engine } from '../src/engine.js';
import type { HistoryEntry } from '../src/records/history.js';
import { readBundleTar } from '../src/audit/bundle-tar.js';
import { verifyBundle } from '../src/audit/evidence-bundle.js';
import { INLINE_MAX_BYTES } from '../src/records/blob-store.js';
import { closeAndClean, openTestEngine } from './support.js';

const ADMIN: Caller = { tenant: null };
const t: Caller = { tenant: 'rec' };
const quiet: Caller = { tenant: 'recquiet' };
const other: Caller = { tenant: 'recother' };

let engine: Engine;
let dataDir: string;
const ids: string[] = [];
let id: string;

const execs = (h: HistoryEntry[]) => h.filter((e): e is Extract<HistoryEntry, { kind: 'exec' }> => e.kind === 'exec');
const blobFile = (sha: string) => join(dataDir, 'blobs', 'sha256', sha.slice(0, 2), sha.slice(2));
/** The stored bytes of an inline blob (a second connection, as another process would read it), or null. */
function inlineBlob(sha: string): Buffer | null {
  const db = new Database(join(dataDir, 'airlock.db'), { readonly: true });
  try {
    return (db.prepare('SELECT data FROM blobs_inline WHERE sha256 = ?').pluck().get(sha) as Buffer | undefined) ?? null;
  } finally {
    db.close();
  }
}
async function waitFor<T>(what: string, fn: () => T | undefined, ms = 10_000): Promise<T> {
  for (const until = Date.now() + ms; Date.now() < until; await new Promise((r) => setTimeout(r, 25))) {
    const v = fn();
    if (v !== undefined) return v;
  }
  throw new Error(`timed out waiting for ${what}`);
}

before(async () => {
  ({ engine, dataDir } = await openTestEngine('records'));
  for (const c of [t, quiet, other]) engine.createTenant(ADMIN, c.tenant!);
  engine.setPolicy(ADMIN, 'recquiet', { exec: { recordOutput: false } });
  const s = await engine.createSandbox(t, { template: 'tiny', timeoutSeconds: 120 });
  ids.push(s.id);
  id = s.id;
});

after(async () => {
  await closeAndClean(engine, dataDir, ids);
});

describe('exec records', () => {
  test('a record names its output blob; equal output is stored once', async () => {
    await engine.exec(t, id, { cmd: ['echo', 'hello'], env: { SECRET_TOKEN: 'do-not-record' }, cwd: '/tmp' });
    await engine.exec(t, id, { cmd: ['sh', '-c', 'echo hello; echo oops >&2; exit 3'] });
    const [a, b] = execs(engine.sandboxHistory(t, id)).map((e) => e.exec);
    assert.ok(a && b);
    assert.deepEqual(a.cmd, ['echo', 'hello']);
    assert.deepEqual(a.envNames, ['SECRET_TOKEN']);
    assert.equal(a.cwd, '/tmp');
    assert.equal(a.exitCode, 0);
    assert.equal(b.exitCode, 3);
    assert.equal(b.reason, 'exited');
    assert.ok(!JSON.stringify(engine.sandboxHistory(t, id)).includes('do-not-record'), 'env values are never recorded');
    assert.equal(a.stdout.sha256, b.stdout.sha256, 'same output, same blob');
    assert.deepEqual([a.stdout.bytes, a.stdout.stored, a.stdout.truncated], [6, 6, false]);
    assert.equal(engine.readBlob(t, a.stdout.sha256!).toString(), 'hello\n');
    assert.equal(engine.readBlob(t, b.stderr.sha256!).toString(), 'oops\n');
    // Small output is stored inline, in the database, with the record (and no file).
    assert.equal(inlineBlob(a.stdout.sha256!)?.toString(), 'hello\n');
    assert.equal(existsSync(blobFile(a.stdout.sha256!)), false);
    assert.equal(b.stderr.stored, 5);
    assert.equal(inlineBlob(b.stderr.sha256!)?.toString(), 'oops\n');
    const exited = engine.listEvents(ADMIN, { sandbox: id, type: 'exec.exited' });
    assert.equal(exited[0]!.data.stdoutSha256, a.stdout.sha256, 'the event names the blob');
    assert.equal(exited[0]!.data.stdout, undefined, 'the event does not carry the output');
  });

  test('output beyond the default cap (64 KiB) is cut and marked', async () => {
    await engine.exec(t, id, { cmd: ['sh', '-c', 'head -c 70000 /dev/zero | tr "\\0" a'] });
    const last = execs(engine.sandboxHistory(t, id)).at(-1)!.exec;
    assert.deepEqual([last.stdout.bytes, last.stdout.stored, last.stdout.truncated], [70000, 65536, true]);
    assert.equal(engine.readBlob(t, last.stdout.sha256!).toString(), 'a'.repeat(65536));
  });

  test('another tenant cannot read the blob; an unknown name is not found', () => {
    const sha = execs(engine.sandboxHistory(t, id))[0]!.exec.stdout.sha256!;
    assert.throws(() => engine.readBlob(other, sha), /not found/);
    assert.throws(() => engine.readBlob(t, '0'.repeat(64)), /not found/);
    assert.throws(() => engine.readBlob(t, '../../airlock.db'), /not found/);
    assert.throws(() => engine.sandboxHistory(other, id), /not found/);
    assert.equal(engine.readBlob(ADMIN, sha).toString(), 'hello\n');
  });

  test('recordOutput: false keeps sizes but no output', async () => {
    const s = await engine.createSandbox(quiet, { template: 'tiny', timeoutSeconds: 60 });
    ids.push(s.id);
    await engine.exec(quiet, s.id, { cmd: ['echo', 'private'] });
    const r = execs(engine.sandboxHistory(quiet, s.id))[0]!.exec;
    assert.deepEqual([r.stdout.bytes, r.stdout.sha256, r.stdout.stored], [8, null, 0]);
    await engine.killSandbox(quiet, s.id);
    const h = engine.sandboxHistory(quiet, s.id);
    assert.ok(h.some((e) => e.kind === 'event' && e.type.startsWith('sandbox.') && e.type !== 'sandbox.created'), 'the end is in the history');
  });

  test('evidence.fileChanges: false records no file.changes', async () => {
    engine.setPolicy(ADMIN, 'recquiet', { exec: { recordOutput: false }, evidence: { fileChanges: false } });
    try {
      const s = await engine.createSandbox(quiet, { template: 'tiny', timeoutSeconds: 60 });
      ids.push(s.id);
      await engine.exec(quiet, s.id, { cmd: ['/bin/sh', '-c', 'echo x > /work/f'] });
      await engine.killSandbox(quiet, s.id);
      assert.deepEqual(engine.listEvents(ADMIN, { sandbox: s.id, type: 'file.changes' }), []);
    } finally {
      engine.setPolicy(ADMIN, 'recquiet', { exec: { recordOutput: false } });
    }
  });

  // Both tiers whose writes land in the host overlay's upper dir (docs/records.md); gvisor runs
  // with --overlay2=none for this.
  for (const runtime of ['container', 'gvisor'] as const) test(`${runtime}: file changes at exec end (write, overwrite, delete) and at the end`, { skip: runtime === 'gvisor' && !existsSync('/usr/local/bin/runsc') && !process.env.AIRLOCK_RUNSC }, async () => {
    const s = await engine.createSandbox(t, { template: 'tiny', runtime, timeoutSeconds: 60 });
    ids.push(s.id);
    const changes = () => engine.listEvents(ADMIN, { sandbox: s.id, type: 'file.changes' });
    await engine.exec(t, s.id, { cmd: ['true'] });
    const baseline = changes().length;
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    await engine.exec(t, s.id, { cmd: ['sh', '-c', 'mkdir -p /work/d && printf one > /work/d/a.txt && ln -sf /etc/shadow /work/d/link'] });
    let last = changes().at(-1)!.data as { at: string; execId: string; written: Array<{ path: string; size: number; sha256?: string; type: string }>; deleted: string[] };
    assert.equal(changes().length, baseline + 1);
    assert.equal(last.at, 'exec');
    const a = last.written.find((w) => w.path.endsWith('/work/d/a.txt'));
    assert.deepEqual(a && [a.size, a.sha256], [3, sha('one')]);
    const link = last.written.find((w) => w.path.endsWith('/work/d/link'));
    assert.equal(link?.type, 'symlink');
    assert.equal(link?.sha256, undefined, 'a link is never followed');

    await engine.exec(t, s.id, { cmd: ['sh', '-c', 'printf twotwo > /work/d/a.txt; rm /bin/true 2>/dev/null || rm /bin/busybox.true 2>/dev/null; rm -f /etc/hostname'] });
    last = changes().at(-1)!.data as typeof last;
    assert.deepEqual(last.written.filter((w) => w.type === 'file').map((w) => [w.path.replace(/^.*\/work/, '/work'), w.size, w.sha256]), [['/work/d/a.txt', 6, sha('twotwo')]]);
    assert.ok(last.deleted.some((p) => p.endsWith('/etc/hostname')), JSON.stringify(last.deleted));

    await engine.exec(t, s.id, { cmd: ['echo', 'no changes'] });
    assert.equal(changes().at(-1)!.data.execId, last.execId, 'an exec that changes nothing reports nothing');

    await engine.exec(t, s.id, { cmd: ['sh', '-c', 'rm /work/d/a.txt; printf x > /work/late.txt'] });
    last = changes().at(-1)!.data as typeof last;
    assert.ok(last.deleted.some((p) => p.endsWith('/work/d/a.txt')), 'a file written here, then deleted');
    await engine.exec(t, s.id, { cmd: ['sh', '-c', 'printf y > /work/at-end.txt'] });
    await engine.exec(t, s.id, { cmd: ['sh', '-c', 'printf yy > /work/at-end.txt & wait'] });
    await engine.execBackground(t, s.id, { cmd: ['sh', '-c', 'printf zzz > /work/bg.txt'] });
    await new Promise((r) => setTimeout(r, 200));
    await engine.killSandbox(t, s.id);
    const end = changes().at(-1)!.data as typeof last;
    assert.equal(end.at, 'end');
    assert.deepEqual(end.written.filter((w) => w.type === 'file').map((w) => [w.path.replace(/^.*\/work/, '/work'), w.size]), [['/work/bg.txt', 3]]);
  });

  test('gvisor: a syscall trace is kept as evidence when the policy asks', { skip: !existsSync('/usr/local/bin/runsc') && !process.env.AIRLOCK_RUNSC }, async () => {
    engine.createTenant(ADMIN, 'rectrace');
    engine.setPolicy(ADMIN, 'rectrace', { evidence: { syscallTrace: true } });
    const tr: Caller = { tenant: 'rectrace' };
    const s = await engine.createSandbox(tr, { template: 'tiny', runtime: 'gvisor', timeoutSeconds: 60 });
    ids.push(s.id);
    await engine.exec(tr, s.id, { cmd: ['cat', '/etc/hostname'] });
    assert.equal((await engine.exec(tr, s.id, { cmd: ['ls', '/'] })).stdout.includes('airlock-strace'), false, 'the trace is outside the sandbox\'s view');
    await engine.killSandbox(tr, s.id);
    const ev = engine.listEvents(ADMIN, { sandbox: s.id, type: 'evidence.strace' });
    assert.equal(ev.length, 1);
    const trace = engine.readBlob(tr, ev[0]!.data.sha256 as string).toString();
    assert.match(trace, /openat\(.*\/etc\/hostname/);
    assert.throws(() => engine.readBlob(other, ev[0]!.data.sha256 as string), /not found/);
    // Untraced by default: the tenant rec's gvisor sandboxes leave none.
  });

  test('process snapshots are stored; the timeline is in order', async () => {
    const bg = await engine.execBackground(t, id, { cmd: ['sleep', '30'] });
    const snap = await engine.snapshotProcesses(t, id);
    assert.ok(snap.processes.some((p) => p.pid === bg.pid && p.cmdline[0] === 'sleep'), JSON.stringify(snap.processes));
    await engine.killProcess(t, id, bg.pid, 9);
    await waitFor('the background record', () => execs(engine.sandboxHistory(t, id)).find((e) => e.exec.execId === bg.execId));
    const h = engine.sandboxHistory(t, id);
    const kinds = h.map((e) => (e.kind === 'exec' ? `exec:${e.exec.cmd[0]}` : e.type));
    assert.equal(kinds[0], 'sandbox.created');
    const at = (k: string) => kinds.indexOf(k);
    assert.ok(at('exec:echo') < at('exec:sh') && at('exec:sh') < at('process.snapshot'), kinds.join(' '));
    assert.ok(!kinds.includes('exec.started') && !kinds.includes('exec.exited'), 'every exec here has its record');
    const sleep = execs(h).find((e) => e.exec.execId === bg.execId)!.exec;
    assert.deepEqual([sleep.background, sleep.exitCode, sleep.reason], [true, 137, 'signaled']);
    const ts = h.map((e) => e.ts);
    assert.deepEqual(ts, [...ts].sort(), 'oldest first');
    const snapEv = engine.listEvents(ADMIN, { sandbox: id, type: 'process.snapshot' });
    assert.equal(snapEv.length, 1);
    assert.ok(existsSync(join(dataDir, 'blobs')));
  });

  test(`output up to ${INLINE_MAX_BYTES} bytes is inline, larger is a file; both read back byte-exact`, async () => {
    const lines = (n: number) => Array.from({ length: n }, (_, i) => `${String(i).padStart(9, '0')}\n`).join('');
    const big = lines(2000); // 20 000 bytes
    const r = await engine.exec(t, id, { cmd: ['sh', '-c', 'i=0; while [ $i -lt 2000 ]; do printf "%09d\\n" $i; i=$((i+1)); done; head -c 16384 /dev/zero | tr "\\0" b >&2'] });
    assert.equal(r.stdout, big);
    const rec = execs(engine.sandboxHistory(t, id)).at(-1)!.exec;
    assert.deepEqual([rec.stdout.stored, rec.stderr.stored], [20_000, INLINE_MAX_BYTES]);
    assert.ok(engine.readBlob(t, rec.stdout.sha256!).equals(Buffer.from(big)));
    assert.ok(engine.readBlob(t, rec.stderr.sha256!).equals(Buffer.alloc(INLINE_MAX_BYTES, 'b')));
    assert.equal(inlineBlob(rec.stdout.sha256!), null, 'big output is not inline');
    assert.ok(existsSync(blobFile(rec.stdout.sha256!)), 'big output is a file');
    assert.ok(inlineBlob(rec.stderr.sha256!)?.equals(Buffer.alloc(INLINE_MAX_BYTES, 'b')), 'exactly the limit is inline');
    assert.equal(existsSync(blobFile(rec.stderr.sha256!)), false);
    // The evidence export carries both, and its own check accepts them.
    const bundle = engine.exportAudit(ADMIN, { sandbox: id });
    const files = readBundleTar(bundle);
    assert.ok(files.get(`output-${rec.stdout.sha256}`)?.equals(Buffer.from(big)));
    assert.ok(files.get(`output-${rec.stderr.sha256}`)?.equals(Buffer.alloc(INLINE_MAX_BYTES, 'b')));
    assert.equal(verifyBundle(bundle).ok, true);
  });

  test('a data dir from before inline blobs (output only as files) still reads', async () => {
    await engine.exec(t, id, { cmd: ['echo', 'from an old data dir'] });
    const rec = execs(engine.sandboxHistory(t, id)).at(-1)!.exec;
    const sha = rec.stdout.sha256!;
    // Rewrite the store as an old Airlock left it: the blob as a file, no inline row.
    mkdirSync(join(dataDir, 'blobs', 'sha256', sha.slice(0, 2)), { recursive: true });
    writeFileSync(blobFile(sha), 'from an old data dir\n');
    const db = new Database(join(dataDir, 'airlock.db'));
    try {
      db.pragma('busy_timeout = 5000');
      assert.equal(db.prepare('DELETE FROM blobs_inline WHERE sha256 = ?').run(sha).changes, 1);
    } finally {
      db.close();
    }
    assert.equal(inlineBlob(sha), null);
    assert.equal(engine.readBlob(t, sha).toString(), 'from an old data dir\n');
    assert.equal(readBundleTar(engine.exportAudit(ADMIN, { sandbox: id })).get(`output-${sha}`)?.toString(), 'from an old data dir\n');
  });

  test('exec.exited and file.changes commit together, in that order, both naming the exec', async () => {
    const s = await engine.createSandbox(t, { template: 'tiny', runtime: 'container', timeoutSeconds: 60 });
    ids.push(s.id);
    try {
      await engine.exec(t, s.id, { cmd: ['true'] });
      await engine.exec(t, s.id, { cmd: ['sh', '-c', 'echo one > /work/together'] });
      const evs = engine.listEvents(ADMIN, { sandbox: s.id });
      const changes = evs.filter((e) => e.type === 'file.changes').at(-1)!;
      const exited = evs.find((e) => e.type === 'exec.exited' && e.data.execId === changes.data.execId)!;
      assert.equal(changes.seq, exited.seq + 1);
      assert.equal(changes.data.at, 'exec');
    } finally {
      await engine.killSandbox(t, s.id);
    }
  });

  test('a background exec gets a record when it ends (no output: not captured), with one exec.exited', async () => {
    const bg = await engine.execBackground(t, id, { cmd: ['sh', '-c', 'echo unseen; exit 7'], env: { BG_NAME: 'v' } });
    const rec = await waitFor('the record', () => execs(engine.sandboxHistory(t, id)).find((e) => e.exec.execId === bg.execId)?.exec);
    assert.deepEqual([rec.background, rec.pty, rec.exitCode, rec.reason], [true, false, 7, 'exited']);
    assert.deepEqual(rec.envNames, ['BG_NAME']);
    assert.deepEqual(rec.stdout, { bytes: 0, sha256: null, stored: 0, truncated: false });
    const exited = engine.listEvents(ADMIN, { sandbox: id, type: 'exec.exited' }).filter((e) => e.data.execId === bg.execId);
    assert.equal(exited.length, 1);
    assert.deepEqual([exited[0]!.data.background, exited[0]!.data.exitCode], [true, 7]);
    assert.ok(Date.parse(rec.endedAt) >= Date.parse(rec.startedAt));
  });

  test('a terminal session gets a record with its output (up to the cap), with one exec.exited', async () => {
    const s = await engine.openPty(t, id, { cmd: ['/bin/sh', '-c', 'echo pty-said-this; exit 2'] });
    const exit = await s.exited;
    assert.equal(exit.exitCode, 2);
    const rec = execs(engine.sandboxHistory(t, id)).find((e) => e.exec.execId === s.execId)!.exec;
    assert.deepEqual([rec.pty, rec.background, rec.exitCode, rec.reason], [true, false, 2, 'exited']);
    assert.deepEqual(rec.cmd, ['/bin/sh', '-c', 'echo pty-said-this; exit 2']);
    assert.match(engine.readBlob(t, rec.stdout.sha256!).toString(), /pty-said-this\r\n/);
    assert.equal(rec.stdout.stored, rec.stdout.bytes);
    assert.equal(rec.stderr.sha256, null);
    const exited = engine.listEvents(ADMIN, { sandbox: id, type: 'exec.exited' }).filter((e) => e.data.execId === s.execId);
    assert.equal(exited.length, 1);
    assert.deepEqual([exited[0]!.data.pty, exited[0]!.data.outputBytes, exited[0]!.data.stdoutSha256], [true, rec.stdout.bytes, rec.stdout.sha256]);
  });
});
