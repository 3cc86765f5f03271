/**
 * Interactive terminals (engine.openPty) on the container and gvisor tiers: real sandboxes,
 * a real pty from the sandbox's own devpts, the real line discipline.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { Engine } from '../src/engine.js';
import type { PtySession } from '../src/engine-api.js';
import type { AirlockError } from '../src/errors.js';
import type { RuntimeName } from '../src/types.js';
import { closeAndClean, openTestEngine, sandboxIdsIn } from './support.js';

const admin = { tenant: null };
const RUNSC = process.env.AIRLOCK_RUNSC ?? '/usr/local/bin/runsc';
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

before(async () => {
  ({ engine, dataDir } = await openTestEngine('pty'));
});

after(async () => {
  if (engine) await closeAndClean(engine, dataDir, [...new Set([...ids, ...sandboxIdsIn(dataDir)])]);
});

/** Everything the session printed, and a way to wait for a pattern in it. */
function record(s: PtySession) {
  let text = '';
  const waiters = new Set<() => void>();
  s.onData((b) => {
    text += b.toString('utf8');
    for (const w of [...waiters]) w();
  });
  return {
    get text() { return text; },
    /** Resolves with the match once `re` matches the output after `from` (default: all of it). */
    waitFor(re: RegExp, timeoutMs = 15_000, from = 0): Promise<RegExpMatchArray> {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = text.slice(from).match(re);
          if (!m) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(m);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${re}; output so far: ${JSON.stringify(text.slice(-2000))}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

async function waitForProcess(id: string, name: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ps = await engine.listProcesses(admin, id);
    if (ps.some((p) => p.cmdline[0]?.endsWith(name))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${name} did not start in ${id}`);
}

const runtimes: RuntimeName[] = ['container', ...(existsSync(RUNSC) ? ['gvisor' as const] : [])];
if (!existsSync(RUNSC)) test('gvisor pty tests', { skip: `runsc not found at ${RUNSC}` }, () => {});

for (const runtime of runtimes) {
  describe(`pty on ${runtime}`, () => {
    let id = '';
    before(async () => {
      const s = await engine.createSandbox(admin, { runtime, template: 'base', timeoutSeconds: 300 });
      ids.push(s.id);
      id = s.id;
    });

    test('a shell on /dev/pts/N: size, resize, TERM, line discipline, exit code, audit', async () => {
      const s = await engine.openPty(admin, id, { cols: 100, rows: 30 });
      assert.deepEqual(s.cmd, ['/bin/bash'], 'the base template has bash');
      assert.ok(s.pid > 1);
      const out = record(s);
      s.write('tty; stty size; echo "term=$TERM"\r');
      await out.waitFor(/\/dev\/pts\/\d+\r\n/);
      await out.waitFor(/\r\n30 100\r\n/);
      await out.waitFor(/term=xterm-256color\r\n/);

      const mark = out.text.length;
      s.resize(120, 40);
      s.write('stty size\r');
      await out.waitFor(/\b40 120\r\n/, 15_000, mark);

      const mark2 = out.text.length;
      s.write('echo h');
      s.write('i\r');
      await out.waitFor(/echo hi\r\n[^]*?\bhi\r\n/, 15_000, mark2);

      s.write('exit 3\r');
      const exit = await s.exited;
      assert.equal(exit.exitCode, 3);
      assert.equal(exit.reason, 'exited');
      assert.equal(s.write('late'), false, 'input after the end is dropped');

      const events = engine.listEvents(admin, { sandbox: id }).filter((e) => e.data['execId'] === s.execId);
      const started = events.find((e) => e.type === 'exec.started');
      const exited = events.find((e) => e.type === 'exec.exited');
      assert.equal(started?.data['pty'], true);
      assert.deepEqual(started?.data['cmd'], ['/bin/bash']);
      assert.equal(exited?.data['pty'], true);
      assert.equal(exited?.data['exitCode'], 3);
    });

    test('a resize undone by a stale write-back (readline\'s get-then-set) is re-applied; a program\'s own size stays', async () => {
      // The program plays readline's lost update: it polls the size with ioctls (no process
      // spawns, so it reacts within a millisecond, like readline's own get-then-set), and once
      // the resize lands writes back the size it read before. Then it sets a size of its own,
      // which must stay.
      const program = [
        'import fcntl, struct, termios, time',
        'def get(): return struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]',
        'def put(r, c): fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))',
        'def wait_change(s):',
        '    deadline = time.time() + 30',
        '    while get() == s and time.time() < deadline: pass',
        'old = get(); print("ready %d %d" % old, flush=True)',
        'wait_change(old); put(*old); print("reverted", flush=True)',
        'time.sleep(0.7); print("final %d %d" % get(), flush=True)',
        'cur = get(); print("ready2", flush=True)',
        'wait_change(cur); put(33, 77)',
        'time.sleep(0.7); print("own %d %d" % get(), flush=True)',
      ].join('\n');
      const s = await engine.openPty(admin, id, { cols: 100, rows: 30, cmd: ['python3', '-c', program] });
      const out = record(s);
      await out.waitFor(/ready 30 100\r\n/, 30_000);
      s.resize(120, 40);
      await out.waitFor(/reverted\r\n/);
      await out.waitFor(/final 40 120\r\n/);
      await out.waitFor(/ready2\r\n/);
      s.resize(90, 20);
      await out.waitFor(/own 33 77\r\n/);
      assert.equal((await s.exited).exitCode, 0);
    });

    test('the line discipline: canonical input with erase, echo, ^D', async () => {
      const s = await engine.openPty(admin, id, { cmd: ['/bin/sh', '-c', 'read x; echo "got=$x"; cat; echo "cat=$?"'] });
      const out = record(s);
      s.write('ab\x7fc\r'); // DEL erases the b before the program sees the line
      await out.waitFor(/got=ac\r\n/);
      s.write('\x04'); // ^D at the start of a line: cat reads end of file
      await out.waitFor(/cat=0\r\n/);
      assert.equal((await s.exited).exitCode, 0);
      assert.match(out.text, /^ab\x08 \x08c\r\n/, `the tty echoes the input and the erase: ${JSON.stringify(out.text)}`);
    });

    test('^C interrupts the foreground job; SIGNAL reaches the process group', async () => {
      const s = await engine.openPty(admin, id, { cmd: ['/bin/bash'] });
      const out = record(s);
      s.write('sleep 100\r');
      await waitForProcess(id, 'sleep');
      const t0 = Date.now();
      s.write('\x03');
      s.write('echo "after=$?"\r');
      await out.waitFor(/after=130\r\n/);
      assert.ok(Date.now() - t0 < 10_000);

      s.kill();
      const exit = await s.exited;
      assert.equal(exit.exitCode, 137);
      assert.equal(exit.reason, 'killed');

      const sleeper = await engine.openPty(admin, id, { cmd: ['sleep', '100'] });
      await waitForProcess(id, 'sleep');
      sleeper.kill(1);
      assert.deepEqual(await sleeper.exited.then((e) => [e.exitCode, e.reason, e.signal]), [129, 'killed', 1]);
    });

    test('a command instead of a shell; cwd and env; timeout', async () => {
      const s = await engine.openPty(admin, id, {
        cmd: ['/bin/sh', '-c', 'pwd; echo "$GREETING"; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-tty; exit 5'],
        cwd: '/tmp', env: { GREETING: 'hello' },
      });
      const out = record(s);
      const exit = await s.exited;
      assert.equal(exit.exitCode, 5);
      assert.equal(out.text, '/tmp\r\nhello\r\nall-tty\r\n', 'all output arrives before the exit');

      const t = await engine.openPty(admin, id, { cmd: ['sleep', '30'], timeoutSeconds: 1 });
      const texit = await t.exited;
      assert.equal(texit.exitCode, 124);
      assert.equal(texit.reason, 'timeout');
    });

    test('bad options are 400s, before anything starts', async () => {
      for (const opts of [{ cols: 0 }, { rows: 1001 }, { cols: 1.5 }, { cmd: [] }, { cmd: [''] }, { cwd: 'rel' }, { nope: 1 }]) {
        await assert.rejects(engine.openPty(admin, id, opts as never), (e: AirlockError) => e.status === 400, JSON.stringify(opts));
      }
      const s = await engine.openPty(admin, id, { cmd: ['cat'] });
      assert.throws(() => s.resize(0, 10), (e: AirlockError) => e.status === 400);
      assert.throws(() => s.resize(10, 1001), (e: AirlockError) => e.status === 400);
      assert.throws(() => s.kill(65), (e: AirlockError) => e.status === 400);
      s.kill();
      assert.equal((await s.exited).exitCode, 137);
    });

    test('a pty flood does not stall other execs on the sandbox, paused or not', async () => {
      const flood = await engine.openPty(admin, id, { cmd: ['yes'] });
      let bytes = 0;
      flood.onData((b) => { bytes += b.length; });
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(bytes > 0, 'the flood is flowing');
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now();
        const r = await engine.exec(admin, id, { cmd: ['echo', `ok${i}`] });
        assert.equal(r.stdout, `ok${i}\n`);
        assert.ok(Date.now() - t0 < 5_000, `exec took ${Date.now() - t0} ms beside the flood`);
      }

      // Paused: the agent stops reading this pty; everything else keeps flowing.
      flood.pause();
      await new Promise((r) => setTimeout(r, 300));
      const held = bytes;
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(bytes - held < 8 * 1024 * 1024, `a paused session stops receiving (${bytes - held} more bytes)`);
      const r = await engine.exec(admin, id, { cmd: ['echo', 'while-paused'] });
      assert.equal(r.stdout, 'while-paused\n');
      const more = bytes;
      flood.resume();
      await new Promise((r2) => setTimeout(r2, 300));
      assert.ok(bytes > more, 'output flows again after resume');

      flood.kill();
      const exit = await flood.exited;
      assert.equal(exit.exitCode, 137);
      assert.equal(exit.reason, 'killed');
    });

    test('output before the first listener is kept for it', async () => {
      const s = await engine.openPty(admin, id, { cmd: ['/bin/sh', '-c', 'echo early; exit 0'] });
      await new Promise((r) => setTimeout(r, 500));
      let text = '';
      s.onData((b) => { text += b.toString(); });
      assert.equal((await s.exited).exitCode, 0);
      assert.equal(text, 'early\r\n');
    });

    test('killing the sandbox mid-session ends the session with a reason; then 409', async () => {
      const sbx = await engine.createSandbox(admin, { runtime, template: 'base', timeoutSeconds: 120 });
      ids.push(sbx.id);
      const s = await engine.openPty(admin, sbx.id);
      const out = record(s);
      s.write('echo ready\r');
      await out.waitFor(/ready\r\n/);
      await engine.killSandbox(admin, sbx.id);
      const exit = await s.exited;
      assert.equal(exit.exitCode, 137);
      assert.equal(exit.reason, 'killed');
      await assert.rejects(engine.openPty(admin, sbx.id), (e: AirlockError) => e.status === 409);
      await assert.rejects(engine.openPty(admin, 'zzzzzzzzzzzz'), (e: AirlockError) => e.status === 404);
    });
  });
}
