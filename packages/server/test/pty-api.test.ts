/**
 * WS /v1/sandboxes/:id/pty over a real WebSocket, a real server and real sandboxes: auth and
 * errors before the upgrade, input, resize, signals, malformed control messages, the exit
 * frame, and a client that leaves.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { ApiClient, ApiError, Sandbox, openPty } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, waitFor, type TestServer } from './helpers.js';

let s: TestServer;
let sandboxId = '';

before(async () => {
  s = await startTestServer();
  const res = await s.api('/v1/sandboxes', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template: TEMPLATE, timeoutSeconds: 300 }),
  });
  assert.equal(res.status, 201);
  sandboxId = (await json(res)).id;
});

after(async () => {
  const t0 = Date.now();
  await s?.close();
  // Upgraded and refused sockets are the HTTP server's no longer: one left open would hold close() up.
  assert.ok(Date.now() - t0 < 10_000, `server close took ${Date.now() - t0} ms`);
});

/** `serverClosed`: the server closed the connection after its answer (a refused upgrade must not linger). */
type Refused = { status: number; body: any; serverClosed: boolean };
type Session = ReturnType<typeof session>;

/**
 * Opens the WebSocket; resolves with the session, or with the HTTP answer that refused the
 * upgrade. Messages are collected from the start: the first may come in the same read as the upgrade.
 */
function connect(path: string, key: string | null = s.key): Promise<Session | Refused> {
  const url = s.url.replace(/^http/, 'ws') + path;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: key === null ? {} : { authorization: `Bearer ${key}` } });
    const sess = session(ws);
    ws.once('open', () => resolve(sess));
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      const socketClosed = new Promise<boolean>((r) => {
        const timer = setTimeout(() => r(false), 5000);
        res.socket.once('close', () => { clearTimeout(timer); r(true); });
      });
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', async () => {
        const serverClosed = await socketClosed;
        ws.terminate();
        let body: unknown = text;
        try { body = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode ?? 0, body, serverClosed });
      });
    });
    ws.once('error', reject);
  });
}

/** A connected session: collected output and messages, and waiters on them. */
function session(ws: WebSocket) {
  let output = '';
  const texts: any[] = [];
  const listeners = new Set<() => void>();
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (isBinary) output += data.toString('utf8');
    else texts.push(JSON.parse(data.toString('utf8')));
    for (const l of [...listeners]) l();
  });
  const until = <T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 15_000): Promise<T> =>
    new Promise((resolve, reject) => {
      const check = () => {
        const v = probe();
        if (!v) return;
        listeners.delete(check);
        clearTimeout(timer);
        resolve(v);
      };
      const timer = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`timed out waiting for ${what}; output ${JSON.stringify(output.slice(-500))}, messages ${JSON.stringify(texts)}`));
      }, timeoutMs);
      listeners.add(check);
      check();
    });
  return {
    ws,
    closed,
    get output() { return output; },
    texts,
    output$: (re: RegExp, from = 0) => until(`output ${re}`, () => output.slice(from).match(re)),
    message: (type: string, nth = 0) => until(`a ${type} message`, () => texts.filter((t) => t.type === type)[nth]),
    input: (text: string) => ws.send(Buffer.from(text), { binary: true }),
    control: (msg: unknown) => ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg)),
  };
}

async function open(query: string) {
  const sess = await connect(`/v1/sandboxes/${sandboxId}/pty${query}`);
  assert.ok('ws' in sess, `upgrade refused: ${JSON.stringify(sess)}`);
  const started = await sess.message('started');
  assert.ok(started.pid > 1);
  assert.match(started.execId, new RegExp(`^${sandboxId}-`));
  return sess;
}

