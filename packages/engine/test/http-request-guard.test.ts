import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RequestGuard, UpgradeAnswerWatch } from '../src/network/http-request-guard.js';

const text = (bufs: Buffer[]): string => Buffer.concat(bufs).toString('latin1');

describe('RequestGuard (transparent)', () => {
  test('requests for the allowed host pass byte for byte, however they are split', () => {
    const g = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    const stream = 'GET /1 HTTP/1.1\r\nHost: A.TEST.\r\n\r\n'
      + 'POST /2 HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 5\r\n\r\nhello'
      + 'PUT /3 HTTP/1.1\r\nhost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
      + 'OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n';
    let out = '';
    for (let i = 0; i < stream.length; i += 7) {
      const r = g.push(Buffer.from(stream.slice(i, i + 7), 'latin1'));
      assert.equal(r.refusal, undefined);
      out += text(r.out);
    }
    assert.equal(out, stream);
  });

  test('refusals name what was wrong, and nothing after them passes', () => {
    const cases: Array<[string, Record<string, unknown>]> = [
      ['GET / HTTP/1.1\r\nHost: b.test\r\n\r\n', { reason: 'host-changed', name: 'b.test' }],
      ['GET / HTTP/1.1\r\n\r\n', { reason: 'no-host' }],
      ['GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n', { reason: 'no-host', detail: 'several Host fields' }],
      ['GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n', { reason: 'host-mismatch', detail: 'target b.test, Host a.test' }],
      ['GET http://b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n', { reason: 'host-changed', name: 'b.test' }],
      // A server routing by Host alone would send these to its default site.
      ['GET http://a.test/ HTTP/1.1\r\n\r\n', { reason: 'no-host' }],
      ['GET http://a.test/ HTTP/1.0\r\nHost: \r\n\r\n', { reason: 'no-host' }],
      ['CONNECT b.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n', { reason: 'bad-request', detail: 'CONNECT on a transparent connection' }],
      ['GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n', { reason: 'ipv6' }],
      ['POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n', { reason: 'bad-request' }],
      ['\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n', { reason: 'bad-request' }],
      // HTTP/1.0 has no chunked coding: a server that ignores it would read the body as a request.
      ['POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n', { reason: 'bad-request' }],
    ];
    for (const [request, expected] of cases) {
      const g = new RequestGuard({ name: 'a.test', mode: 'transparent' });
      const first = g.push(Buffer.from(`GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n${request}`, 'latin1'));
      assert.equal(text(first.out), 'GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n', request);
      assert.ok(first.refusal, request);
      for (const [k, v] of Object.entries(expected)) assert.equal((first.refusal as unknown as Record<string, unknown>)[k], v, `${request}: ${k}`);
      assert.deepEqual(g.push(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n')).out, [], 'nothing passes after a refusal');
    }
  });

  test('a Content-Length body may go by another way: bodyLeft() says how much, skipBody() resumes after it', () => {
    const g = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    const head = 'POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n';
    assert.equal(text(g.push(Buffer.from(`${head}${'x'.repeat(100)}`)).out), `${head}${'x'.repeat(100)}`);
    assert.equal(g.bodyLeft(), 900);
    assert.throws(() => g.skipBody(901));
    g.skipBody(900);
    assert.equal(g.bodyLeft(), 0);
    // What follows the skipped bytes is a request head again, checked as ever.
    assert.deepEqual(g.push(Buffer.from('GET / HTTP/1.1\r\nHost: b.test\r\n\r\n')).refusal, { reason: 'host-changed', name: 'b.test' });
    // Chunked bodies are decoded here, never skipped; a partial head buffered means no skipping either.
    const c = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    c.push(Buffer.from('POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab'));
    assert.equal(c.bodyLeft(), 0);
    assert.throws(() => c.skipBody(1));
    // An upgrade request's body, while its answer is awaited: held, not lent.
    const u = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    u.push(Buffer.from('POST /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nContent-Length: 10\r\n\r\n'));
    assert.equal(u.bodyLeft(), 0);
  });

  test('only WebSocket upgrades: h2c and TLS upgrades would let later requests name other hosts', () => {
    for (const [upgrade, detail] of [
      ['Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings', 'only WebSocket upgrades are relayed (Upgrade: h2c)'],
      ['Upgrade: TLS/1.2\r\nConnection: Upgrade', 'only WebSocket upgrades are relayed (Upgrade: TLS/1.2)'],
      ['Upgrade: websocket, h2c', 'only WebSocket upgrades are relayed (Upgrade: websocket, h2c)'],
      ['Upgrade: websocket\r\nUpgrade: h2c', 'only WebSocket upgrades are relayed (Upgrade: several fields)'],
    ] as const) {
      const g = new RequestGuard({ name: 'a.test', mode: 'transparent' });
      const r = g.push(Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\n${upgrade}\r\n\r\n`, 'latin1'));
      assert.deepEqual(r.out, [], upgrade);
      assert.deepEqual(r.refusal, { reason: 'bad-request', detail }, upgrade);
    }
    const ws = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    assert.equal(ws.push(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: WebSocket\r\n\r\n')).refusal, undefined, 'the token is case-insensitive');
    assert.equal(ws.waitingForUpgrade, true);
  });

  test('Upgrade holds what follows until the answer: 101 tunnels it, anything else parses it', () => {
    const up = 'GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n';
    const tunnel = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    assert.equal(text(tunnel.push(Buffer.from(`${up}\x81\x05hello`, 'latin1')).out), up);
    assert.equal(tunnel.waitingForUpgrade, true);
    assert.deepEqual(tunnel.push(Buffer.from('GET / HTTP/1.1\r\nHost: b.test\r\n\r\n')).out, [], 'held, not parsed yet');
    const switched = tunnel.upgradeAnswered(true);
    assert.equal(text(switched.out), '\x81\x05helloGET / HTTP/1.1\r\nHost: b.test\r\n\r\n', 'a tunnel is opaque');
    assert.equal(tunnel.tunnel, true);
    assert.equal(text(tunnel.push(Buffer.from('anything')).out), 'anything');

    const refused = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    refused.push(Buffer.from(`${up}GET /next HTTP/1.1\r\nHost: a.test\r\n\r\nGET /evil HTTP/1.1\r\nHost: b.test\r\n\r\n`));
    const r = refused.upgradeAnswered(false);
    assert.equal(text(r.out), 'GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n');
    assert.deepEqual(r.refusal, { reason: 'host-changed', name: 'b.test' });

    const late = new RequestGuard({ name: 'a.test', mode: 'transparent' });
    const l = late.push(Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\n\r\n${up}`));
    assert.deepEqual(l.refusal, { reason: 'bad-request', detail: 'Upgrade after the first request' });
  });
});

describe('RequestGuard (explicit)', () => {
  test('the request goes in origin form with Connection: close; a second one is refused', () => {
    const g = new RequestGuard({ name: 'a.test', mode: 'explicit' });
    const r = g.push(Buffer.from('POST http://A.test:8080/p?q HTTP/1.1\r\nHost: a.test:8080\r\nProxy-Authorization: x\r\nContent-Length: 2\r\n\r\nhiGET http://a.test/ HTTP/1.1\r\n\r\n'));
    assert.equal(text(r.out), 'POST /p?q HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi');
    assert.equal(r.refusal?.reason, 'bad-request');
    const other = new RequestGuard({ name: 'a.test', mode: 'explicit' });
    assert.deepEqual(other.push(Buffer.from('GET http://b.test/ HTTP/1.1\r\n\r\n')).refusal, { reason: 'host-changed', name: 'b.test' });
  });
});

describe('UpgradeAnswerWatch', () => {
  const feed = (...parts: string[]): boolean | null => {
    const w = new UpgradeAnswerWatch();
    let v: boolean | null = null;
    for (const p of parts) v = w.feed(Buffer.from(p, 'latin1')) ?? v;
    return v;
  };
  test('101 switches, other finals do not, interim answers are skipped, garbage does not switch', () => {
    assert.equal(feed('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n'), true);
    assert.equal(feed('HTTP/1.1 10', '1 OK\r\n', '\r\n'), true);
    assert.equal(feed('HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 101 Switching\r\n\r\n'), true);
    assert.equal(feed('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'), false);
    assert.equal(feed('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad\r\n\r\n'), false);
    assert.equal(feed('SSH-2.0-x\r\n\r\n'), false);
    assert.equal(feed('HTTP/1.1 101 Switching'), null);
    assert.equal(feed('x'.repeat(70_000)), false);
  });
});
