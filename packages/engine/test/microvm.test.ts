/**
 * The microvm tier: a QEMU microvm with Debian's cloud kernel, the agent over virtio-serial, the
 * template as a read-only disk and the quota'd layer as a second one, the sandbox's netns spliced
 * onto a TAP. Real QEMU (TCG on these machines: KVM cannot run guests here), real cgroups, real
 * nftables. Few tests, each doing much: a TCG boot costs seconds.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { decodeLayerEntries, LWALK_MAX_ENTRIES, ProtocolError } from '../src/agent/protocol.js';
import { SANDBOX_ID_BASE } from '../src/constants.js';
import { Engine } from '../src/engine.js';
import { cgroupDir, cgroupMode } from '../src/runtime/cgroups.js';
import { kernelDir } from '../src/runtime/microvm/assets.js';
import type { SandboxInfo } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, sandboxIdsIn, TEMPLATES_DIR, tempDataDir } from './support.js';

const admin = { tenant: null };
const START_TIMEOUT_MS = 60_000;
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

const guestRelease = (() => {
  try { return readFileSync(join(kernelDir(), 'release'), 'utf8').trim(); } catch { return null; }
})();
const skip = guestRelease === null ? 'no guest kernel installed (scripts/setup-host.sh)' : false;

before(async () => {
  if (skip) return;
  dataDir = tempDataDir('microvm');
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, startTimeoutMs: START_TIMEOUT_MS });
});

after(async () => {
  if (engine) await closeAndClean(engine, dataDir, [...new Set([...ids, ...sandboxIdsIn(dataDir)])]);
  if (dataDir) assert.deepEqual(vmLeftovers(dataDir, ids), [], 'microvm leftovers on the host');
});

async function microvm(extra: Record<string, unknown> = {}, on: Engine = engine): Promise<SandboxInfo> {
  const s = await on.createSandbox(admin, { runtime: 'microvm', template: 'tiny', timeoutSeconds: 300, ...extra });
  ids.push(s.id);
  return s;
}

async function sh(id: string, script: string, on: Engine = engine) {
  return on.exec(admin, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds: 60 });
}

/** QEMU processes, VM state and TAPs of these sandboxes still on the host. */
function vmLeftovers(dir: string, sandboxIds: string[]): string[] {
  const left: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let cmd = '';
    try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
    if (cmd.includes('qemu-system') && sandboxIds.some((id) => cmd.includes(join(dir, 'qemu', id)))) left.push(`qemu pid ${pid}`);
  }
  for (const id of sandboxIds) {
    if (existsSync(join(dir, 'qemu', id))) left.push(`dir qemu/${id}`);
    if (existsSync(`/run/netns/airlock-${id}`)) left.push(`netns airlock-${id}`);
  }
  return left;
}

/** The background counter's value (the file is rewritten in place: retry an empty read). */
async function counter(id: string): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const text = (await engine.readFile(admin, id, '/tmp/count')).toString().trim();
    if (text) return Number(text);
  }
  throw new Error('the counter file stays empty');
}

/** CPU time (ns) the sandbox's host cgroup (QEMU) used so far. */
function cgroupCpuNs(id: string): number {
  if (cgroupMode() === 'v2') {
    const stat = readFileSync(join(cgroupDir('cpu', `/airlock/${id}`), 'cpu.stat'), 'utf8');
    return Number(/usage_usec (\d+)/.exec(stat)?.[1]) * 1000;
  }
  return Number(readFileSync(join(cgroupDir('cpuacct', `/airlock/${id}`), 'cpuacct.usage'), 'utf8'));
}

