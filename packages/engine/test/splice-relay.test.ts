import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pipeInNode, resumeReading, SpliceRelay, type Handoff as Handed, type RelayResult } from '../src/network/splice-relay.js';

const BINARY = fileURLToPath(new URL('../../../../agent/build/airlock-splice', import.meta.url));
const HOST = '127.0.0.1';
const MiB = 1 << 20;

/** Every server and socket a test opened, closed at the end whatever happened. */
const servers = new Set<net.Server>();
const sockets = new Set<net.Socket>();
function track<S extends net.Socket>(s: S): S {
  sockets.add(s);
  s.once('close', () => sockets.delete(s));
  s.on('error', () => {}); // resets are expected here; tests that check them listen too
  return s;
}

async function listen(onConnection: (s: net.Socket) => void, options: net.ServerOpts = {}): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true, ...options }, (s) => onConnection(track(s)));
  servers.add(server);
  server.listen(0, HOST);
  await once(server, 'listening');
  return (server.address() as net.AddressInfo).port;
}

function connect(port: number): net.Socket {
  return track(net.connect({ host: HOST, port, allowHalfOpen: true }));
}

type Relayer = (client: net.Socket, upstream: net.Socket) => void;

/**
 * A stand-in for the egress proxy: accepts paused (like it), dials the server, then relays.
 * `sniff`: reads the client's first bytes and puts them back (they sit in Node's buffer at the
 * handoff); `greeting`: writes that to the client first (still in flight at the handoff).
 */
async function proxy(serverPort: number, relay: Relayer, o: { sniff?: boolean; greeting?: Buffer; unflushed?: number[] } = {}): Promise<number> {
  return listen((client) => {
    client.on('error', () => {});
    const dial = (): void => {
      const upstream = connect(serverPort);
      upstream.on('error', () => {});
      upstream.once('connect', () => {
        if (o.greeting) client.write(o.greeting);
        o.unflushed?.push(client.writableLength);
        relay(client, upstream);
      });
    };
    if (!o.sniff) { dial(); return; }
    client.resume();
    client.once('data', (first: Buffer) => {
      client.pause();
      client.unshift(first);
      dial();
    });
  }, { pauseOnConnect: true });
}


/** A relay that records each handoff; next() yields them in order, waiting for one if need be. */
function spliced(relay: SpliceRelay): { relayer: Relayer; handoffs: Handed[]; next(): Promise<Handed> } {
  const handoffs: Handed[] = [];
  const waiters = new Map<number, (h: Handed) => void>();
  let taken = 0;
  return {
    handoffs,
    relayer: (client, upstream) => {
      const h = relay.handOff(client, upstream);
      h.done.catch(() => {}); // each test awaits the outcomes it checks
      handoffs.push(h);
      waiters.get(handoffs.length - 1)?.(h);
    },
    next: () => {
      const i = taken++;
      const h = handoffs[i];
      return h ? Promise.resolve(h) : new Promise((resolve) => waiters.set(i, resolve));
    },
  };
}

/** Reads a socket to its end; never rejects (an error ends the read). */
function drain(s: net.Socket, hashed = true): Promise<{ bytes: number; sha: string; error: NodeJS.ErrnoException | null }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let error: NodeJS.ErrnoException | null = null;
  s.on('data', (c: Buffer) => { bytes += c.length; if (hashed) hash.update(c); });
  s.on('error', (e) => { error = e; });
  return new Promise((resolve) => {
    const finish = (): void => resolve({ bytes, sha: hash.digest('hex'), error });
    s.once('end', finish);
    s.once('close', () => { if (!s.readableEnded) finish(); });
  });
}

const sha = (...parts: Buffer[]): string => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function closedWith(s: net.Socket): Promise<string | null> {
  let code: string | null = null;
  s.on('error', (e: NodeJS.ErrnoException) => { code = e.code ?? e.message; });
  // Not events.once: it would reject on the very 'error' this waits to see.
  return s.closed ? Promise.resolve(code) : new Promise((resolve) => s.once('close', () => resolve(code)));
}

