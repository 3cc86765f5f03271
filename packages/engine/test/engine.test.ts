import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Engine } from '../src/engine.js';
import { AirlockError } from '../src/errors.js';
import { TemplateStore } from '../src/template/template-store.js';
import { assertHostClean, closeAndClean, openTestEngine, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };
let engine: Engine;
let dataDir: string;
const created: string[] = [];

async function sandbox(input: Parameters<Engine['createSandbox']>[1] = {}) {
  const s = await engine.createSandbox(admin, { template: 'base', timeoutSeconds: 120, ...input });
  created.push(s.id);
  return s;
}

async function sh(id: string, script: string, extra: { timeoutSeconds?: number; stdin?: string } = {}) {
  return engine.exec(admin, id, { cmd: ['/bin/sh', '-c', script], ...extra });
}

async function py(id: string, code: string) {
  return engine.exec(admin, id, { cmd: ['python3', '-c', code] });
}

before(async () => {
  ({ engine, dataDir } = await openTestEngine('engine'));
});

after(async () => {
  await closeAndClean(engine, dataDir, created);
});

describe('lifecycle and exec', () => {
  test('create, exec with env/cwd/stdin, exit codes, kill leaves nothing behind', async () => {
    const s = await sandbox({ env: { GREETING: 'hello' }, metadata: { team: 'a' } });
    assert.equal(s.state, 'running');
    assert.equal(s.runtime, 'container');
    assert.match(s.id, /^[a-z0-9]{12}$/);

    const r = await sh(s.id, 'echo "$GREETING $EXTRA"; pwd; echo err >&2; exit 3');
    assert.deepEqual({ code: r.exitCode, out: r.stdout, err: r.stderr, reason: r.reason }, { code: 3, out: 'hello \n/work\n', err: 'err\n', reason: 'exited' });

    const r2 = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'echo "$EXTRA"; pwd; cat'], env: { EXTRA: 'more' }, cwd: '/tmp', stdin: 'from stdin' });
    assert.equal(r2.stdout, 'more\n/tmp\nfrom stdin');
    assert.equal(r2.exitCode, 0);

    const nf = await engine.exec(admin, s.id, { cmd: ['no-such-command'] });
    assert.equal(nf.exitCode, 127);
    assert.match(nf.stderr, /no-such-command/);

    const chunks: string[] = [];
    const streamed = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'for i in 1 2 3; do echo $i; done'] }, { onStdout: (b) => chunks.push(b.toString()) });
    assert.equal(chunks.join(''), '1\n2\n3\n');
    assert.equal(streamed.stdout, '1\n2\n3\n');

    assert.deepEqual(engine.listSandboxes(admin, { metadata: { team: 'a' } }).map((x) => x.id), [s.id]);
    const killed = await engine.killSandbox(admin, s.id);
    assert.equal(killed.state, 'killed');
    assertHostClean(dataDir, [s.id]);
    const types = engine.listEvents(admin, { sandbox: s.id }).map((e) => e.type);
    assert.deepEqual(types.filter((t) => t.startsWith('sandbox.')), ['sandbox.created', 'sandbox.started', 'sandbox.killed']);
    assert.ok(types.includes('exec.started') && types.includes('exec.exited'));
  });

  test('per-command timeout kills the process group and reports 124', async () => {
    const s = await sandbox();
    const t0 = Date.now();
    const r = await sh(s.id, 'sleep 30 & sleep 30; echo never', { timeoutSeconds: 0.5 });
    assert.equal(r.reason, 'timeout');
    assert.equal(r.exitCode, 124);
    assert.ok(Date.now() - t0 < 5000);
    const ps = await sh(s.id, 'ps -eo comm= | grep -c sleep || true');
    assert.equal(ps.stdout.trim(), '0');
    await engine.killSandbox(admin, s.id);
  });

  test('background processes can be listed and killed', async () => {
    const s = await sandbox();
    const { pid, execId } = await engine.execBackground(admin, s.id, { cmd: ['sleep', '300'] });
    assert.ok(pid > 1);
    const ps = await engine.listProcesses(admin, s.id);
    const mine = ps.find((p) => p.pid === pid);
    assert.ok(mine, `pid ${pid} in ${JSON.stringify(ps)}`);
    assert.equal(mine.execId, execId);
    assert.deepEqual(mine.cmdline, ['sleep', '300']);
    await engine.killProcess(admin, s.id, pid, 9);
    for (let i = 0; i < 50 && (await engine.listProcesses(admin, s.id)).some((p) => p.pid === pid); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!(await engine.listProcesses(admin, s.id)).some((p) => p.pid === pid));
    await engine.killSandbox(admin, s.id);
  });

  test('sandbox lifetime: expiry kills it, reports timeout to a running exec, cleans the host', async () => {
    const s = await sandbox({ timeoutSeconds: 2 });
    const r = await sh(s.id, 'sleep 60');
    assert.equal(r.reason, 'timeout');
    assert.equal(r.exitCode, 124);
    const info = engine.getSandbox(admin, s.id);
    assert.equal(info.state, 'expired');
    assert.match(info.reason ?? '', /timeout/);
    assertHostClean(dataDir, [s.id]);
    assert.ok(engine.listEvents(admin, { sandbox: s.id }).some((e) => e.type === 'limit.timeout'));
  });

  test('setSandboxTimeout extends the lifetime', async () => {
    const s = await sandbox({ timeoutSeconds: 2 });
    const ext = await engine.setSandboxTimeout(admin, s.id, 60);
    assert.ok(Date.parse(ext.expiresAt) - Date.now() > 50_000);
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(engine.getSandbox(admin, s.id).state, 'running');
    await engine.killSandbox(admin, s.id);
  });
});