describe('WS /v1/sandboxes/:id/pty', () => {
  test('errors come before the upgrade, as HTTP', async () => {
    const path = `/v1/sandboxes/${sandboxId}/pty`;
    const noKey = await connect(path, null) as Refused;
    assert.equal(noKey.status, 401);
    assert.equal(noKey.body.error.code, 'unauthorized');
    assert.ok(noKey.serverClosed, 'the server closes a refused upgrade\'s connection (else it holds close() up)');
    assert.equal((await connect(path, 'wrong-key') as Refused).status, 401);

    const unknown = await connect('/v1/sandboxes/zzzzzzzzzzzz/pty') as Refused;
    assert.equal(unknown.status, 404);
    assert.ok(unknown.serverClosed);
    assert.equal(unknown.body.error.code, 'not_found');

    for (const q of ['?cols=0', '?rows=1001', '?cols=abc', '?cwd=relative', '?env=no-equals', '?bogus=1', '?cmd=']) {
      const bad = await connect(path + q) as Refused;
      assert.equal(bad.status, 400, q);
      assert.equal(bad.body.error.code, 'bad_request', q);
    }

    const plain = await s.api(path);
    assert.equal(plain.status, 426);
    assert.equal((await json(plain)).error.code, 'upgrade_required');

    const created = await json(await s.api('/v1/sandboxes', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template: TEMPLATE }),
    }));
    await s.api(`/v1/sandboxes/${created.id}`, { method: 'DELETE' });
    const ended = await connect(`/v1/sandboxes/${created.id}/pty`) as Refused;
    assert.equal(ended.status, 409);
    assert.equal(ended.body.error.code, 'conflict');
  });

  test('a shell: input, output, resize, malformed control frames, exit frame, close 1000', async () => {
    const t = await open('?cols=100&rows=30&cmd=/bin/sh&env=GREETING=hi%20there');
    t.input('tty; stty size; echo "$GREETING $TERM"\r');
    await t.output$(/\/dev\/pts\/\d+\r\n30 100\r\nhi there xterm-256color\r\n/);

    t.control({ type: 'resize', cols: 120, rows: 40 });
    let mark = t.output.length;
    t.input('stty size\r');
    await t.output$(/\b40 120\r\n/, mark);

    t.control('not json');
    t.control({ type: 'resize', cols: 0, rows: 10 });
    t.control({ type: 'launch', what: 'rockets' });
    t.control({ type: 'signal', signal: 'NOPE' });
    t.control({ type: 'resize', cols: 10, rows: 10, extra: true });
    t.control('x'.repeat(5000));
    const errors = await Promise.all([0, 1, 2, 3, 4, 5].map((n) => t.message('error', n)));
    for (const e of errors) assert.equal(e.error.code, 'bad_request');

    mark = t.output.length;
    t.input('echo still-alive\r');
    await t.output$(/still-alive\r\n[^]*$/, mark);

    t.input('exit 3\r');
    const exit = await t.message('exit');
    assert.equal(exit.exitCode, 3);
    assert.equal(exit.reason, 'exited');
    assert.equal(typeof exit.durationMs, 'number');
    const closed = await t.closed;
    assert.equal(closed.code, 1000);

    const events = await json(await s.api(`/v1/events?sandbox=${sandboxId}`));
    const mine = events.events.filter((e: any) => e.data.execId === t.texts[0].execId);
    assert.deepEqual(mine.map((e: any) => [e.type, e.data.pty]), [['exec.started', true], ['exec.exited', true]]);
  });

  test('a signal control message reaches the process group', async () => {
    const t = await open('?cmd=sleep&cmd=100');
    t.control({ type: 'signal', signal: 'INT' });
    const exit = await t.message('exit');
    assert.equal(exit.exitCode, 130);
    assert.equal(exit.signal, 2);
    assert.equal((await t.closed).code, 1000);

    const u = await open('?cmd=sleep&cmd=100');
    u.control({ type: 'signal', signal: 15 });
    assert.equal((await u.message('exit')).exitCode, 143);
  });

  test('a client that leaves hangs the session up', async () => {
    const t = await open('?cmd=/bin/sh&cmd=-c&cmd=trap%20%22%22%20HUP%3B%20echo%20ready%3B%20sleep%201000');
    await t.output$(/ready\r\n/);
    const execId = t.texts[0].execId as string;
    t.ws.terminate();
    // The shell ignores SIGHUP: SIGKILL follows after the grace period.
    const exited = await waitFor('exec.exited', async () => {
      const events = await json(await s.api(`/v1/events?sandbox=${sandboxId}&type=exec.exited`));
      return events.events.find((e: any) => e.data.execId === execId);
    }, 10_000);
    assert.equal(exited.data.exitCode, 137);
    assert.equal(exited.data.reason, 'killed');
  });

  test('output flows to a client that reads it; a flood ends cleanly on exit', async () => {
    const t = await open('?cmd=/bin/sh&cmd=-c&cmd=head%20-c%2020000000%20%2Fdev%2Fzero%20%7C%20tr%20%22%5C0%22%20x%3B%20echo%3B%20echo%20done');
    const exit = await t.message('exit');
    assert.equal(exit.exitCode, 0);
    assert.ok(t.output.length >= 20_000_000, `got ${t.output.length} bytes`);
    assert.match(t.output, /done\r\n$/);
  });

  test('SDK: sbx.pty.create, sendInput, resize, kill, wait; errors as ApiError', async () => {
    const sbx = await Sandbox.connect(sandboxId, { url: s.url, apiKey: s.key });
    let text = '';
    const h = await sbx.pty.create({
      cols: 90, rows: 20, cmd: ['/bin/sh'], cwd: '/tmp', envs: { WHO: 'sdk' },
      onData: (d) => { text += new TextDecoder().decode(d); },
    });
    assert.ok(h.pid > 1);
    const until = async (re: RegExp) => waitFor(`output ${re}`, async () => re.test(text), 15_000);
    await h.sendInput('stty size; pwd; echo "who=$WHO"\r');
    await until(/20 90\r\n\/tmp\r\nwho=sdk\r\n/);
    await h.resize({ cols: 132, rows: 50 });
    await sbx.pty.sendInput(h.pid, 'stty size\r');
    await until(/\b50 132\r\n/);
    await assert.rejects(h.resize({ cols: 0, rows: 5 }), (e: ApiError) => e.status === 400);
    await h.sendInput('exit 9\r');
    const r = await h.wait();
    assert.equal(r.exitCode, 9);
    assert.equal(r.reason, 'exited');
    assert.equal(await h.kill(), false, 'nothing left to kill');
    await assert.rejects(h.sendInput('late'), (e: ApiError) => e.status === 409);

    const sleeper = await sbx.pty.create({ cmd: ['sleep', '100'] });
    assert.equal(await sbx.pty.kill(sleeper.pid), true);
    assert.equal((await sleeper.wait()).exitCode, 137);

    await assert.rejects(
      (await Sandbox.connect(sandboxId, { url: s.url, apiKey: s.key })).pty.create({ cmd: ['sh'], cwd: 'relative' }),
      (e: ApiError) => e instanceof ApiError && e.status === 400,
    );
    await assert.rejects(
      openPty(new ApiClient({ url: s.url, apiKey: s.key }), 'zzzzzzzzzzzz'),
      (e: ApiError) => e instanceof ApiError && e.status === 404 && e.code === 'not_found',
    );
    await assert.rejects(
      openPty(new ApiClient({ url: s.url, apiKey: 'wrong' }), sandboxId),
      (e: ApiError) => e instanceof ApiError && e.status === 401,
    );
  });

  test('/openapi.json documents the route as a GET that upgrades', async () => {
    const doc = await json(await fetch(`${s.url}/openapi.json`));
    const op = doc.paths?.['/v1/sandboxes/{id}/pty']?.get;
    assert.ok(op, 'GET /v1/sandboxes/{id}/pty is documented');
    assert.match(op.description, /WebSocket/);
    assert.ok(op.parameters.some((p: any) => p.name === 'cols' && p.in === 'query'));
  });
});