let relay: SpliceRelay;
let baselineFds = 0;

before(async () => {
  relay = await SpliceRelay.start(BINARY);
  baselineFds = fdCount(relay.pid);
});

after(async () => {
  for (const s of sockets) s.destroy();
  for (const srv of servers) srv.close();
  await relay?.close();
});

test('relays 64 MiB each way intact, with half-close, Node-buffered and in-flight bytes', async () => {
  const up = randomBytes(64 * MiB);
  const down = randomBytes(64 * MiB);
  // Larger than the kernel takes at once: part of it is still in Node at the handoff.
  const greeting = randomBytes(32 * MiB);
  const unflushed: number[] = [];
  const server = { got: null as Promise<{ bytes: number; sha: string }> | null, sawEndFirst: false };
  const serverPort = await listen((s) => {
    server.got = drain(s).then((r) => {
      // The client's EOF reached us while our direction was still open: answer only now.
      server.sawEndFirst = !s.writableEnded && !s.destroyed;
      s.end(down);
      return r;
    });
  });
  const sp = spliced(relay);
  const port = await proxy(serverPort, sp.relayer, { sniff: true, greeting, unflushed });
  const client = connect(port);
  const clientGot = drain(client);
  client.end(up);
  const h = await sp.next();
  const [got, result] = await Promise.all([clientGot, h.done]);
  assert.ok(server.got);
  const atServer = await server.got;
  assert.equal(atServer.bytes, up.length);
  assert.equal(atServer.sha, sha(up));
  assert.ok(server.sawEndFirst);
  assert.ok(unflushed[0]! > 0, 'the greeting was still being written at the handoff');
  assert.equal(got.bytes, greeting.length + down.length);
  assert.equal(got.sha, sha(greeting, down));
  assert.equal(got.error, null);
  // The greeting was the proxy's own write, not relayed; every relayed byte is counted.
  assert.deepEqual(result, { aToB: up.length, bToA: down.length, reset: false });
  assert.equal(relay.active, 0);
});

test('relays both directions at once', async () => {
  const up = randomBytes(16 * MiB);
  const down = randomBytes(16 * MiB);
  const serverGot: Array<Promise<{ bytes: number; sha: string }>> = [];
  const serverPort = await listen((s) => { serverGot.push(drain(s)); s.end(down); });
  const sp = spliced(relay);
  const port = await proxy(serverPort, sp.relayer);
  const client = connect(port);
  const clientGot = drain(client);
  client.end(up);
  const h = await sp.next();
  const [got, result] = await Promise.all([clientGot, h.done]);
  const atServer = await serverGot[0]!;
  assert.equal(atServer.sha, sha(up));
  assert.equal(got.sha, sha(down));
  assert.deepEqual(result, { aToB: up.length, bToA: down.length, reset: false });
});

async function established(relayer: Relayer, sp: ReturnType<typeof spliced>): Promise<{ client: net.Socket; server: net.Socket; h: Handed }> {
  let serverSocket: net.Socket | null = null;
  const serverPort = await listen((s) => {
    serverSocket = s;
    s.once('data', () => s.write('pong'));
  });
  const port = await proxy(serverPort, relayer);
  const client = connect(port);
  client.write('ping');
  await once(client, 'data');
  assert.ok(serverSocket);
  return { client, server: serverSocket, h: await sp.next() };
}

test('a reset on one side resets the other', async () => {
  for (const resetter of ['client', 'server'] as const) {
    const sp = spliced(relay);
    const { client, server, h } = await established(sp.relayer, sp);
    const other = resetter === 'client' ? server : client;
    const otherClosed = closedWith(other);
    (resetter === 'client' ? client : server).resetAndDestroy();
    assert.equal(await otherClosed, 'ECONNRESET', `${resetter} reset`);
    assert.deepEqual(await h.done, { aToB: 4, bToA: 4, reset: true });
  }
});