describe('bad input', () => {
  test('unknown ids, invalid resources, exec in a stopped sandbox', async () => {
    assert.throws(() => engine.getSandbox(admin, 'zzzzzzzzzzzz'), (e: AirlockError) => e.status === 404);
    assert.throws(() => engine.getSandbox(admin, '../../etc'), (e: AirlockError) => e.status === 404);
    await assert.rejects(engine.createSandbox(admin, { resources: { memoryMiB: -5 } }), (e: AirlockError) => e.status === 400 && e.field === 'resources.memoryMiB');
    await assert.rejects(engine.createSandbox(admin, { resources: { cpus: 1000 } }), (e: AirlockError) => e.status === 400 && e.field === 'resources.cpus');
    await assert.rejects(engine.createSandbox(admin, { template: 'nope' }), (e: AirlockError) => e.status === 404);
    await assert.rejects(engine.createSandbox(admin, { bogus: 1 } as never), (e: AirlockError) => e.status === 400);
    await assert.rejects(engine.createSandbox(admin, { mounts: [{ source: '/etc', target: '/proc/x', readOnly: true }] }), (e: AirlockError) => e.status === 400);
    await assert.rejects(engine.createSandbox(admin, { network: { allow: ['https://example.com/'] } }), (e: AirlockError) => e.status === 400 && e.field === 'network.allow.0');
    const s = await sandbox();
    await assert.rejects(engine.exec(admin, s.id, { cmd: [] }), (e: AirlockError) => e.status === 400 && e.field === 'cmd');
    await assert.rejects(engine.exec(admin, s.id, { cmd: ['a\0b'] }), (e: AirlockError) => e.status === 400);
    await assert.rejects(engine.readFile(admin, s.id, 'relative/path'), (e: AirlockError) => e.status === 400);
    await engine.killSandbox(admin, s.id);
    await assert.rejects(engine.exec(admin, s.id, { cmd: ['true'] }), (e: AirlockError) => e.status === 409);
    await assert.rejects(engine.killSandbox(admin, s.id), (e: AirlockError) => e.status === 409);
    assert.throws(() => engine.getSandbox({ tenant: 'other' }, s.id), (e: AirlockError) => e.status === 404);
  });
});