describe('microvm tier', { skip }, () => {
  test('boots the guest kernel; exec, files, disk quota, pause/resume; kill leaves nothing', async () => {
    const s = await microvm({ env: { GREETING: 'hi' }, resources: { diskMiB: 64, memoryMiB: 256, cpus: 1, pids: 64 } });
    assert.equal(s.runtime, 'microvm');

    // The guest's own kernel, not the host's.
    const k = await sh(s.id, 'uname -r; echo "$(tr "\\0" " " < /proc/1/cmdline)"; id -u; hostname');
    assert.equal(k.exitCode, 0, k.stderr);
    const [kernel, init, uid, host] = k.stdout.split('\n');
    assert.equal(kernel, guestRelease);
    assert.notEqual(kernel, release());
    assert.match(init!, /^airlock-agent --port-fd 3/);
    assert.equal(uid, '0');
    assert.equal(host, `airlock-${s.id.slice(0, 8)}`);

    // The token is not on the kernel command line nor left in the initramfs.
    const t = await sh(s.id, 'cat /proc/cmdline; ls /airlock 2>&1; cat /proc/1/environ 2>&1 | head -c 100');
    assert.doesNotMatch(t.stdout, /AIRLOCK_AGENT_TOKEN|token/i);

    // Resources: guest RAM and vCPUs from the spec; the spec's pids bound the guest's processes.
    const res = await sh(s.id, 'grep MemTotal /proc/meminfo; nproc');
    const memKiB = Number(/MemTotal:\s+(\d+)/.exec(res.stdout)?.[1]);
    assert.ok(memKiB > 128 * 1024 && memKiB <= 256 * 1024, `guest RAM ${memKiB} kB for memoryMiB 256`);
    assert.equal(res.stdout.split('\n')[1], '1');
    const flood = await sh(s.id, 'for i in $(seq 80); do sleep 2 & done; echo all started');
    assert.match(flood.stderr, /can't fork|Resource temporarily unavailable/, 'a bounded process flood hits the pids limit');
    assert.doesNotMatch(flood.stdout, /all started/);
    await new Promise((res) => setTimeout(res, 2500));

    // exec: stdin, env, cwd, exit code.
    const r = await engine.exec(admin, s.id, {
      cmd: ['/bin/sh', '-c', 'echo $GREETING $EXTRA; pwd; cat; exit 7'], env: { EXTRA: 'there' }, cwd: '/tmp', stdin: 'from stdin',
    });
    assert.equal(r.exitCode, 7);
    assert.equal(r.stdout, 'hi there\n/tmp\nfrom stdin');

    // Files through the agent, in both directions; template files read as owned by root inside.
    await engine.writeFile(admin, s.id, '/work/a.txt', Buffer.from('written from the host\n'));
    const cat = await sh(s.id, 'cat /work/a.txt; echo made inside > /work/b.txt; stat -c "%u %g" /bin/busybox');
    assert.equal(cat.stdout, 'written from the host\n0 0\n');
    assert.equal((await engine.readFile(admin, s.id, '/work/b.txt')).toString(), 'made inside\n');

    // The writable layer is exactly the disk quota: writing past it fails with ENOSPC inside.
    const d = await sh(s.id, 'dd if=/dev/zero of=/work/big bs=1M count=100 2>&1; echo "rc=$?"; rm -f /work/big; echo ok > /work/after; cat /work/after');
    assert.match(d.stdout, /No space left on device/);
    assert.match(d.stdout, /rc=1/);
    assert.match(d.stdout, /ok\n$/, 'space is usable again after the file is removed');

    // Pause stops the guest (QEMU stop): no CPU on the host, a counter does not advance.
    await engine.execBackground(admin, s.id, { cmd: ['/bin/sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; done'] });
    await new Promise((res) => setTimeout(res, 1000));
    await engine.pauseSandbox(admin, s.id);
    assert.equal(engine.getSandbox(admin, s.id).state, 'paused');
    const cpu0 = cgroupCpuNs(s.id);
    await new Promise((res) => setTimeout(res, 1500));
    const pausedCpuMs = (cgroupCpuNs(s.id) - cpu0) / 1e6;
    assert.ok(pausedCpuMs < 150, `QEMU used ${pausedCpuMs} ms of CPU while paused`);
    await engine.resumeSandbox(admin, s.id);
    const c1 = await counter(s.id);
    await new Promise((res) => setTimeout(res, 1000));
    const c2 = await counter(s.id);
    assert.ok(c2 > c1, `the counter runs again after resume (${c1} → ${c2})`);

    await engine.killSandbox(admin, s.id);
    assert.deepEqual(vmLeftovers(dataDir, [s.id]), []);
    for (const ctl of ['memory', 'pids', 'cpu', 'cpuacct']) assert.equal(existsSync(join('/sys/fs/cgroup', ctl, 'airlock', s.id)), false, ctl);
  });

  test('an engine restart adopts the running VM: QEMU redials the new engine, the agent says HELLO again', async () => {
    const s = await microvm();
    await engine.writeFile(admin, s.id, '/work/keep', Buffer.from('still here'));
    await engine.close();
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, startTimeoutMs: START_TIMEOUT_MS });
    assert.equal(engine.getSandbox(admin, s.id).state, 'running');
    // QEMU's chardev reconnects every second; give it a few.
    let out = '';
    for (let i = 0; i < 40 && out !== 'still here'; i++) {
      try { out = (await engine.readFile(admin, s.id, '/work/keep')).toString(); } catch { await new Promise((res) => setTimeout(res, 250)); }
    }
    assert.equal(out, 'still here');
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(vmLeftovers(dataDir, [s.id]), []);
  });

  test('host mounts through virtiofs: read-only enforced in the guest and on the host, writes land as the sandbox\'s ids', async (t) => {
    const host = mkdtempSync(join(tmpdir(), 'airlock-test-microvm-mounts-'));
    t.after(() => rmSync(host, { recursive: true, force: true }));
    chmodSync(host, 0o755);
    mkdirSync(join(host, 'ro'));
    writeFileSync(join(host, 'ro', 'hello.txt'), 'hello from the host\n');
    mkdirSync(join(host, 'rw'));
    chownSync(join(host, 'rw'), SANDBOX_ID_BASE, SANDBOX_ID_BASE);
    const s = await microvm({ mounts: [
      { source: join(host, 'ro'), target: '/mnt/ro', readOnly: true },
      { source: join(host, 'rw'), target: '/mnt/rw', readOnly: false },
    ] });
    const r = await sh(s.id, 'cat /mnt/ro/hello.txt; echo x > /mnt/ro/nope; echo made > /mnt/rw/made.txt; cat /mnt/rw/made.txt');
    assert.equal(r.stdout, 'hello from the host\nmade\n');
    assert.match(r.stderr, /Read-only file system/);
    assert.equal(existsSync(join(host, 'ro', 'nope')), false);
    // What the guest's root wrote belongs to the sandbox's unprivileged host ids, never to host root.
    assert.equal(statSync(join(host, 'rw', 'made.txt')).uid, SANDBOX_ID_BASE);
    // The read-only share is read-only for its virtiofsd too (a guest kernel exploit gains nothing).
    const fsds = readFileSync(join(cgroupDir('pids', `/airlock/${s.id}`), 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)
      .filter((pid) => { try { return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'virtiofsd'; } catch { return false; } });
    assert.ok(fsds.length >= 2, 'one virtiofsd per share, in the sandbox\'s cgroup');
    const roots = fsds.map((pid) => readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === '/') ?? '');
    assert.ok(roots.some((l) => / ro[ ,]/.test(l)), `a virtiofsd serves its share from a read-only mount: ${roots.join(' | ')}`);
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(vmLeftovers(dataDir, [s.id]), []);
  });

  test('file changes come from the guest\'s agent: write, overwrite, delete, a link not followed, and at the end', async () => {
    const s = await microvm();
    const changes = () => engine.listEvents(admin, { sandbox: s.id, type: 'file.changes' });
    type Changes = { at: string; execId: string; source?: string; complete: boolean; written: Array<{ path: string; size: number; sha256?: string; type: string }>; deleted: string[] };
    const lastChanges = () => changes().at(-1)!.data as Changes;
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    // Every descriptor a sandbox process starts with (fd 3 here is the glob's own listing).
    const fds = await sh(s.id, 'for f in /proc/$$/fd/*; do echo "${f##*/} $(readlink $f)"; done');
    for (const line of fds.stdout.split('\n').filter(Boolean)) {
      assert.match(line, /^(\d+ (pipe:|\/dev\/null)|3 \/proc\/\d+\/fd$)/, `the agent's layer descriptor is not inherited: ${fds.stdout}`);
    }
    assert.equal(changes().length, 0, 'what the guest\'s init made at boot is the baseline, not a change');

    await sh(s.id, 'mkdir -p /work/d && printf one > /work/d/a.txt && ln -sf /etc/shadow /work/d/link');
    let last = lastChanges();
    assert.deepEqual([last.at, last.source, last.complete], ['exec', 'guest', true]);
    const a = last.written.find((w) => w.path === '/work/d/a.txt');
    assert.deepEqual(a && [a.type, a.size, a.sha256], ['file', 3, sha('one')]);
    const link = last.written.find((w) => w.path === '/work/d/link');
    assert.equal(link?.type, 'symlink');
    assert.equal(link?.sha256, undefined, 'a link is never followed');

    const del = await sh(s.id, 'printf twotwo > /work/d/a.txt; for f in /etc/passwd /etc/group /bin/true; do [ -e $f ] && rm $f && echo $f && break; done');
    const template = del.stdout.trim();
    assert.ok(template, `a template file was deleted: ${del.stderr}`);
    last = lastChanges();
    assert.deepEqual(last.written.filter((w) => w.type === 'file').map((w) => [w.path, w.size, w.sha256]), [['/work/d/a.txt', 6, sha('twotwo')]]);
    assert.ok(last.deleted.includes(template), JSON.stringify(last.deleted));

    const quiet = changes().length;
    await sh(s.id, 'echo no changes');
    assert.equal(changes().length, quiet, 'an exec that changes nothing reports nothing');

    await sh(s.id, 'rm /work/d/a.txt');
    assert.ok(lastChanges().deleted.includes('/work/d/a.txt'), 'a file written here, then deleted');
    await engine.execBackground(admin, s.id, { cmd: ['/bin/sh', '-c', 'printf zzz > /work/bg.txt'] });
    await new Promise((res) => setTimeout(res, 500));
    await engine.killSandbox(admin, s.id);
    const end = lastChanges();
    assert.deepEqual([end.at, end.source], ['end', 'guest']);
    assert.deepEqual(end.written.filter((w) => w.type === 'file').map((w) => [w.path, w.size, w.sha256]), [['/work/bg.txt', 3, sha('zzz')]]);
    assert.deepEqual(vmLeftovers(dataDir, [s.id]), []);
  });

  test('a guest too small to boot is refused (400), not started', async () => {
    await assert.rejects(microvm({ resources: { memoryMiB: 64 } }),
      (e: Error & { status?: number }) => e.status === 400 && /memoryMiB >= 96/.test(e.message));
  });
});

