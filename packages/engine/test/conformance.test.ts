/**
 * One behaviour on every tier: the same tests, run against each runtime this host has
 * (container always; gvisor when runsc is installed; microvm when QEMU and its guest kernel
 * are). "Same behaviour" is checked here, not hoped for: a tier-specific difference belongs in
 * that tier's own test file, never as a branch in an assertion below.
 * Every tier runs every test, microvm under TCG included (about 40 s for it here).
 *
 * AIRLOCK_CONFORMANCE_TIERS=container,gvisor limits the tiers.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import { cgroupDir, cgroupMode } from '../src/runtime/cgroups.js';
import type { ExecResult, RuntimeName, SandboxInfo } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, hostLeftovers, removeDataDir, sandboxIdsIn, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };
const ALL_TIERS: RuntimeName[] = ['container', 'gvisor', 'microvm'];

let net: TestInternet;
let engine: Engine;
let dataDir: string;
let available: RuntimeName[] = [];

before(async () => {
  net = await startTestInternet();
  dataDir = tempDataDir('conformance');
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
  available = engine.runtimes();
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, sandboxIdsIn(dataDir));
  } finally {
    if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
    await net?.close();
  }
});

/** CPU seconds the sandbox's cgroup has used (container and gvisor: its processes; microvm: QEMU). */
function cpuSeconds(id: string): number {
  if (cgroupMode() === 'v2') {
    const stat = readFileSync(`${cgroupDir('', `/airlock/${id}`)}/cpu.stat`, 'utf8');
    return Number(/usage_usec (\d+)/.exec(stat)![1]) / 1e6;
  }
  return Number(readFileSync(`${cgroupDir('cpuacct', `/airlock/${id}`)}/cpuacct.usage`, 'utf8')) / 1e9;
}

