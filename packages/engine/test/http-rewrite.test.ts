/**
 * The secret broker's HTTP framing and scrubbing, byte by byte: matches cut by chunk
 * boundaries, keep-alive, chunked bodies both ways, and everything that must be refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RequestRewriter, ResponseRewriter, ChunkedDecoder } from '../src/network/http-rewrite.js';
import { replaceAll, StreamReplacer, type Replacement } from '../src/network/http-rewrite-scrub.js';
import { serializeRequestHead } from '../src/network/http-rewrite.js';

const SECRET = 'sk-live-0123456789abcdef';
const PH = 'airlock-secret-TOKEN-00112233445566778899aabbccddeeff';
const reps: Replacement[] = [{ from: Buffer.from(SECRET), to: Buffer.from(PH), label: 'TOKEN' }];

/** Feeds `data` in pieces of `size` bytes (every cut position gets exercised by the callers). */
function pieces(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return out;
}

describe('StreamReplacer', () => {
  test('finds a value cut anywhere, for every piece size', () => {
    const text = Buffer.from(`a${SECRET}b${SECRET}${SECRET}c${SECRET.slice(0, 5)}`);
    const expected = replaceAll(text, reps).toString();
    assert.equal(expected, `a${PH}b${PH}${PH}c${SECRET.slice(0, 5)}`);
    for (let size = 1; size <= text.length; size++) {
      const r = new StreamReplacer(reps);
      const out = Buffer.concat([...pieces(text, size).map((p) => r.push(p)), r.end()]).toString();
      assert.equal(out, expected, `piece size ${size}`);
    }
  });

  test('reports each match', () => {
    const hits: string[] = [];
    const r = new StreamReplacer(reps, (l) => hits.push(l));
    r.push(Buffer.from(SECRET.slice(0, 3)));
    r.push(Buffer.from(`${SECRET.slice(3)}x${SECRET}`));
    r.end();
    assert.deepEqual(hits, ['TOKEN', 'TOKEN']);
  });
});

describe('ChunkedDecoder', () => {
  test('decodes and stops at the end of the body', () => {
    const d = new ChunkedDecoder();
    const r = d.feed(Buffer.from('5;x=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\nNEXT'));
    assert.ok(!('error' in r));
    assert.equal(Buffer.concat(r.data).toString(), 'hello');
    assert.equal(r.consumed, '5;x=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n'.length);
    assert.ok(d.done);
  });
  test('refuses a bad size or a missing CRLF', () => {
    assert.ok('error' in new ChunkedDecoder().feed(Buffer.from('zz\r\n')));
    assert.ok('error' in new ChunkedDecoder().feed(Buffer.from('2\r\nabc\r\n')));
    assert.ok('error' in new ChunkedDecoder().feed(Buffer.from('2\nab\r\n')));
  });
});