describe('microvm network', { skip }, () => {
  let net: TestInternet;
  let netEngine: Engine;
  let netDir: string;
  const netIds: string[] = [];

  before(async () => {
    if (skip) return;
    net = await startTestInternet();
    netDir = tempDataDir('microvm-net');
    netEngine = await Engine.open({ dataDir: netDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream, startTimeoutMs: START_TIMEOUT_MS });
  });

  after(async () => {
    try {
      if (netEngine) await closeAndClean(netEngine, netDir, [...new Set([...netIds, ...sandboxIdsIn(netDir)])]);
      if (netDir) assert.deepEqual(vmLeftovers(netDir, netIds), []);
    } finally {
      await net?.close();
    }
  });

  test('the host\'s egress policy applies unchanged: an allowed name answers, others do not', async () => {
    const s = await netEngine.createSandbox(admin, { runtime: 'microvm', template: 'base', timeoutSeconds: 300, network: { allow: ['a.test'] } });
    netIds.push(s.id);
    const curl = (args: string) => `curl -sS --max-time 5 ${args} || echo "FAIL $?"`;
    const r = await sh(s.id, `${curl('http://a.test/')}; echo; ${curl('http://b.test/')}; echo; ${curl('http://203.0.113.11/')}`, netEngine);
    const [allowed, deniedName, deniedIp] = r.stdout.split('\n').filter((l) => l && !l.startsWith('curl:'));
    assert.doesNotMatch(allowed!, /FAIL/, r.stdout + r.stderr);
    assert.match(deniedName!, /FAIL/);
    assert.match(deniedIp!, /FAIL/);
    assert.deepEqual(await net.canaryHits(), []);
    await netEngine.killSandbox(admin, s.id);
    assert.deepEqual(vmLeftovers(netDir, [s.id]), []);
  });
});