/** Nothing of this sandbox is left on the host (the suite's shared sandbox may still run). */
function assertSandboxGone(id: string): void {
  assert.deepEqual(hostLeftovers(dataDir, [id]).filter((l) => l.includes(id) || l.startsWith('lease')), []);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tierSuite(tier: RuntimeName): void {
  const requested = process.env['AIRLOCK_CONFORMANCE_TIERS']?.split(',').map((s) => s.trim());
  /** A test of this suite, skipped only when the tier is absent (or excluded by the environment). */
  const t = (area: string, name: string, fn: () => Promise<void>, timeout = 120_000): void => {
    test(`${area}: ${name}`, { timeout }, async (ctx) => {
      if (requested && !requested.includes(tier)) return ctx.skip(`AIRLOCK_CONFORMANCE_TIERS excludes ${tier}`);
      if (!available.includes(tier)) return ctx.skip(`${tier} is not available on this host`);
      await fn();
    });
  };

  describe(`conformance: ${tier}`, () => {
    let shared: SandboxInfo | undefined;
    const create = async (extra: Record<string, unknown> = {}): Promise<SandboxInfo> =>
      engine.createSandbox(admin, { runtime: tier, template: 'base', timeoutSeconds: 300, ...extra });
    /** One sandbox for the tests that do not change it, made on first use. */
    const box = async (): Promise<SandboxInfo> => (shared ??= await create({ env: { SPEC_VAR: 'from-spec' } }));
    const sh = async (id: string, script: string, extra: Record<string, unknown> = {}): Promise<ExecResult> =>
      engine.exec(admin, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds: 60, ...extra });

    after(async () => {
      if (shared) await engine.killSandbox(admin, shared.id).catch(() => {});
    });

    t('kernel', 'the tier is the one asked for, with its own kernel boundary', async () => {
      const s = await box();
      assert.equal(s.runtime, tier);
      const r = await sh(s.id, 'uname -r');
      assert.equal(r.exitCode, 0, r.stderr);
      if (tier === 'container') assert.equal(r.stdout.trim(), release());
      else assert.notEqual(r.stdout.trim(), release(), `${tier}: uname -r must not be the host kernel`);
    });

    t('exec', 'exit codes, signals, env, cwd, stdin', async () => {
      const s = await box();
      assert.equal((await sh(s.id, 'exit 0')).exitCode, 0);
      assert.equal((await sh(s.id, 'exit 7')).exitCode, 7);
      const killed = await sh(s.id, 'kill -9 $$');
      assert.equal(killed.exitCode, 137);
      const r = await sh(s.id, 'echo "$SPEC_VAR $REQ_VAR"; pwd; cat; echo err >&2', { env: { REQ_VAR: 'from-request' }, cwd: '/tmp', stdin: 'line from stdin\n' });
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.stdout, 'from-spec from-request\n/tmp\nline from stdin\n');
      assert.equal(r.stderr, 'err\n');
      assert.equal((await sh(s.id, 'pwd')).stdout, '/work\n', 'the default working directory is /work');
      const missing = await engine.exec(admin, s.id, { cmd: ['/no/such/program'] });
      assert.equal(missing.exitCode, 127);
      const big = await sh(s.id, 'head -c 3000000 /dev/zero | tr "\\0" x');
      assert.equal(big.stdout.length, 3_000_000, 'large output arrives whole');
    });

    t('exec', 'a per-exec timeout answers 124 and the sandbox stays usable', async () => {
      const s = await box();
      const r = await sh(s.id, 'sleep 30', { timeoutSeconds: 1 });
      assert.equal(r.exitCode, 124);
      assert.equal(r.reason, 'timeout');
      assert.equal((await sh(s.id, 'echo ok')).stdout, 'ok\n');
    });

    t('streaming', 'output streams while the command runs, stdout and stderr apart', async () => {
      const s = await box();
      const seen: Array<{ stream: string; at: number; data: string }> = [];
      const t0 = Date.now();
      const r = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'echo first; echo oops >&2; sleep 1; echo second'] }, {
        onStdout: (d) => seen.push({ stream: 'out', at: Date.now() - t0, data: d.toString() }),
        onStderr: (d) => seen.push({ stream: 'err', at: Date.now() - t0, data: d.toString() }),
      });
      assert.equal(r.exitCode, 0);
      const first = seen.find((e) => e.data.includes('first'));
      const second = seen.find((e) => e.data.includes('second'));
      assert.ok(first && second, JSON.stringify(seen));
      assert.ok(second.at - first.at >= 700, `"first" arrived ${second.at - first.at} ms before "second": not streamed`);
      assert.ok(seen.some((e) => e.stream === 'err' && e.data.includes('oops')));
    });

    t('pty', 'an interactive terminal: /dev/pts, size and resize, line discipline, ^C, exit code', async () => {
      const s = await box();
      const pty = await engine.openPty(admin, s.id, { cols: 100, rows: 30 });
      let text = '';
      pty.onData((b) => { text += b.toString('utf8'); });
      const waitFor = async (re: RegExp, from: number): Promise<void> => {
        for (const deadline = Date.now() + 20_000; !re.test(text.slice(from));) {
          if (Date.now() > deadline) throw new Error(`${tier}: no ${re} in ${JSON.stringify(text.slice(-1000))}`);
          await sleep(20);
        }
      };
      pty.write('tty; stty size\r');
      await waitFor(/\/dev\/pts\/\d+\r\n[^]*30 100\r\n/, 0);
      let mark = text.length;
      pty.resize(120, 40);
      pty.write('stty size\r');
      await waitFor(/40 120\r\n/, mark);
      mark = text.length;
      pty.write('sleep 100\r');
      await sleep(300);
      pty.write('\x03');
      pty.write('echo after=$?\r');
      await waitFor(/after=130\r\n/, mark);
      pty.write('exit 3\r');
      const exit = await pty.exited;
      assert.equal(exit.exitCode, 3);
      assert.equal(exit.reason, 'exited');
    });

    t('files', 'write, read, list, stat, rename, delete; bytes arrive intact; links stay inside', async () => {
      const s = await box();
      const bytes = randomBytes(300_000);
      await engine.makeDir(admin, s.id, '/work/conf/sub', { parents: true });
      await engine.writeFile(admin, s.id, '/work/conf/sub/data.bin', bytes);
      assert.deepEqual(await engine.readFile(admin, s.id, '/work/conf/sub/data.bin'), bytes);
      const sum = await sh(s.id, 'sha256sum /work/conf/sub/data.bin | cut -d" " -f1');
      assert.equal(sum.stdout.trim(), (await import('node:crypto')).createHash('sha256').update(bytes).digest('hex'));
      const st = await engine.statPath(admin, s.id, '/work/conf/sub/data.bin');
      assert.equal(st.size, bytes.length);
      await engine.renamePath(admin, s.id, '/work/conf/sub/data.bin', '/work/conf/moved.bin');
      const names = (await engine.listDir(admin, s.id, '/work/conf')).map((e) => e.name).sort();
      assert.deepEqual(names, ['moved.bin', 'sub']);
      await engine.deletePath(admin, s.id, '/work/conf', { recursive: true });
      await assert.rejects(engine.statPath(admin, s.id, '/work/conf'), (e: AirlockError) => e.status === 404);
      // Paths resolve inside the sandbox's own root (RESOLVE_IN_ROOT): `..` and links in the middle
      // of a path stay inside it, and a link as the last component is never followed.
      await sh(s.id, 'ln -sf /../../../../../etc/passwd /tmp/escape && ln -sfn /../../tmp /work/dirlink');
      await assert.rejects(engine.readFile(admin, s.id, '/tmp/escape'), (e: AirlockError) => e.status === 400 && /symbolic link/.test(e.message));
      await engine.writeFile(admin, s.id, '/work/dirlink/planted', Buffer.from('in-root'));
      assert.equal((await sh(s.id, 'cat /tmp/planted')).stdout, 'in-root', 'the link resolved inside the sandbox');
      const hostname = (await sh(s.id, 'cat /etc/hostname')).stdout;
      assert.equal((await engine.readFile(admin, s.id, '/work/../../../../etc/hostname')).toString(), hostname);
    });

    t('limits', 'memory: a hog is OOM-killed (137, reason oom) and the sandbox survives', async () => {
      const s = await create({ resources: { memoryMiB: 96 } });
      try {
        const r = await engine.exec(admin, s.id, { cmd: ['python3', '-c', 'b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))'], timeoutSeconds: 60 });
        assert.equal(r.exitCode, 137);
        assert.equal(r.reason, 'oom');
        assert.equal((await sh(s.id, 'echo ok')).stdout, 'ok\n');
      } finally {
        await engine.killSandbox(admin, s.id);
      }
    });

    t('limits', 'pids: a bounded flood stops at the limit', async () => {
      const s = await create({ resources: { pids: 48 } });
      try {
        const r = await sh(s.id, 'for i in $(seq 120); do sleep 30 & done 2>/dev/null; ps -e | wc -l; kill -9 $(jobs -p) 2>/dev/null; true');
        const visible = Number(r.stdout.trim().split('\n').pop());
        assert.ok(visible <= 48, `${visible} processes must stay under pids=48`);
      } finally {
        await engine.killSandbox(admin, s.id);
      }
    });

    t('limits', 'disk: writes past the quota fail with ENOSPC', async () => {
      const s = await create({ resources: { diskMiB: 32 } });
      try {
        const r = await sh(s.id, 'dd if=/dev/zero of=/work/fill bs=1M count=64 2>&1; echo "rc=$?"');
        assert.match(r.stdout, /No space left on device/);
        assert.match(r.stdout, /rc=1/);
        assert.equal((await sh(s.id, 'rm /work/fill && echo ok')).stdout, 'ok\n');
      } finally {
        await engine.killSandbox(admin, s.id);
      }
    });

    t('lifetime', 'the sandbox ends at its timeout; a running exec reports it', async () => {
      const s = await create({ timeoutSeconds: 2 });
      const r = await sh(s.id, 'sleep 30');
      assert.equal(r.reason, 'timeout', 'an exec cut by the sandbox\'s lifetime reports the timeout');
      for (let i = 0; i < 50 && engine.getSandbox(admin, s.id).state !== 'expired'; i++) await sleep(100);
      assert.equal(engine.getSandbox(admin, s.id).state, 'expired');
      assertSandboxGone(s.id);
    });

    t('pause', 'a paused sandbox uses no CPU, refuses exec and files, and resumes where it was', async () => {
      const s = await create();
      try {
        // A counter that also burns CPU, so both "frozen" and "no CPU" are visible.
        // (rename, so a reader never sees a half-written file)
        await engine.execBackground(admin, s.id, { cmd: ['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; done'] });
        await sleep(300);
        const paused = await engine.pauseSandbox(admin, s.id);
        assert.equal(paused.state, 'paused');
        assert.equal((await engine.pauseSandbox(admin, s.id)).state, 'paused', 'pause is idempotent');
        const cpu0 = cpuSeconds(s.id);
        await sleep(800);
        const cpu1 = cpuSeconds(s.id);
        assert.ok(cpu1 - cpu0 < 0.05, `${tier}: ${(cpu1 - cpu0).toFixed(3)} CPU seconds used while paused`);
        await assert.rejects(sh(s.id, 'echo no'), (e: AirlockError) => e.status === 409 && /paused/.test(e.message));
        await assert.rejects(engine.readFile(admin, s.id, '/tmp/count'), (e: AirlockError) => e.status === 409);
        assert.equal(engine.listSandboxes(admin, { state: 'paused' }).filter((x) => x.id === s.id).length, 1);
        const resumed = await engine.resumeSandbox(admin, s.id);
        assert.equal(resumed.state, 'running');
        assert.equal((await engine.resumeSandbox(admin, s.id)).state, 'running', 'resume is idempotent');
        const a = Number((await sh(s.id, 'cat /tmp/count')).stdout);
        await sleep(300);
        const b = Number((await sh(s.id, 'cat /tmp/count')).stdout);
        assert.ok(b > a, `the counter runs again after resume (${a} → ${b})`);
        const types = engine.listEvents(admin, { sandbox: s.id }).map((e) => e.type);
        assert.ok(types.includes('sandbox.paused') && types.includes('sandbox.resumed'), types.join(','));
        // Killing a paused sandbox works and leaves nothing behind.
        await engine.pauseSandbox(admin, s.id);
        await engine.killSandbox(admin, s.id);
        assertSandboxGone(s.id);
        await assert.rejects(engine.resumeSandbox(admin, s.id), (e: AirlockError) => e.status === 409);
      } finally {
        await engine.killSandbox(admin, s.id).catch(() => {});
      }
    });

    t('network', 'no allowlist: only lo; an allowlist reaches its hosts and nothing else', async () => {
      const s = await box();
      const ifaces = await sh(s.id, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "');
      assert.equal(ifaces.stdout.trim(), 'lo');
      const n = await create({ network: { allow: ['a.test'] } });
      try {
        const ok = await sh(n.id, 'curl -sS --max-time 10 -o /dev/null -w "%{http_code}" http://a.test/ || echo "FAIL $?"');
        assert.equal(ok.stdout, '200');
        const denied = await sh(n.id, 'curl -sS --max-time 5 -o /dev/null -w "%{http_code}" http://b.test/ || echo "FAIL $?"');
        assert.match(denied.stdout, /FAIL/);
        const direct = await sh(n.id, 'curl -sS --max-time 5 -o /dev/null -w "%{http_code}" --resolve b.test:80:203.0.113.11 http://b.test/ || echo "FAIL $?"');
        assert.match(direct.stdout, /FAIL|403/, 'a raw address the policy does not allow is refused');
        assert.deepEqual(await net.canaryHits(), []);
      } finally {
        await engine.killSandbox(admin, n.id);
      }
      assertSandboxGone(n.id);
    });

    t('hostile', 'root inside hammering the agent socket cannot stall the daemon or other sandboxes', async () => {
      const s = await create();
      const other = await box();
      try {
        // Garbage, a huge length, a forged HELLO, half frames left open, and a connect flood, all
        // at the socket the agent dials (the sandbox can reach it: it is how its agent talks).
        const hostile = engine.exec(admin, s.id, { cmd: ['python3', '-c', `
import os, socket, struct, time
path = '/run/airlock/host.sock'
socks = []
def dial():
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.settimeout(2); c.connect(path); return c
for payload in [os.urandom(4096), struct.pack('>IBI', 0xffffffff, 128, 0), struct.pack('>IBI', 5 + 40, 128, 0) + b'\\x00\\x00\\x00\\x01' + b'x' * 36, struct.pack('>I', 100)]:
    try:
        c = dial(); c.sendall(payload); socks.append(c)
    except OSError as e:
        pass
t0 = time.time(); n = 0
while time.time() - t0 < 3:
    try:
        c = dial(); c.sendall(os.urandom(64)); socks.append(c); n += 1
        if len(socks) > 200: socks.pop(0).close()
    except OSError:
        time.sleep(0.01)
print('dialled', n)
`], timeoutSeconds: 30 });
        // Meanwhile both sandboxes answer promptly.
        for (let i = 0; i < 10; i++) {
          const t0 = Date.now();
          assert.equal((await sh(other.id, 'echo ok')).stdout, 'ok\n');
          assert.ok(Date.now() - t0 < 1000, `another sandbox's exec took ${Date.now() - t0} ms during the flood`);
          await sleep(200);
        }
        const r = await hostile;
        assert.equal(r.exitCode, 0, r.stderr);
        assert.equal((await sh(s.id, 'echo still')).stdout, 'still\n', 'the flooding sandbox\'s own agent link survived');
      } finally {
        await engine.killSandbox(admin, s.id).catch(() => {});
      }
    });

    t('cleanup', 'kill frees every host object', async () => {
      const s = await create({ network: { allow: ['a.test'] }, resources: { diskMiB: 64 } });
      await sh(s.id, 'echo x > /work/x');
      await engine.killSandbox(admin, s.id);
      assert.equal(engine.getSandbox(admin, s.id).state, 'killed');
      assertSandboxGone(s.id);
    });
  });
}

for (const tier of ALL_TIERS) tierSuite(tier);
