/**
 * The gvisor tier: the same spec and API as container, with gVisor's user-space kernel in
 * front of the host's. Real runsc (Debian 13's, systrap), real cgroups, real overlay layers.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import { closeAndClean, openTestEngine, sandboxIdsIn } from './support.js';

const admin = { tenant: null };
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

before(async () => {
  ({ engine, dataDir } = await openTestEngine('gvisor'));
});

after(async () => {
  if (engine) await closeAndClean(engine, dataDir, [...new Set([...ids, ...sandboxIdsIn(dataDir)])]);
});

async function gvisor(extra: Record<string, unknown> = {}) {
  const s = await engine.createSandbox(admin, { runtime: 'gvisor', template: 'tiny', timeoutSeconds: 120, ...extra });
  ids.push(s.id);
  return s;
}

describe('gvisor tier', () => {
  test('the kernel is gVisor\'s and host kernel interfaces are absent', async () => {
    const s = await gvisor();
    assert.equal(s.runtime, 'gvisor');
    const r = await engine.exec(admin, s.id, {
      cmd: ['/bin/sh', '-c', 'uname -r; for p in /proc/kcore /dev/mem /dev/kmsg /dev/sda /dev/port; do [ -e $p ] && echo "PRESENT $p"; done; dmesg 2>/dev/null | head -1'],
    });
    assert.equal(r.exitCode, 0, r.stderr);
    const [kernel] = r.stdout.split('\n');
    assert.notEqual(kernel, release(), 'uname -r must not be the host kernel');
    assert.doesNotMatch(r.stdout, /PRESENT/);
    assert.match(r.stdout, /gVisor/, 'the kernel log is gVisor\'s own');
    await engine.killSandbox(admin, s.id);
  });

  test('exec: exit codes, env, cwd, stdin, timeouts', async () => {
    const s = await gvisor({ env: { GREETING: 'hi' } });
    const r = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'echo $GREETING $EXTRA; pwd; cat; exit 7'], env: { EXTRA: 'there' }, cwd: '/tmp', stdin: 'from stdin' });
    assert.equal(r.exitCode, 7);
    assert.equal(r.stdout, 'hi there\n/tmp\nfrom stdin');
    const t = await engine.exec(admin, s.id, { cmd: ['sleep', '30'], timeoutSeconds: 1 });
    assert.equal(t.exitCode, 124);
    assert.equal(t.reason, 'timeout');
    await engine.killSandbox(admin, s.id);
  });

  test('files: write, read, list, delete; links cannot leave the sandbox', async () => {
    const s = await gvisor();
    await engine.writeFile(admin, s.id, '/work/a.txt', Buffer.from('payload'));
    assert.equal((await engine.readFile(admin, s.id, '/work/a.txt')).toString(), 'payload');
    const r = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'cat /work/a.txt; ln -s /etc/shadow /work/l; ln -s ../../../../etc/hostname /work/up'] });
    assert.equal(r.stdout, 'payload');
    // Both links resolve inside the sandbox's root (or are refused), never on the host.
    const up = await engine.readFile(admin, s.id, '/work/up').then((b) => b.toString(), () => 'refused');
    const hostName = existsSync('/etc/hostname') ? readFileSync('/etc/hostname', 'utf8').trim() : '';
    if (hostName) assert.notEqual(up.trim(), hostName, 'a link resolved on the host');
    const shadow = await engine.readFile(admin, s.id, '/work/l').then((b) => b.toString(), () => 'refused');
    if (existsSync('/etc/shadow')) assert.notEqual(shadow, readFileSync('/etc/shadow', 'utf8'));
    await engine.deletePath(admin, s.id, '/work/a.txt');
    await assert.rejects(engine.readFile(admin, s.id, '/work/a.txt'), (e: AirlockError) => e.status === 404);
    await engine.killSandbox(admin, s.id);
  });

  test('no network: only loopback, connects fail at once', async () => {
    const s = await gvisor();
    const t0 = Date.now();
    const r = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'nc -w 2 203.0.113.10 80 </dev/null; echo rc=$?'] });
    assert.match(r.stdout, /rc=1/);
    assert.ok(Date.now() - t0 < 2000);
    await engine.killSandbox(admin, s.id);
  });

  test('limits: a process flood stops at pids; lifetime expiry ends it', async () => {
    const s = await gvisor({ resources: { pids: 32 }, timeoutSeconds: 3 });
    const r = await engine.exec(admin, s.id, { cmd: ['/bin/sh', '-c', 'n=0; for i in $(seq 1 60); do sleep 5 & n=$((n+1)); done 2>/dev/null; echo started'], timeoutSeconds: 10 });
    assert.ok(r.exitCode !== null);
    const deadline = Date.now() + 10_000;
    while (engine.getSandbox(admin, s.id).state === 'running' && Date.now() < deadline) await new Promise((x) => setTimeout(x, 100));
    assert.equal(engine.getSandbox(admin, s.id).state, 'expired');
  });

  test('kill and reconcile leave no runsc state, mounts or cgroups', async () => {
    const s = await gvisor();
    await engine.killSandbox(admin, s.id);
    const state = readdirSync(join(dataDir, 'runsc')).filter((f) => f.includes(s.id));
    assert.deepEqual(state, []);
    const r = await engine.reconcile();
    assert.deepEqual(r.removed.filter((x) => x.includes(s.id)), []);
  });
});