describe('LWALK_RESULT from a hostile guest', () => {
  const entry = (type: string, path: string | Buffer, size = 0n) => {
    const p = Buffer.isBuffer(path) ? path : Buffer.from(path);
    const b = Buffer.alloc(33 + p.length + 1);
    b.write(type, 0, 'latin1');
    b.writeBigUInt64BE(size, 1);
    b.writeBigInt64BE(5n, 9);
    b.writeBigInt64BE(6n, 17);
    b.writeBigUInt64BE(7n, 25);
    p.copy(b, 33);
    return b;
  };
  test('well-formed entries decode; unsafe paths, unknown types, sizes and truncation are protocol errors', () => {
    const ok = decodeLayerEntries(Buffer.concat([entry('f', 'work/a', 3n), entry('w', 'etc/passwd'), entry('l', 'x/y', 11n)]));
    assert.deepEqual(ok.map((e) => [e.type, e.path, e.size]), [['file', 'work/a', 3], ['whiteout', 'etc/passwd', 0], ['symlink', 'x/y', 11]]);
    assert.equal(ok[0]!.ino, 7n);
    for (const bad of [
      entry('f', '../etc/shadow'), entry('f', '/etc/shadow'), entry('f', 'a//b'), entry('f', 'a/./b'), entry('f', ''),
      entry('f', 'x'.repeat(4096)), entry('z', 'a'), entry('d', 'a', 5n), entry('f', 'a', 1n << 60n),
      entry('f', 'a').subarray(0, 30), entry('f', 'abc').subarray(0, 36), Buffer.alloc(0), Buffer.alloc(20),
    ]) assert.throws(() => decodeLayerEntries(bad), ProtocolError, bad.toString('latin1').slice(33, 60));
    assert.equal(LWALK_MAX_ENTRIES, 20_000);
  });
});