test('cut() resets both sides at once', async () => {
  const sp = spliced(relay);
  const { client, server, h } = await established(sp.relayer, sp);
  const clientClosed = closedWith(client);
  const serverClosed = closedWith(server);
  h.cut();
  assert.deepEqual(await h.done, { aToB: 4, bToA: 4, reset: true });
  assert.equal(await clientClosed, 'ECONNRESET');
  assert.equal(await serverClosed, 'ECONNRESET');
  h.cut(); // after the end: nothing
});

test('cut() before the daemon took the sockets resets both in Node', async () => {
  const serverPort = await listen((s) => { s.on('data', () => {}); });
  const sp = spliced(relay);
  let cutAtOnce: Handed | null = null;
  const port = await proxy(serverPort, (client, upstream) => {
    const h = relay.handOff(client, upstream);
    h.cut(); // still preparing: Node owns the sockets
    cutAtOnce = h;
    sp.relayer(client, upstream); // a second handoff of the same sockets fails: they are gone
  });
  const client = connect(port);
  const clientClosed = closedWith(client);
  client.write('x');
  const second = await sp.next();
  assert.ok(cutAtOnce);
  assert.deepEqual(await (cutAtOnce as Handed).done, { aToB: 0, bToA: 0, reset: true });
  await assert.rejects(second.done);
  assert.equal(await clientClosed, 'ECONNRESET');
});

test('close() resets what is relayed, settles it, and refuses later handoffs', async () => {
  const closing = await SpliceRelay.start(BINARY);
  const sp = spliced(closing);
  const { client, server, h } = await established(sp.relayer, sp);
  const serverPort = server.localPort!;
  const clientClosed = closedWith(client);
  const serverClosed = closedWith(server);
  await closing.close();
  assert.deepEqual(await h.done, { aToB: 4, bToA: 4, reset: true });
  assert.equal(await clientClosed, 'ECONNRESET');
  assert.equal(await serverClosed, 'ECONNRESET');
  const a = connect(serverPort);
  const b = connect(serverPort);
  await Promise.all([once(a, 'connect'), once(b, 'connect')]);
  await assert.rejects(closing.handOff(a, b).done, /not running/);
});

test('200 concurrent connections all relay and end', async () => {
  const serverPort = await listen((s) => {
    s.on('data', (c: Buffer) => s.write(c));
    s.on('end', () => s.end());
  });
  const sp = spliced(relay);
  const port = await proxy(serverPort, sp.relayer);
  const runs = Array.from({ length: 200 }, async (_, i) => {
    const payload = randomBytes(1000 + i * 97);
    const client = connect(port);
    const got = drain(client);
    client.end(payload);
    const r = await got;
    assert.equal(r.sha, sha(payload));
    return payload.length;
  });
  const sizes = await Promise.all(runs);
  const results = await Promise.all(sp.handoffs.map((h) => h.done));
  assert.equal(results.length, 200);
  const expected = sizes.slice().sort((x, y) => x - y);
  const relayed = results.map((r) => { assert.equal(r.aToB, r.bToA); return r.aToB; }).sort((x, y) => x - y);
  assert.deepEqual(relayed, expected);
  assert.equal(relay.active, 0);
});

