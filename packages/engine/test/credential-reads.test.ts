/**
 * Credential reads inside container sandboxes (docs/records.md#detectors): opens of
 * credential-like files by the sandbox's own processes are seen from the host (fanotify, through
 * agent/airlock-fawatch) and become `file.read` events with `via: 'sandbox'` and one
 * `alert.credential_read` each; ordinary files raise nothing, floods stay bounded, a tenant
 * that disables the detector is not watched, the helper dying does not take the engine with
 * it, and nothing is left behind. Real runc sandboxes on the real kernel.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { Caller } from '../src/engine-api.js';
import { Engine } from '../src/engine.js';
import type { AuditEvent, ExecResult } from '../src/types.js';
import { closeAndClean, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const ADMIN: Caller = { tenant: null };
const t: Caller = { tenant: 'cred' };
const off: Caller = { tenant: 'credoff' };

let engine: Engine;
let dataDir: string;
const ids: string[] = [];

const sandboxReads = (id: string): AuditEvent[] =>
  engine.listEvents(ADMIN, { sandbox: id, type: 'file.read', limit: 10_000 }).filter((e) => e.data.via === 'sandbox');
const alerts = (id: string): AuditEvent[] => engine.listEvents(ADMIN, { sandbox: id, type: 'alert.credential_read', limit: 10_000 });
const gaps = (id: string): AuditEvent[] => engine.listEvents(ADMIN, { sandbox: id, type: 'telemetry.gap', limit: 10_000 });

async function sh(caller: Caller, id: string, script: string, timeoutSeconds = 60): Promise<ExecResult> {
  const r = await engine.exec(caller, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds });
  assert.equal(r.exitCode, 0, `${script}: ${r.stderr}`);
  return r;
}

async function waitFor(fn: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const settle = (ms = 400) => new Promise((r) => setTimeout(r, ms));

/** This process's airlock-fawatch children (each engine runs one). */
function helperPids(): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'airlock-fawatch' && ppid === process.pid) found.push(Number(name));
    } catch { /* exited meanwhile */ }
  }
  return found;
}

/** fanotify groups a process holds. */
function fanotifyFds(pid: number | 'self'): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === 'anon_inode:[fanotify]') n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

function onlyHelper(): number {
  const pids = helperPids();
  assert.equal(pids.length, 1, `one airlock-fawatch: ${pids.join(' ')}`);
  return pids[0]!;
}

before(async () => {
  dataDir = tempDataDir('credreads');
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  engine.createTenant(ADMIN, 'cred');
  engine.createTenant(ADMIN, 'credoff');
  engine.setPolicy(ADMIN, 'credoff', { detectors: { disabled: ['credential_read'] } });
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, ids);
    // The helper went with the engine; this process holds no fanotify group.
    assert.deepEqual(helperPids(), [], 'no airlock-fawatch left');
    assert.equal(fanotifyFds('self'), 0);
  } finally {
    if (dataDir) removeDataDir(dataDir);
  }
});

