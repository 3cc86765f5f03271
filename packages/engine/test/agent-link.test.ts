/**
 * The real agent binary, run as an ordinary child process (not in a container), against the
 * real AgentLink over a real unix socket in a fresh tmp dir.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, readdirSync, realpathSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AgentDisconnectedError, AgentError, AgentLink } from '../src/agent/agent-link.js';
import { FrameDecoder, MsgType, ProtocolError, encodeFrame, encodeHello } from '../src/agent/protocol.js';
import {
  canUnshare, descendantsOf, ensureAgentBuilt, execSpec, isAlive, makeTmpDir, memoryKb, percentile, procStat, rawConnect,
  removeTmpDir, run, sleep, startAgent, startAgentAsInit, stopAgent, waitFor, type RunningAgent,
} from './agent-harness.js';

const ENOENT = 2, ESRCH = 3, EEXIST = 17, ENOTDIR = 20, EISDIR = 21, EINVAL = 22, EFBIG = 27, ENOTEMPTY = 39, ELOOP = 40;

async function rejectsWithErrno(p: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof AgentError, `expected AgentError, got ${String(e)}`);
    assert.equal(e.errno, errno, e.message);
    return true;
  });
}

describe('frame codec', () => {
  test('decodes frames split at every byte and several per chunk', () => {
    const a = encodeFrame(MsgType.STDOUT, 7, Buffer.from('hello'));
    const b = encodeFrame(MsgType.EXIT, 7, Buffer.alloc(12));
    const all = Buffer.concat([a, b]);
    const d = new FrameDecoder();
    const frames = [];
    for (let i = 0; i < all.length; i++) frames.push(...d.push(all.subarray(i, i + 1)));
    assert.equal(frames.length, 2);
    assert.deepEqual([frames[0]!.type, frames[0]!.channel, frames[0]!.payload.toString()], [MsgType.STDOUT, 7, 'hello']);
    assert.equal(frames[1]!.payload.length, 12);
    assert.equal(new FrameDecoder().push(all).length, 2);
  });

  test('refuses oversized and undersized lengths before buffering, and stays broken', () => {
    const big = Buffer.alloc(9);
    big.writeUInt32BE(5 + 1024 * 1024 + 1, 0);
    const d = new FrameDecoder();
    assert.throws(() => d.push(big), ProtocolError);
    assert.throws(() => d.push(Buffer.alloc(0)), ProtocolError);
    assert.throws(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 4, 1])), ProtocolError);
    const exact = encodeFrame(MsgType.FDATA, 1, Buffer.alloc(1024 * 1024));
    assert.equal(new FrameDecoder().push(exact).length, 1);
  });
});

describe('agent and link', () => {
  let dir: string;
  let sock: string;
  let link: AgentLink;
  let agent: RunningAgent;
  const TOKEN = randomBytes(24).toString('hex');

  before(async () => {
    ensureAgentBuilt();
    dir = makeTmpDir();
    sock = join(dir, 'host.sock');
    link = await AgentLink.listen(sock, TOKEN);
    agent = startAgent(sock, TOKEN);
    await link.waitConnected(5000);
  });

  after(async () => {
    await link?.close();
    if (agent) await stopAgent(agent);
    if (dir) removeTmpDir(dir);
  });

  test('socket file is 0666 and the token is wiped from the agent', async () => {
    const st = statSync(sock);
    assert.equal(st.mode & 0o777, 0o666);
    // PR_SET_DUMPABLE 0 makes /proc/PID/environ root-only; we are root here, so read it and
    // check the bytes themselves were zeroed.
    let environ = '';
    try {
      environ = readFileSync(`/proc/${agent.pid}/environ`, 'latin1');
    } catch {
      // not readable at all: fine too
    }
    assert.ok(!environ.includes(TOKEN), 'token still readable in /proc/PID/environ');
    await link.ping();
  });

  test('stdout, stderr and exit codes', async () => {
    const r = await run(link, ['sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.ok(r.pid > 0);
    assert.deepEqual(r.exit, { code: 7, signal: 0, timedOut: false });
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal((await run(link, ['true'])).exit.code, 0);
  });

  test('stdin, env, cwd and user', async () => {
    const cat = await run(link, ['cat'], {}, Buffer.from('hello stdin'));
    assert.equal(cat.stdout, 'hello stdin');

    const big = randomBytes(8 * 1024 * 1024); // more than the agent buffers: exercises stdin backpressure
    const h = createHash('sha256');
    const handle = link.exec(execSpec(['cat'], { keepStdinOpen: true }), { onStdout: (b) => h.update(b) });
    handle.writeStdin(big);
    handle.closeStdin();
    assert.equal((await handle.done).code, 0);
    assert.equal(h.digest('hex'), createHash('sha256').update(big).digest('hex'));

    const env = await run(link, ['env'], { env: ['FOO=bar baz', 'PATH=/usr/bin:/bin'] });
    assert.deepEqual(env.stdout.trim().split('\n').sort(), ['FOO=bar baz', 'PATH=/usr/bin:/bin']);
    assert.ok(!env.stdout.includes(TOKEN));

    // PATH is looked up in the exec's env, not the agent's.
    const nopath = await run(link, ['true'], { env: ['PATH=/nonexistent'] });
    assert.equal(nopath.exit.code, 127);

    const pwd = await run(link, ['pwd'], { cwd: dir });
    assert.equal(pwd.stdout.trim(), realpathSync(dir));

    const badCwd = await run(link, ['true'], { cwd: join(dir, 'missing') });
    assert.equal(badCwd.exit.code, 126);
    assert.match(badCwd.stderr, /^airlock: cwd .*missing: No such file or directory/);

    if (process.getuid?.() === 0) {
      const id = await run(link, ['sh', '-c', 'id -u; id -g; id -G'], { uid: 4321, gid: 4322 });
      assert.deepEqual(id.stdout.trim().split('\n'), ['4321', '4322', '4322']);
    }

    const oom = await run(link, ['cat', '/proc/self/oom_score_adj']);
    assert.equal(oom.stdout.trim(), '500'); // children rank above the agent for the OOM killer
  });

  test('command not found exits 127, not executable 126', async () => {
    const nf = await run(link, ['airlock-no-such-command']);
    assert.deepEqual(nf.exit, { code: 127, signal: 0, timedOut: false });
    assert.equal(nf.stderr, 'airlock: airlock-no-such-command: No such file or directory\n');
    const file = join(dir, 'not-executable');
    writeFileSync(file, '#!/bin/sh\necho no\n');
    chmodSync(file, 0o644);
    const ne = await run(link, [file]);
    assert.equal(ne.exit.code, 126);
    assert.match(ne.stderr, /Permission denied/);
  });

  test('per-exec timeout kills the whole process group', async () => {
    const t0 = Date.now();
    const r = await run(link, ['sh', '-c', 'sleep 30 & sleep 30; echo never'], { timeoutMs: 300 });
    const took = Date.now() - t0;
    assert.deepEqual(r.exit, { code: -1, signal: 9, timedOut: true });
    assert.ok(took >= 280 && took < 5000, `took ${took} ms`);
    await waitFor('the timed-out group to be gone', () =>
      !descendantsOf(agent.pid).some((p) => readCmdline(p.pid).join(' ') === 'sleep 30'));
  });

  test('signal goes to the process group', async () => {
    const h = link.exec(execSpec(['sleep', '30']));
    await h.started;
    h.signal(15);
    assert.deepEqual(await h.done, { code: -1, signal: 15, timedOut: false });
  });

  test('background exec, ps and killPid', async () => {
    let output = false;
    const h = link.exec(execSpec(['sh', '-c', 'echo discarded; exec sleep 30'], { background: true }), {
      onStdout: () => (output = true),
    });
    const pid = await h.started;
    await waitFor('sleep to exec', () => readCmdline(pid).join(' ') === 'sleep 30');
    const procs = await link.ps();
    const mine = procs.find((p) => p.pid === pid);
    assert.ok(mine, `pid ${pid} missing from ${JSON.stringify(procs)}`);
    assert.equal(mine.channel, h.channel);
    assert.deepEqual(mine.cmdline, ['sleep', '30']);
    assert.ok(!procs.some((p) => p.pid === agent.pid), 'ps lists the agent itself');
    assert.ok(!procs.some((p) => p.pid === process.pid), 'ps lists a process outside the sandbox');

    await link.killPid(pid, 9);
    assert.deepEqual(await h.done, { code: -1, signal: 9, timedOut: false });
    assert.equal(output, false);
    await rejectsWithErrno(link.killPid(pid, 9), ESRCH);
    await rejectsWithErrno(link.killPid(process.pid, 0), ESRCH); // not the agent's to kill
  });

  test('50 MiB of output arrives intact while the agent stays small', async () => {
    const file = join(dir, 'big.bin');
    const data = randomBytes(50 * 1024 * 1024);
    writeFileSync(file, data);
    const h = createHash('sha256');
    let n = 0;
    const t0 = process.hrtime.bigint();
    const r = link.exec(execSpec(['head', '-c', String(data.length), file]), {
      onStdout: (b) => {
        h.update(b);
        n += b.length;
      },
    });
    assert.equal((await r.done).code, 0);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.equal(n, data.length);
    assert.equal(h.digest('hex'), createHash('sha256').update(data).digest('hex'));
    const mem = memoryKb(agent.pid);
    console.log(`# 50 MiB stdout in ${ms.toFixed(0)} ms (${((50 / ms) * 1000).toFixed(0)} MiB/s); agent VmHWM ${mem.hwm} kB`);
    assert.ok(mem.hwm < 24 * 1024, `agent peak RSS ${mem.hwm} kB`);

    // A consumer that stalls: the link pauses its socket, the agent stops reading the file.
    const streamed = createHash('sha256');
    const it = link.readFileStream(file)[Symbol.asyncIterator]();
    let step = await it.next();
    await sleep(500);
    for (; !step.done; step = await it.next()) streamed.update(step.value);
    assert.equal(streamed.digest('hex'), createHash('sha256').update(data).digest('hex'));
    const after = memoryKb(agent.pid);
    console.log(`# after a stalled 50 MiB readFileStream: agent VmHWM ${after.hwm} kB`);
    assert.ok(after.hwm < 24 * 1024, `agent peak RSS ${after.hwm} kB`);
    await link.ping();
  });

  test('file operations round trip', async () => {
    const root = join(dir, 'files');
    mkdirSync(root);
    const st = await link.writeFile(`${root}/a.txt`, Buffer.from('hello'), { mode: 0o600 });
    assert.deepEqual([st.type, st.size, st.mode], ['file', 5, 0o600]);
    assert.equal(readFileSync(`${root}/a.txt`, 'utf8'), 'hello');
    assert.equal((await link.readFile(`${root}/a.txt`, 100)).toString(), 'hello');
    assert.equal((await link.readFile(`${root}/a.txt`, 5)).toString(), 'hello');
    await rejectsWithErrno(link.readFile(`${root}/a.txt`, 4), EFBIG);

    // overwrite in place, streamed from an async iterable, into new parent directories
    async function* chunks(): AsyncIterable<Buffer> {
      for (let i = 0; i < 5; i++) yield Buffer.alloc(300 * 1024, 65 + i);
    }
    const st2 = await link.writeFile(`${root}/deep/er/b.bin`, chunks(), { mkdirs: true, mode: 0o755 });
    assert.deepEqual([st2.size, st2.mode], [1500 * 1024, 0o755]);
    const back = await link.readFile(`${root}/deep/er/b.bin`, 10 * 1024 * 1024);
    assert.equal(back.length, 1500 * 1024);
    assert.equal(back[0], 65);
    assert.equal(back[back.length - 1], 69);
    await link.writeFile(`${root}/a.txt`, Buffer.from('second'));
    assert.equal(readFileSync(`${root}/a.txt`, 'utf8'), 'second');
    await rejectsWithErrno(link.writeFile(`${root}/nodir/x`, Buffer.from('x')), ENOENT);
    await rejectsWithErrno(link.writeFile(`${root}/a.txt/x`, Buffer.from('x')), ENOTDIR);
    await rejectsWithErrno(link.writeFile(`${root}/deep`, Buffer.from('x')), EISDIR);

    // a failing source cancels the write and leaves no temp file
    async function* failing(): AsyncIterable<Buffer> {
      yield Buffer.from('partial');
      throw new Error('source failed');
    }
    await assert.rejects(link.writeFile(`${root}/c.txt`, failing()), /source failed/);

    await link.mkdir(`${root}/m1`);
    await rejectsWithErrno(link.mkdir(`${root}/m1`), EEXIST);
    await link.mkdir(`${root}/m1`, { parents: true });
    await link.mkdir(`${root}/p/q/r`, { parents: true, mode: 0o700 });
    assert.equal((await link.stat(`${root}/p/q/r`)).mode, 0o700);
    await rejectsWithErrno(link.mkdir(`${root}/x/y`), ENOENT);

    await waitFor('the cancelled write to be cleaned up', async () =>
      !(await link.list(root)).some((e) => e.name.startsWith('.airlock-')));
    const entries = (await link.list(root)).map((e) => `${e.name}:${e.type}`).sort();
    assert.deepEqual(entries, ['a.txt:file', 'deep:dir', 'm1:dir', 'p:dir']);
    const sd = await link.stat(root);
    assert.equal(sd.type, 'dir');
    assert.ok(Math.abs(sd.mtimeSec - Date.now() / 1000) < 120);

    await rejectsWithErrno(link.readFile(root, 100), EISDIR);
    await rejectsWithErrno(link.readFile(`${root}/missing`, 100), ENOENT);
    await rejectsWithErrno(link.list(`${root}/a.txt`), ENOTDIR);
    await rejectsWithErrno(link.stat('relative/path'), EINVAL);
    await rejectsWithErrno(link.remove(`${root}/deep`, false), ENOTEMPTY);
    await link.remove(`${root}/deep`, true);
    await link.remove(`${root}/a.txt`, false);
    await rejectsWithErrno(link.stat(`${root}/deep`), ENOENT);
    await rejectsWithErrno(link.remove(`${root}/deep`, true), ENOENT);
    assert.deepEqual(readdirSync(root).sort(), ['m1', 'p']);

    // big directory listings span several frames
    mkdirSync(`${root}/many`);
    for (let i = 0; i < 3000; i++) writeFileSync(`${root}/many/file-with-a-longish-name-${i}`, '');
    assert.equal((await link.list(`${root}/many`)).length, 3000);
  });

  test('symlinks in the last component are never followed', async () => {
    const root = join(dir, 'links');
    mkdirSync(`${root}/outside`, { recursive: true });
    writeFileSync(`${root}/outside/secret`, 'secret');
    symlinkSync(`${root}/outside/secret`, `${root}/file-link`);
    symlinkSync(`${root}/outside`, `${root}/dir-link`);

    await rejectsWithErrno(link.readFile(`${root}/file-link`, 100), ELOOP);
    await assert.rejects(async () => {
      for await (const _ of link.readFileStream(`${root}/file-link`)) void _;
    }, (e: unknown) => e instanceof AgentError && e.errno === ELOOP);
    await rejectsWithErrno(link.writeFile(`${root}/file-link`, Buffer.from('pwned')), ELOOP);
    assert.equal(readFileSync(`${root}/outside/secret`, 'utf8'), 'secret');
    await rejectsWithErrno(link.list(`${root}/dir-link`), ELOOP);
    assert.equal((await link.stat(`${root}/file-link`)).type, 'symlink');
    assert.equal((await link.list(root)).find((e) => e.name === 'dir-link')?.type, 'symlink');
    // Links in earlier components resolve (inside a sandbox they resolve inside its root).
    assert.equal((await link.readFile(`${root}/dir-link/secret`, 100)).toString(), 'secret');
    // Deleting a link removes the link, never its target, even recursively.
    await link.remove(`${root}/dir-link`, true);
    await link.remove(`${root}/file-link`, false);
    assert.equal(readFileSync(`${root}/outside/secret`, 'utf8'), 'secret');
    assert.deepEqual(readdirSync(root), ['outside']);
  });

  test('orphaned grandchildren are reaped', async () => {
    const r = await run(link, ['sh', '-c', 'for i in 1 2 3 4 5; do (sleep 0.5 &); done; sh -c "exit 3" & exit 0']);
    assert.equal(r.exit.code, 0);
    // The orphans were re-parented to the agent (a subreaper when not PID 1) ...
    const orphans = descendantsOf(agent.pid).filter((p) => p.ppid === agent.pid);
    assert.ok(orphans.length >= 5, JSON.stringify(orphans));
    // ... and once they exit, nothing is left behind, not even a <defunct>.
    await waitFor('orphans to exit', () => orphans.every((p) => procStat(p.pid) === null), 5000);
    const zombies = descendantsOf(agent.pid).filter((p) => p.state === 'Z');
    assert.deepEqual(zombies, []);
  });

  test('exec latency: 1000 × /bin/true', async () => {
    const times: number[] = [];
    const spec = execSpec(['/bin/true']);
    for (let i = 0; i < 1000; i++) {
      const t0 = process.hrtime.bigint();
      const exit = await link.exec(spec).done;
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      assert.equal(exit.code, 0);
    }
    times.sort((a, b) => a - b);
    const mem = memoryKb(agent.pid);
    console.log(`# exec round trip /bin/true: p50 ${percentile(times, 50).toFixed(3)} ms, p99 ${percentile(times, 99).toFixed(3)} ms; agent VmRSS ${mem.rss} kB`);
  });

  test('the agent gives memory back when idle', async () => {
    await sleep(1300); // the agent trims after a quiet second
    const { rss, anon } = memoryKb(agent.pid);
    console.log(`# agent idle after all of the above: VmRSS ${rss} kB, of which private ${anon} kB`);
    assert.ok(anon < 512, `idle private memory ${anon} kB`);
    assert.ok(rss < 1024, `idle RSS ${rss} kB`);
  });

  test('misbehaving fake agents are dropped without harming this link or another one', async () => {
    const sock2 = join(dir, 'other.sock');
    const link2 = await AgentLink.listen(sock2, TOKEN);
    try {
      const events: string[] = [];
      link2.on('connected', () => events.push('connected'));
      link2.on('disconnected', () => events.push('disconnected'));

      const oversized = await rawConnect(sock2);
      oversized.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0]));
      await oversized.gone;

      const garbage = await rawConnect(sock2);
      garbage.write(randomBytes(4096));
      await garbage.gone;

      const badToken = await rawConnect(sock2);
      badToken.write(encodeFrame(MsgType.HELLO, 0, encodeHello('not-the-token')));
      await badToken.gone;

      const silent = await rawConnect(sock2);
      const t0 = Date.now();
      await silent.gone;
      assert.ok(Date.now() - t0 < 3500, 'a connection without HELLO must be dropped after ~2 s');

      // Authenticates, then breaks the framing: dropped, link2 reports the disconnect.
      const rogue = await rawConnect(sock2);
      rogue.write(encodeFrame(MsgType.HELLO, 0, encodeHello(TOKEN)));
      await link2.waitConnected(2000);
      const pingFails = assert.rejects(link2.ping(), AgentDisconnectedError);
      rogue.write(Buffer.from([0, 0, 0, 1, 0xaa]));
      await rogue.gone;
      await pingFails;
      assert.equal(link2.connected, false);
      assert.deepEqual(events, ['connected', 'disconnected']);

      // A well-framed but malformed answer for a live exec also drops the connection.
      const rogue2 = await rawConnect(sock2);
      rogue2.write(encodeFrame(MsgType.HELLO, 0, encodeHello(TOKEN)));
      await link2.waitConnected(2000);
      const h = link2.exec(execSpec(['true']));
      const execFails = Promise.all([
        assert.rejects(h.started, AgentDisconnectedError),
        assert.rejects(h.done, AgentDisconnectedError),
      ]);
      await sleep(50);
      rogue2.write(encodeFrame(MsgType.EXIT, h.channel, Buffer.from([1, 2, 3])));
      await execFails;
      await rogue2.gone;

      // Meanwhile the real agent on the first link never noticed.
      assert.equal((await run(link, ['echo', 'still fine'])).stdout, 'still fine\n');

      // A real agent can still use link2, and a second "agent" is then refused.
      const agent2 = startAgent(sock2, TOKEN);
      try {
        await link2.waitConnected(3000);
        const impostor = await rawConnect(sock2);
        impostor.write(encodeFrame(MsgType.HELLO, 0, encodeHello(TOKEN)));
        await impostor.gone;
        assert.equal((await run(link2, ['echo', 'real agent'])).stdout, 'real agent\n');
      } finally {
        await stopAgent(agent2);
      }
    } finally {
      await link2.close();
    }
  });

  test('a fake host sending garbage does not crash the agent; it reconnects', async () => {
    const sock3 = join(dir, 'fake-host.sock');
    const hellos: net.Socket[] = [];
    const evil: Buffer[] = [
      Buffer.from([0xff, 0xff, 0xff, 0xff]), // length beyond the bound
      Buffer.from([0, 0, 0, 2, 1, 2]), // length below the minimum
      encodeFrame(99, 1), // unknown type
      encodeFrame(MsgType.PING, 0), // channel 0
      encodeFrame(MsgType.EXEC, 5, Buffer.from([0, 0, 0, 0, 0, 0])), // truncated EXEC
      Buffer.concat([encodeFrame(MsgType.EXEC, 6, execPayloadWithArgc(0xffffffff))]), // absurd argc
      Buffer.concat([Buffer.from([0x7f]), randomBytes(64 * 1024)]), // random bytes behind an absurd length
    ];
    const conns = new Set<net.Socket>();
    const server = net.createServer((s) => {
      conns.add(s);
      s.on('close', () => conns.delete(s));
      s.on('error', () => {});
      const d = new FrameDecoder();
      s.on('data', (b) => {
        let frames;
        try {
          frames = d.push(b);
        } catch {
          s.destroy();
          return;
        }
        if (frames.some((f) => f.type === MsgType.HELLO)) {
          hellos.push(s);
          const g = evil[hellos.length - 1];
          if (g) s.write(g);
        }
      });
    });
    await new Promise<void>((r) => server.listen(sock3, r));
    const fakeAgent = startAgent(sock3, TOKEN);
    try {
      await waitFor('the agent to reconnect after every kind of garbage', () => hellos.length > evil.length, 10_000);
      assert.ok(isAlive(fakeAgent.pid));
      assert.match(fakeAgent.stderr(), /disconnected/);
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of conns) s.destroy();
      await closed;

      const real = await AgentLink.listen(sock3, TOKEN);
      try {
        await real.waitConnected(3000);
        assert.equal((await run(real, ['echo', 'survived'])).stdout, 'survived\n');
      } finally {
        await real.close();
      }
    } finally {
      server.close();
      for (const s of conns) s.destroy();
      await stopAgent(fakeAgent);
    }
  });
});

describe('link lifecycle', () => {
  const TOKEN = 'lifecycle-' + randomBytes(8).toString('hex');
  let dir: string;
  const agents: RunningAgent[] = [];
  const links: AgentLink[] = [];

  before(() => {
    ensureAgentBuilt();
    dir = makeTmpDir();
  });

  after(async () => {
    for (const l of links) await l.close();
    for (const a of agents) await stopAgent(a);
    if (dir) removeTmpDir(dir);
  });

  test('ops fail at once while disconnected, and in-flight ones fail when the link drops', async () => {
    const sock = join(dir, 'drop.sock');
    const link = await AgentLink.listen(sock, TOKEN);
    links.push(link);
    await assert.rejects(link.ping(), AgentDisconnectedError);
    await assert.rejects(link.exec(execSpec(['true'])).done, AgentDisconnectedError);
    await assert.rejects(link.waitConnected(100), AgentDisconnectedError);

    const agent = startAgent(sock, TOKEN);
    agents.push(agent);
    await link.waitConnected(3000);
    const h = link.exec(execSpec(['sleep', '30']));
    await h.started;
    const disconnected = new Promise<void>((r) => link.once('disconnected', () => r()));
    agent.proc.kill('SIGTERM'); // the agent kills what it started, then exits
    await disconnected;
    await assert.rejects(h.done, AgentDisconnectedError);
    assert.equal(link.connected, false);
    await assert.rejects(link.stat('/'), AgentDisconnectedError);
  });

  test('the agent reconnects to a new link on the same path; processes survive', async () => {
    const sock = join(dir, 'reconnect.sock');
    const link1 = await AgentLink.listen(sock, TOKEN);
    links.push(link1);
    const agent = startAgent(sock, TOKEN);
    agents.push(agent);
    await link1.waitConnected(3000);
    const bg = link1.exec(execSpec(['sleep', '30'], { background: true }));
    const pid = await bg.started;
    await link1.close();
    await assert.rejects(bg.done, AgentDisconnectedError);
    assert.equal(link1.connected, false);

    const link2 = await AgentLink.listen(sock, TOKEN);
    links.push(link2);
    await link2.waitConnected(3000);
    assert.equal((await run(link2, ['echo', 'again'])).stdout, 'again\n');
    const ps = await link2.ps();
    // Channels belong to a connection: the survivor is listed, no longer tied to one.
    assert.deepEqual(ps.find((p) => p.pid === pid), { pid, channel: 0, cmdline: ['sleep', '30'] });
    await link2.killPid(pid, 9);
    await waitFor('the old background process to be reaped', () => procStat(pid) === null);
  });

  test('an agent with the wrong token is never accepted', async () => {
    const sock = join(dir, 'wrong.sock');
    const link = await AgentLink.listen(sock, TOKEN);
    links.push(link);
    const agent = startAgent(sock, 'wrong-token');
    agents.push(agent);
    await assert.rejects(link.waitConnected(1500), AgentDisconnectedError);
    assert.equal(link.connected, false);
    assert.ok(isAlive(agent.pid), 'the agent keeps retrying');
  });

  test('as PID 1 of a pid namespace: reaps, lists all, cannot be stopped from inside', { skip: !canUnshare() && 'needs root and unshare' }, async () => {
    const sock = join(dir, 'init.sock');
    const link = await AgentLink.listen(sock, TOKEN);
    links.push(link);
    const ns = startAgentAsInit(sock, TOKEN);
    agents.push(ns);
    await link.waitConnected(3000);
    const agentHostPid = descendantsOf(ns.pid).find((p) => p.ppid === ns.pid)!.pid;

    const inside = await run(link, ['sh', '-c', 'echo $$; tr "\\0" "\\n" < /proc/1/environ']);
    assert.ok(Number(inside.stdout.split('\n')[0]) > 1);
    assert.ok(!inside.stdout.includes(TOKEN), 'the token is readable in /proc/1/environ');

    const bg = link.exec(execSpec(['sleep', '30'], { background: true }));
    const bgPid = await bg.started;
    await run(link, ['sh', '-c', '(sleep 0.3 &); (sleep 0.3 &); exit 0']);
    const ps = await link.ps();
    assert.ok(!ps.some((p) => p.pid === 1), 'ps lists the agent');
    assert.deepEqual(ps.find((p) => p.pid === bgPid), { pid: bgPid, channel: bg.channel, cmdline: ['sleep', '30'] });
    await waitFor('orphans to go', async () => !(await link.ps()).some((p) => p.cmdline[1] === '0.3'));
    assert.deepEqual(descendantsOf(ns.pid).filter((p) => p.state === 'Z'), []);

    // Code in the sandbox cannot stop its agent, whatever it sends to PID 1.
    const attack = await run(link, ['sh', '-c', 'kill -TERM 1; kill -INT 1; kill -HUP 1; kill -KILL 1; echo sent']);
    assert.equal(attack.stdout, 'sent\n');
    await sleep(100);
    await link.ping();
    await rejectsWithErrno(link.killPid(1, 9), 1 /* EPERM */);

    // SIGTERM from outside the sandbox does stop it, and the kernel takes everything along.
    const gone = new Promise<void>((r) => link.once('disconnected', () => r()));
    process.kill(agentHostPid, 'SIGTERM');
    await gone;
    await assert.rejects(bg.done, AgentDisconnectedError);
    await waitFor('the namespace to empty', () => descendantsOf(ns.pid).length === 0);
  });

  test('listen refuses to replace something that is not a socket', async () => {
    const path = join(dir, 'regular-file');
    writeFileSync(path, 'keep me');
    await assert.rejects(AgentLink.listen(path, TOKEN), /not a socket/);
    assert.equal(readFileSync(path, 'utf8'), 'keep me');
  });
});

function readCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
  } catch {
    return [];
  }
}

/** An EXEC payload whose argc claims far more strings than the frame holds. */
function execPayloadWithArgc(argc: number): Buffer {
  const b = Buffer.alloc(4 * 4 + 2 + 4 + 4);
  b.write('/', 16);
  b.writeUInt32BE(argc, 18);
  return b;
}