describe('RequestRewriter', () => {
  const rewriter = () => new RequestRewriter({
    rewriteHead: (h) => ({ ok: true, head: serializeRequestHead(h.method, h.target, h.version, h.headers.map(([n, v]) => [n, v.split(PH).join(SECRET)])) }),
  });

  test('keep-alive requests with bodies, every one rewritten, bodies untouched', () => {
    const wire = Buffer.from([
      `POST /a HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer ${PH}\r\nContent-Length: 5\r\n\r\n${PH.slice(0, 5)}`,
      `POST /b HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nX-K: ${PH}\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
      `GET /c HTTP/1.1\r\nHost: a.test\r\n\r\n`,
    ].join(''));
    for (const size of [1, 7, wire.length]) {
      const r = rewriter();
      const out = Buffer.concat(pieces(wire, size).flatMap((p) => r.push(p).out)).toString();
      assert.equal(out.split(SECRET).length - 1, 2, `size ${size}: ${out}`);
      assert.ok(out.includes(`\r\n\r\n${PH.slice(0, 5)}POST /b`), 'the body passed as it was');
      assert.ok(out.includes('3\r\nabc\r\n0\r\n\r\nGET /c'), 'the chunked body passed as it was');
      assert.deepEqual(r.sent.map((s) => s.method), ['POST', 'POST', 'GET']);
    }
  });

  test('refuses smuggling-shaped framing', () => {
    const r = rewriter();
    const res = r.push(Buffer.from('POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n'));
    assert.equal(res.refusal?.status, 400);
    assert.equal(res.out.length, 0);
    assert.equal(r.push(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n')).out.length, 0, 'nothing after a refusal');
  });
});

describe('ResponseRewriter', () => {
  function run(wire: Buffer, requests: Array<{ method: string; version: string }>, size: number) {
    const queue = [...requests];
    const r = new ResponseRewriter({
      nextRequest: () => queue.shift(),
      scrubHead: (b) => replaceAll(b, reps),
      bodyScrubber: () => new StreamReplacer(reps),
    });
    const out: Buffer[] = [];
    let error: string | undefined;
    let close = false;
    for (const p of pieces(wire, size)) {
      const res = r.push(p);
      out.push(...res.out);
      error ??= res.error;
      if (res.close) close = true;
    }
    const end = r.end();
    out.push(...end.out);
    error ??= end.error;
    return { text: Buffer.concat(out).toString('latin1'), error, close };
  }

  test('scrubs heads and bodies of keep-alive responses, re-framed as chunked', () => {
    const body1 = `{"auth":"Bearer ${SECRET}"}`;
    const wire = Buffer.from([
      `HTTP/1.1 200 OK\r\nX-Echo: ${SECRET}\r\nContent-Length: ${body1.length}\r\n\r\n${body1}`,
      `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n${SECRET.slice(0, 4)}\r\n${(SECRET.length - 4).toString(16)}\r\n${SECRET.slice(4)}\r\n0\r\n\r\n`,
      'HTTP/1.1 204 No Content\r\n\r\n',
    ].join(''));
    for (const size of [1, 3, 16, wire.length]) {
      const { text, error } = run(wire, [{ method: 'GET', version: 'HTTP/1.1' }, { method: 'GET', version: 'HTTP/1.1' }, { method: 'DELETE', version: 'HTTP/1.1' }], size);
      assert.equal(error, undefined);
      assert.ok(!text.includes(SECRET), `size ${size}: ${text}`);
      assert.equal(text.split(PH).length - 1, 3, text);
      assert.equal(text.match(/Transfer-Encoding: chunked/g)?.length, 2);
      assert.ok(!/Content-Length/.test(text));
      assert.ok(text.endsWith('HTTP/1.1 204 No Content\r\n\r\n'));
    }
  });

  test('HTTP/1.0 and close-delimited bodies', () => {
    const { text, error } = run(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${SECRET.length}\r\n\r\n${SECRET}`), [{ method: 'GET', version: 'HTTP/1.0' }], 5);
    assert.equal(error, undefined);
    assert.equal(text, `HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n${PH}`);
    const closeDelimited = run(Buffer.from(`HTTP/1.1 200 OK\r\n\r\nxx${SECRET}`), [{ method: 'GET', version: 'HTTP/1.1' }], 4);
    assert.equal(closeDelimited.error, undefined);
    assert.ok(!closeDelimited.text.includes(SECRET));
    assert.ok(closeDelimited.text.endsWith('0\r\n\r\n'));
  });

  test('refuses what it cannot scrub or frame', () => {
    const gz = run(Buffer.from('HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx'), [{ method: 'GET', version: 'HTTP/1.1' }], 100);
    assert.match(gz.error ?? '', /content-encoding gzip/);
    assert.equal(gz.text, '', 'not one byte of it');
    assert.match(run(Buffer.from('HTTP/1.1 200 OK\r\n\r\n'), [], 100).error ?? '', /nobody asked/);
    assert.match(run(Buffer.from('HTTP/1.1 101 Switching\r\n\r\n'), [{ method: 'GET', version: 'HTTP/1.1' }], 100).error ?? '', /101/);
    const cut = run(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${SECRET}`), [{ method: 'GET', version: 'HTTP/1.1' }], 100);
    assert.match(cut.error ?? '', /middle of a response/);
  });
});