describe('isolation (hostile root inside)', () => {
  let id: string;
  before(async () => { id = (await sandbox({ resources: { pids: 64, memoryMiB: 256 } })).id; });
  after(async () => { await engine.killSandbox(admin, id).catch(() => {}); });

  test('no host processes, interfaces or files are visible', async () => {
    const marker = join('/tmp', `airlock-host-marker-${process.pid}`);
    writeFileSync(marker, 'host secret');
    try {
      const r = await sh(id, `ls /proc | grep -c '^[0-9]' ; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; ls ${marker} 2>&1; hostname`);
      const lines = r.stdout.trim().split('\n');
      // agent, sh, ls, grep: a handful, never the host's hundreds
      assert.ok(Number(lines[0]) <= 6, `visible processes: ${lines[0]}`);
      assert.equal(lines[1], 'lo');
      assert.match(lines[2]!, /No such file/);
      assert.match(lines[3]!, /^airlock-/);
    } finally {
      rmSync(marker, { force: true });
    }
  });

  test('root inside maps to the unprivileged range outside, with no_new_privs and seccomp', async () => {
    const r = await sh(id, 'cat /proc/self/uid_map; grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status; id -u');
    assert.match(r.stdout, /^\s*0\s+900000000\s+65536\n/);
    assert.match(r.stdout, /NoNewPrivs:\s+1/);
    assert.match(r.stdout, /Seccomp:\s+2/);
    assert.match(r.stdout, /\n0\n$/);
  });

  test('mount, unshare, sysrq, module loading, raw sockets and ptrace all fail', async () => {
    const r = await sh(id, [
      'mount -t tmpfs x /mnt 2>/dev/null && echo MOUNT_OK',
      'unshare -U true 2>/dev/null && echo UNSHARE_U_OK',
      'unshare -n true 2>/dev/null && echo UNSHARE_N_OK',
      "echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ_OK",
      'echo done',
    ].join('; '));
    assert.equal(r.stdout, 'done\n');
    const p = await py(id, `
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
out = []
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); out.append('RAW_OK')
except OSError as e: out.append('raw:%d' % e.errno)
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); out.append('PACKET_OK')
except OSError as e: out.append('packet:%d' % e.errno)
pid = os.fork()
if pid == 0:
    import time; time.sleep(5); os._exit(0)
r = libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
out.append('ptrace:%d:%d' % (r, ctypes.get_errno()))
os.kill(pid, 9); os.waitpid(pid, 0)
fd = os.open('/etc/hostname', os.O_RDONLY)
r = libc.syscall(313, fd, b'', 0)  # finit_module
out.append('finit_module:%d:%d' % (r, ctypes.get_errno()))
r = libc.syscall(175, None, 0, b'')  # init_module
out.append('init_module:%d:%d' % (r, ctypes.get_errno()))
r = libc.syscall(272, 0x10000000)  # unshare(CLONE_NEWUSER)
out.append('unshare:%d' % r)
print(' '.join(out))
`);
    assert.equal(p.exitCode, 0, p.stderr);
    const o = p.stdout;
    assert.doesNotMatch(o, /RAW_OK|PACKET_OK/);
    assert.match(o, /ptrace:-1:\d+/);
    assert.match(o, /finit_module:-1:\d+/);
    assert.match(o, /init_module:-1:\d+/);
    assert.match(o, /unshare:-1/);
  });

  test('PID 1 (the agent) cannot be killed or read from inside', async () => {
    const r = await sh(id, 'kill -9 1; cat /proc/1/environ >/dev/null 2>&1 && echo ENVIRON_OK; echo alive');
    assert.equal(r.stdout, 'alive\n');
    assert.equal((await sh(id, 'echo still')).stdout, 'still\n');
  });

  test('writes never reach the template', async () => {
    const tpl = new TemplateStore(TEMPLATES_DIR).require('base');
    const r = await sh(id, 'echo pwned > /etc/airlock-pwned && rm -f /etc/hostname && chmod 777 /usr/bin && echo ok');
    assert.equal(r.stdout, 'ok\n');
    assert.ok(!existsSync(join(tpl.rootfs, 'etc/airlock-pwned')));
    assert.ok(existsSync(join(tpl.rootfs, 'etc/hostname')));
  });

  test('a bounded process flood stops at the pids limit', async () => {
    const r = await sh(id, 'n=0; for i in $(seq 200); do sleep 30 & n=$((n+1)); done 2>/dev/null; ps -e | wc -l; kill -9 $(jobs -p) 2>/dev/null; true', { timeoutSeconds: 60 });
    const visible = Number(r.stdout.trim().split('\n').pop());
    assert.ok(visible <= 64, `processes ${visible} must stay under pids=64`);
    assert.ok(engine.listEvents(admin, { sandbox: id, type: 'limit.pids' }).length >= 1);
    await sh(id, 'pkill sleep; true');
  });
});