describe('credential reads inside the sandbox', () => {
  let id: string;
  before(async () => {
    const s = await engine.createSandbox(t, { template: 'base', timeoutSeconds: 300 });
    ids.push(s.id);
    id = s.id;
    // Written by the files API (the agent): those opens are its own, recorded as file.written.
    await engine.writeFile(t, id, '/root/.ssh/id_rsa', Buffer.from('-----BEGIN OPENSSH PRIVATE KEY-----'));
    await engine.writeFile(t, id, '/work/.env', Buffer.from('TOKEN=x'));
    await engine.writeFile(t, id, '/work/server.pem', Buffer.from('-----BEGIN CERTIFICATE-----'));
  });

  test('cat of a key, a .env and a .pem: one file.read via the sandbox and one alert each', async () => {
    await settle();
    assert.deepEqual(sandboxReads(id), [], 'the agent writing files is not a read by the sandbox');
    await sh(t, id, 'cat /root/.ssh/id_rsa >/dev/null');
    await sh(t, id, 'cd /work && cat .env >/dev/null && python3 -c "open(\'server.pem\').read()"');
    await waitFor(() => sandboxReads(id).length >= 3, 'three sandbox reads');
    await settle();
    const reads = sandboxReads(id);
    assert.deepEqual(reads.map((e) => e.data.path).sort(), ['/root/.ssh/id_rsa', '/work/.env', '/work/server.pem']);
    for (const e of reads) {
      assert.equal(typeof e.data.hostPid, 'number');
      // The opener may have exited before the helper looked; then pid and comm are null.
      if (e.data.pid !== null) assert.ok((e.data.pid as number) > 1, 'a sandbox pid, not the agent');
    }
    const py = reads.find((e) => e.data.path === '/work/server.pem')!;
    if (py.data.comm !== null) assert.equal(py.data.comm, 'python3');
    const a = alerts(id);
    assert.deepEqual(a.map((e) => e.data.path).sort(), ['/root/.ssh/id_rsa', '/work/.env', '/work/server.pem']);
    assert.ok(a.every((e) => e.data.via === 'sandbox'));
    assert.equal(a.find((e) => e.data.path === '/work/.env')!.data.eventSeq, reads.find((e) => e.data.path === '/work/.env')!.seq);
  });

  test('ordinary files raise nothing', async () => {
    const before = sandboxReads(id).length;
    await sh(t, id, 'cat /etc/hostname /etc/passwd /etc/os-release >/dev/null; ls -la /root /work >/dev/null; python3 -c "import json, os; open(\'/work/notes.txt\', \'w\').write(\'x\'); open(\'/work/notes.txt\').read()"; cat /work/environment 2>/dev/null; true');
    await settle();
    assert.equal(sandboxReads(id).length, before);
  });

  test('a flood of opens stays bounded', async () => {
    const readsBefore = sandboxReads(id).length;
    const alertsBefore = alerts(id).length;
    // 5000 opens of one key (a shell builtin: no fork per open), then 300 distinct .pem files.
    await sh(t, id, 'i=0; while [ $i -lt 5000 ]; do read x < /root/.ssh/id_rsa; i=$((i+1)); done');
    await settle();
    assert.ok(sandboxReads(id).length - readsBefore <= 1, 'one path is coalesced');
    await sh(t, id, 'i=0; while [ $i -lt 300 ]; do : > /tmp/k$i.pem; i=$((i+1)); done');
    await waitFor(() => gaps(id).some((g) => g.data.reason === 'rate-limit'), 'a rate-limit gap');
    await settle(1000);
    const added = sandboxReads(id).length - readsBefore;
    assert.ok(added >= 20 && added <= 60, `rate limited: ${added} events for 5300 opens`);
    const gap = gaps(id).find((g) => g.data.reason === 'rate-limit')!;
    assert.equal(gap.data.source, 'credential-reads');
    assert.ok((gap.data.dropped as number) > 0);
    assert.ok(alerts(id).length - alertsBefore <= 20, 'alerts are capped per sandbox');
  });

  test('a tenant that disables credential_read is not watched', async () => {
    const helper = onlyHelper();
    const groups = fanotifyFds(helper);
    const s = await engine.createSandbox(off, { template: 'tiny', timeoutSeconds: 120 });
    ids.push(s.id);
    assert.equal(fanotifyFds(helper), groups, 'no fanotify group for it');
    await sh(off, s.id, 'mkdir -p /root/.ssh && echo k > /root/.ssh/id_rsa && cat /root/.ssh/id_rsa >/dev/null && echo T=1 > /.env && cat /.env >/dev/null');
    await settle();
    assert.deepEqual(engine.listEvents(ADMIN, { sandbox: s.id, type: 'file.read' }), []);
    assert.deepEqual(engine.listEvents(ADMIN, { sandbox: s.id, type: 'alert.credential_read' }), []);
    await engine.killSandbox(off, s.id);
  });

  test('the helper killed mid-sandbox: the engine goes on, logs the gap and watches again', async () => {
    const helper = onlyHelper();
    process.kill(helper, 'SIGKILL');
    await waitFor(() => gaps(id).some((g) => g.data.reason === 'helper-exited'), 'a helper-exited gap');
    // The engine still serves the sandbox.
    assert.match((await sh(t, id, 'echo alive')).stdout, /alive/);
    // Restarted after its backoff, it watches the sandbox again.
    await waitFor(() => { const p = helperPids(); return p.length === 1 && p[0] !== helper && fanotifyFds(p[0]!) === 1; }, 'a new helper watching', 10_000);
    await sh(t, id, 'echo machine x > /root/.netrc && cat /root/.netrc >/dev/null');
    await waitFor(() => sandboxReads(id).some((e) => e.data.path === '/root/.netrc'), 'the read seen by the new helper');
  });

  test('gvisor: a credential file the sandbox opens is seen (its sentry opens it on the host; no process named)', { skip: !existsSync('/usr/local/bin/runsc') && !process.env.AIRLOCK_RUNSC }, async () => {
    const s = await engine.createSandbox(t, { template: 'tiny', runtime: 'gvisor', timeoutSeconds: 120 });
    ids.push(s.id);
    await sh(t, s.id, 'mkdir -p /root/.ssh && echo k > /root/.ssh/id_ed25519 && cat /root/.ssh/id_ed25519 >/dev/null; cat /etc/hostname >/dev/null');
    await waitFor(() => alerts(s.id).length >= 1, 'an alert for the gvisor sandbox');
    await settle();
    const reads = sandboxReads(s.id);
    assert.deepEqual([...new Set(reads.map((e) => e.data.path))], ['/root/.ssh/id_ed25519'], 'the path as the sandbox sees it, nothing else');
    assert.ok(reads.every((e) => e.data.pid === null && e.data.comm === null), 'the sentry names no process inside');
    await engine.killSandbox(t, s.id);
  });

  test('an engine that adopts a running sandbox watches it again', async () => {
    const s = await engine.createSandbox(t, { template: 'tiny', timeoutSeconds: 120 });
    ids.push(s.id);
    // A clean close leaves sandboxes running; the next engine on the data dir adopts them.
    await engine.close();
    assert.deepEqual(helperPids(), [], 'the helper ends with its engine');
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
    await sh(t, s.id, 'mkdir -p /home/u/.aws && echo k > /home/u/.aws/credentials && cat /home/u/.aws/credentials >/dev/null');
    await waitFor(() => sandboxReads(s.id).some((e) => e.data.path === '/home/u/.aws/credentials'), 'the adopted sandbox watched');
    await engine.killSandbox(t, s.id);
    assert.equal(fanotifyFds(onlyHelper()), 1, 'its watch ended with it');
  });
});