test('one way: the daemon relays server to client while Node keeps writing the other direction', async () => {
  const down = randomBytes(48 * MiB);
  let serverSocket: net.Socket | null = null;
  const requests: string[] = [];
  const serverPort = await listen((s) => {
    serverSocket = s;
    s.setEncoding('latin1');
    // Each "request" line is answered with 16 MiB; EOF from the client ends the stream.
    let buf = '';
    let sent = 0;
    s.on('data', (t: string) => {
      buf += t;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        requests.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        s.write(down.subarray(sent, sent + 16 * MiB));
        sent += 16 * MiB;
      }
    });
    s.on('end', () => s.end());
  });
  let handoff: Handed | null = null;
  let upstreamOfProxy: net.Socket | null = null;
  const port = await proxy(serverPort, (client, upstream) => {
    upstreamOfProxy = upstream;
    // Node passes the client's bytes on itself (the egress proxy checks each request there)...
    client.on('data', (d: Buffer) => upstream.write(d));
    client.on('end', () => upstream.end());
    client.resume();
    // ...and hands the server's direction over once it has seen some of it.
    upstream.once('data', (first: Buffer) => {
      client.write(first);
      handoff = relay.handOffOneWay(upstream, client);
    });
  }, { sniff: true });
  const client = connect(port);
  const got = drain(client);
  client.write('one\n');
  await new Promise((r) => setTimeout(r, 50));
  client.write('two\n');
  await new Promise((r) => setTimeout(r, 50));
  client.end('three\n'); // Node passes the EOF on; the server ends; the daemon passes that on
  const result = await got;
  assert.equal(result.error, null);
  assert.equal(result.sha, sha(down));
  assert.deepEqual(requests, ['one', 'two', 'three']);
  const r = await (handoff as unknown as Handed).done;
  assert.equal(r.reset, false);
  assert.equal(r.bToA, 0);
  assert.ok(r.aToB > 0 && r.aToB <= down.length, String(r.aToB));
  // Node still holds its copies (the daemon's are closed): closing them is the caller's job.
  assert.equal((upstreamOfProxy as unknown as net.Socket).destroyed, false);
  (upstreamOfProxy as unknown as net.Socket).destroy();
  assert.ok(serverSocket);
});

test('one way: a reset is reported, and cut() leaves Node\'s sockets to the caller', async () => {
  const serverSide: net.Socket[] = [];
  const serverPort = await listen((s) => { serverSide.push(s); s.on('data', () => s.write('x'.repeat(1000))); });
  for (const how of ['server-reset', 'cut'] as const) {
    let picked: { client: net.Socket; upstream: net.Socket; h: Handed } | null = null;
    const port = await proxy(serverPort, (client, upstream) => {
      client.on('data', (d: Buffer) => upstream.write(d));
      client.resume();
      picked = { client, upstream, h: relay.handOffOneWay(upstream, client) };
    });
    const client = connect(port);
    const closed = closedWith(client);
    client.write('go');
    await once(client, 'data');
    const { h, client: nodeClient, upstream } = picked as unknown as { client: net.Socket; upstream: net.Socket; h: Handed };
    if (how === 'cut') {
      h.cut();
      // The caller still holds its copies: the client sees nothing until they go.
      assert.equal((await h.done).reset, true);
      assert.equal(client.destroyed, false);
    } else {
      serverSide.at(-1)!.resetAndDestroy();
      assert.equal((await h.done).reset, true);
    }
    nodeClient.resetAndDestroy();
    upstream.resetAndDestroy();
    assert.equal(await closed, 'ECONNRESET', how);
  }
});