describe('resource limits', () => {
  test('a memory hog is OOM-killed and reported', async () => {
    const s = await sandbox({ resources: { memoryMiB: 64 } });
    const r = await py(s.id, 'b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))');
    assert.equal(r.reason, 'oom');
    assert.equal(r.exitCode, 137);
    assert.ok(engine.listEvents(admin, { sandbox: s.id, type: 'limit.oom' }).length === 1);
    // The sandbox itself survives (the agent is protected) and keeps working.
    assert.equal((await sh(s.id, 'echo ok')).stdout, 'ok\n');
    await engine.killSandbox(admin, s.id);
  });

  test('a CPU burner gets no more than its quota', async () => {
    const s = await sandbox({ resources: { cpus: 0.5 } });
    const cg = `/sys/fs/cgroup/cpuacct/airlock/${s.id}/cpuacct.usage`;
    const v2 = `/sys/fs/cgroup/airlock/${s.id}/cpu.stat`;
    const usage = () => existsSync(cg)
      ? Number(readFileSync(cg, 'utf8')) / 1e9
      : Number(/usage_usec (\d+)/.exec(readFileSync(v2, 'utf8'))![1]) / 1e6;
    const u0 = usage();
    const t0 = Date.now();
    await sh(s.id, 'timeout 2 sh -c "while :; do :; done" & timeout 2 sh -c "while :; do :; done"; wait');
    const cpu = (usage() - u0) / ((Date.now() - t0) / 1000);
    assert.ok(cpu <= 0.6, `cpu share ${cpu.toFixed(2)} must be ≤ 0.6 for cpus=0.5`);
    assert.ok(cpu >= 0.3, `cpu share ${cpu.toFixed(2)} suspiciously low`);
    await engine.killSandbox(admin, s.id);
  });
});

describe('two sandboxes', () => {
  test('cannot see or signal each other', async () => {
    const a = await sandbox();
    const b = await sandbox();
    const { pid } = await engine.execBackground(admin, a.id, { cmd: ['sleep', '300'] });
    const r = await sh(b.id, `kill -9 ${pid} 2>&1; ps -eo args | grep -c "sleep 300" || true; ls /proc/${pid} >/dev/null 2>&1 && echo SEES_IT; echo end`);
    assert.doesNotMatch(r.stdout, /SEES_IT/);
    assert.ok((await engine.listProcesses(admin, a.id)).some((p) => p.pid === pid), 'a\'s process survived');
    await engine.killSandbox(admin, a.id);
    await engine.killSandbox(admin, b.id);
  });
});

describe('files', () => {
  test('round trip, listing, deletion and link refusal', async () => {
    const s = await sandbox();
    await engine.writeFile(admin, s.id, '/work/dir/a.txt', Buffer.from('hello'));
    assert.equal((await engine.readFile(admin, s.id, '/work/dir/a.txt')).toString(), 'hello');
    assert.deepEqual((await engine.listDir(admin, s.id, '/work/dir')).map((e) => [e.name, e.type, e.size]), [['a.txt', 'file', 5]]);
    assert.equal((await sh(s.id, 'cat /work/dir/a.txt')).stdout, 'hello');

    const shadow = readFileSync('/etc/shadow', 'utf8');
    await sh(s.id, 'ln -s /etc/shadow /work/x; ln -s /proc/1/root /work/r; ln -s ../../../../../../etc /work/up');
    await assert.rejects(engine.readFile(admin, s.id, '/work/x'), (e: AirlockError) => e.status === 400 && /link/.test(e.message));
    await assert.rejects(engine.writeFile(admin, s.id, '/work/x', Buffer.from('owned')), (e: AirlockError) => e.status === 400);
    assert.equal(readFileSync('/etc/shadow', 'utf8'), shadow, 'host file untouched');
    // Links in the middle of a path resolve inside the sandbox root, never the host's.
    for (const p of ['/work/r/etc/shadow', '/work/up/shadow', '/work/../../../etc/shadow']) {
      const got = await engine.readFile(admin, s.id, p).then((b) => b.toString(), () => null);
      assert.notEqual(got, shadow, `${p} revealed the host's shadow`);
    }
    await engine.deletePath(admin, s.id, '/work/x');
    assert.ok(existsSync('/etc/shadow'));
    await engine.deletePath(admin, s.id, '/work/dir', { recursive: true });
    await assert.rejects(engine.readFile(admin, s.id, '/work/dir/a.txt'), (e: AirlockError) => e.status === 404);
    await engine.killSandbox(admin, s.id);
  });
});

test('no sandbox directory survives the suite', () => {
  const left = readdirSync(join(dataDir, 'sandboxes')).filter((d) => engine.listSandboxes(admin).every((s) => s.id !== d || s.state !== 'running'));
  assert.deepEqual(left, []);
});