test('counted: exactly the count goes by the relay, what follows is Node\'s again; an early EOF is left for Node', async () => {
  // The server keeps everything it is sent; the client's EOF (passed on by Node) ends that.
  const received: Array<Promise<Buffer>> = [];
  const serverPort = await listen((s) => {
    received.push(new Promise((resolve) => {
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => { resolve(Buffer.concat(parts)); s.end(); });
    }));
  });
  const body = randomBytes(3 * MiB + 11);
  const tail = Buffer.from('GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n');
  for (const how of ['count', 'eof', 'cut'] as const) {
    let picked: { client: net.Socket; upstream: net.Socket; h: Handed } | null = null;
    const nodeSaw: Buffer[] = [];
    const port = await proxy(serverPort, (client, upstream) => {
      // Paused since accept, nothing read: all of it is the relay's up to the count.
      picked = { client, upstream, h: relay.handOffCounted(client, upstream, body.length) };
    });
    const client = connect(port);
    await once(client, 'connect');
    // In one write: the count ends mid-stream, and the relay must not take a byte past it.
    if (how === 'count') client.end(Buffer.concat([body, tail]));
    else if (how === 'eof') client.end(body.subarray(0, MiB));
    else client.write(body.subarray(0, 1000));
    while (!picked) await new Promise((r) => setTimeout(r, 5));
    const { h, client: nodeClient, upstream } = picked as { client: net.Socket; upstream: net.Socket; h: Handed };
    if (how === 'cut') {
      await new Promise((r) => setTimeout(r, 50));
      h.cut();
      const r = await h.done;
      assert.equal(r.reset, true);
      nodeClient.resetAndDestroy();
      upstream.resetAndDestroy();
      client.destroy();
      continue;
    }
    const r = await h.done;
    assert.equal(r.reset, false, how);
    assert.equal(r.aToB, how === 'count' ? body.length : MiB, how);
    assert.equal(r.eof === true, how === 'eof', how);
    // Node reads on from exactly where the relay stopped, and passes the rest itself.
    nodeClient.on('data', (d: Buffer) => { nodeSaw.push(d); upstream.write(d); });
    nodeClient.on('end', () => upstream.end());
    resumeReading(nodeClient);
    const atServer = await received.at(-1)!;
    assert.deepEqual(Buffer.concat(nodeSaw), how === 'count' ? tail : Buffer.alloc(0), how);
    assert.equal(sha(atServer), sha(how === 'count' ? Buffer.concat([body, tail]) : body.subarray(0, MiB)), how);
    nodeClient.destroy();
    upstream.destroy();
    client.destroy();
  }
});

test('a handoff that cannot happen rejects and destroys both sockets', async () => {
  const serverPort = await listen(() => {});
  const a = connect(serverPort);
  await once(a, 'connect');
  const b = connect(serverPort);
  await once(b, 'connect');
  b.destroy();
  const { done } = relay.handOff(a, b);
  await assert.rejects(done, /not connected/);
  assert.ok(a.destroyed);
});

test('the daemon reports bad commands and keeps going', async () => {
  const serverPort = await listen(() => {});
  const a = connect(serverPort);
  const b = connect(serverPort);
  await Promise.all([once(a, 'connect'), once(b, 'connect')]);
  const fdOf = (s: net.Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;
  const inoOf = (s: net.Socket): string => /\[(\d+)\]/.exec(readlinkSync(`/proc/self/fd/${fdOf(s)}`))![1]!;
  const child = spawn(BINARY, [String(process.pid)], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    let out = '';
    child.stdout.setEncoding('ascii');
    child.stdout.on('data', (t: string) => { out += t; });
    const lines = [
      'hello', 'ADD 1 2', 'ADD x 3 4', 'ADD 01 3 4', 'ADD 2 -1 4', 'ADD 3 5 5', 'CUT 77',
      `ADD 4 ${'9'.repeat(400)}`, 'ADD 5 0 1', 'ADD 6 99999 99998', '\u0001\u00ff',
      'ADD 7 3 4 5', 'ADD 8 3 4 0 1',
      `ADD 9 ${fdOf(a)} ${fdOf(b)} 1 1`,
      `ADD 10 ${fdOf(a)} ${fdOf(b)} ${inoOf(a)} ${inoOf(b)}`,
      `ADD 10 ${fdOf(a)} ${fdOf(b)}`,
      'ADDN 11 3 4',
      `ADDN 12 ${fdOf(a)} ${fdOf(b)} ${inoOf(a)} ${inoOf(b)} 0`,
      `ADDN 13 ${fdOf(a)} ${fdOf(b)} ${inoOf(a)} ${inoOf(b)} -5`,
      `ADDN 14 ${fdOf(a)} ${fdOf(b)} ${inoOf(a)} ${inoOf(b)} ${'9'.repeat(21)}`,
      `ADDN 15 ${fdOf(a)} ${fdOf(b)} ${inoOf(a)} ${inoOf(b)} 5`,
      'CUT 15',
      'CUT 10',
    ];
    child.stdin.end(lines.join('\n') + '\n');
    const [code] = await once(child, 'close');
    assert.equal(code, 0);
    assert.deepEqual(out.trim().split('\n'), [
      'READY',
      'ERR - bad command',
      'ERR 1 bad command',
      'ERR - bad command',
      'ERR - bad command',
      'ERR 2 bad descriptor',
      'ERR 3 the same descriptor twice',
      'ERR 77 unknown id',
      'ERR - line too long',
      'ERR 5 not a TCP socket', // this process's stdin/stdout
      'ERR 6 pidfd_getfd: Bad file descriptor',
      'ERR - bad command',
      'ERR 7 bad command',
      'ERR 8 bad inode',
      'ERR 9 not the socket named',
      'OK 10',
      'ERR 10 duplicate id',
      'ERR 11 bad command',
      'ERR 12 bad count',
      'ERR 13 bad count',
      'ERR 14 bad count',
      'OK 15',
      'DONE 15 0 0 reset',
      'DONE 10 0 0 reset',
    ]);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

/** Receive-buffer sizes (skmem rb) of the sockets the daemon holds, from the kernel (ss). */
function relayReceiveBuffers(pid: number): number[] {
  const out = execFileSync('ss', ['-tmpH', 'state', 'established'], { encoding: 'utf8' });
  const sizes: number[] = [];
  // Each socket: a line with users:((...,pid=N,fd=M),...), then an indented skmem:(r0,rbSIZE,...) line.
  const lines = out.split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    if (!lines[i]!.includes(`pid=${pid},`)) continue;
    const rb = /skmem:\(r\d+,rb(\d+),/.exec(lines[i + 1]!);
    if (rb) sizes.push(Number(rb[1]));
  }
  return sizes;
}

test('relayed sockets with a short round trip get a fixed 8 MiB receive buffer, at most 64 at a time; the budget comes back', async () => {
  const BIG = 8 * MiB;
  const sp = spliced(relay);
  const conns: Array<Awaited<ReturnType<typeof established>>> = [];
  try {
    for (let i = 0; i < 33; i++) conns.push(await established(sp.relayer, sp));
    const sizes = relayReceiveBuffers(relay.pid);
    assert.equal(sizes.length, 66, 'the daemon holds both sockets of 33 connections');
    assert.equal(sizes.filter((rb) => rb === BIG).length, 64, `receive buffers: ${sizes.join(',')}`);
  } finally {
    for (const c of conns) c.h.cut();
    await Promise.all(conns.map((c) => c.h.done.catch(() => {})));
  }
  const again = await established(sp.relayer, sp);
  assert.deepEqual(relayReceiveBuffers(relay.pid), [BIG, BIG], 'a connection after the others ended gets the big buffers');
  again.h.cut();
  await again.h.done.catch(() => {});
});

test('a socket whose round trip is not short keeps autotuning its receive buffer', async (t) => {
  // Every real round trip counts as long for this daemon (threshold 1 µs).
  process.env['AIRLOCK_SPLICE_SHORT_RTT_US'] = '1';
  let other: SpliceRelay;
  try {
    other = await SpliceRelay.start(BINARY);
  } finally {
    delete process.env['AIRLOCK_SPLICE_SHORT_RTT_US'];
  }
  t.after(() => other.close());
  const sp = spliced(other);
  const c = await established(sp.relayer, sp);
  try {
    const sizes = relayReceiveBuffers(other.pid);
    assert.equal(sizes.length, 2);
    assert.ok(sizes.every((rb) => rb !== 8 * MiB), `receive buffers: ${sizes.join(',')}`);
  } finally {
    c.h.cut();
    await c.h.done.catch(() => {});
  }
});

test('the daemon holds no descriptor of a finished connection', () => {
  assert.equal(relay.active, 0);
  assert.equal(fdCount(relay.pid), baselineFds);
});

test('a killed daemon settles what it relayed and refuses new handoffs', async (t) => {
  const mortal = await SpliceRelay.start(BINARY);
  t.after(() => mortal.close());
  let serverBytes = 0;
  let serverSocket: net.Socket | null = null;
  const serverPort = await listen((s) => {
    serverSocket = s;
    s.on('data', (c: Buffer) => { serverBytes += c.length; });
    s.on('end', () => s.end());
    s.on('error', () => {});
  });
  const sp = spliced(mortal);
  const port = await proxy(serverPort, sp.relayer);
  const client = connect(port);
  client.on('error', () => {});
  const chunk = Buffer.alloc(MiB, 7);
  const pump = (): void => { while (!client.destroyed && client.write(chunk)); };
  client.on('drain', pump);
  pump();
  const h = await sp.next();
  while (serverBytes < 8 * MiB) await new Promise((r) => setTimeout(r, 5));
  const clientClosed = closedWith(client);
  process.kill(mortal.pid, 'SIGKILL');
  const result: RelayResult = await h.done; // settles, with what Node knows
  assert.equal(typeof result.aToB, 'number');
  await clientClosed;
  assert.ok(serverSocket);
  await closedWith(serverSocket);
  assert.equal(mortal.active, 0);
  const a = connect(serverPort);
  const b = connect(serverPort);
  await Promise.all([once(a, 'connect'), once(b, 'connect')]);
  await assert.rejects(mortal.handOff(a, b).done, /not running/);
  assert.ok(a.destroyed && b.destroyed);
});

test('pipeInNode relays both ways with half-close and counts bytes', async () => {
  const up = randomBytes(8 * MiB);
  const down = randomBytes(8 * MiB);
  const seen = { server: null as Promise<{ sha: string }> | null, piped: null as Promise<RelayResult> | null };
  const serverPort = await listen((s) => {
    seen.server = drain(s).then((r) => { s.end(down); return r; });
  });
  const port = await proxy(serverPort, (c, u) => { seen.piped = pipeInNode(c, u); }, { sniff: true });
  const client = connect(port);
  const clientGot = drain(client);
  client.end(up);
  const got = await clientGot;
  assert.equal(got.sha, sha(down));
  assert.ok(seen.server && seen.piped);
  assert.equal((await seen.server).sha, sha(up));
  assert.deepEqual(await seen.piped, { aToB: up.length, bToA: down.length });
});

test('throughput: 1 GiB direct vs splice relay vs pipeInNode (logged, not asserted)', async () => {
  const total = 1024 * MiB;
  const chunk = Buffer.alloc(4 * MiB, 1);
  const sinkPort = await listen((s) => { s.resume(); s.on('end', () => s.end()); });
  const send = async (port: number): Promise<number> => {
    const started = process.hrtime.bigint();
    const client = connect(port);
    const got = drain(client, false);
    await once(client, 'connect');
    for (let sent = 0; sent < total; sent += chunk.length) {
      if (!client.write(chunk)) await once(client, 'drain');
    }
    client.end();
    await got; // the sink ends after it read everything
    return Number(process.hrtime.bigint() - started) / 1e9;
  };
  const sp = spliced(relay);
  const relayPort = await proxy(sinkPort, sp.relayer);
  const nodePort = await proxy(sinkPort, (c, u) => { void pipeInNode(c, u); });
  const rate = (s: number): string => `${(total / MiB / s).toFixed(0)} MiB/s`;
  const direct = await send(sinkPort);
  const spliceS = await send(relayPort);
  const inNode = await send(nodePort);
  assert.equal((await sp.handoffs[0]!.done).aToB, total);
  console.log(`1 GiB over loopback: direct ${rate(direct)}, splice relay ${rate(spliceS)} (${(direct / spliceS).toFixed(2)}x), ` +
    `pipeInNode ${rate(inNode)} (${(direct / inNode).toFixed(2)}x)`);
});
