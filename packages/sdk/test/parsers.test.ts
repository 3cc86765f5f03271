/** Pure pieces of the SDK: stream parsers and error mapping. The end-to-end tests live in packages/server/test. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiClient, ApiError, NdjsonParser, SseParser } from '../src/index.js';
import { errorFromResponse } from '../src/errors.js';

const bytes = (s: string) => new TextEncoder().encode(s);

test('NDJSON: lines split across chunks, blank keepalive lines skipped', () => {
  const p = new NdjsonParser();
  assert.deepEqual(p.push(bytes('{"type":"std')), []);
  assert.deepEqual(p.push(bytes('out","data":"a"}\n\n{"type":"exit","exitCode":0}\r\n{"x"')), [
    { type: 'stdout', data: 'a' },
    { type: 'exit', exitCode: 0 },
  ]);
  assert.deepEqual(p.push(bytes(':1}')), []);
  assert.deepEqual(p.end(), [{ x: 1 }]);
});

test('NDJSON: a multi-byte character split between chunks survives', () => {
  const p = new NdjsonParser();
  const all = bytes('{"data":"€😀"}\n');
  const out: unknown[] = [];
  for (let i = 0; i < all.length; i++) out.push(...p.push(all.subarray(i, i + 1)));
  assert.deepEqual(out, [{ data: '€😀' }]);
});

test('NDJSON: a line that is not JSON is an ApiError', () => {
  const p = new NdjsonParser();
  assert.throws(() => p.push(bytes('<html>\n')), (e: unknown) => e instanceof ApiError && e.code === 'bad_response');
});

test('SSE: id, event, multi-line data, comments', () => {
  const p = new SseParser();
  assert.deepEqual(p.push(bytes(': connected\n\nid: 3\nevent: sandbox.created\ndata: {"a"')), []);
  assert.deepEqual(p.push(bytes(':1}\n\n: keepalive\n\ndata: x\ndata: y\n\n')), [
    { id: '3', event: 'sandbox.created', data: '{"a":1}' },
    { data: 'x\ny' },
  ]);
});

test('error bodies become ApiErrors; foreign bodies still get a code', () => {
  const e = errorFromResponse(400, JSON.stringify({ error: { code: 'bad_request', message: 'resources.memoryMiB: too small', field: 'resources.memoryMiB' } }));
  assert.ok(e instanceof ApiError && e instanceof Error);
  assert.deepEqual([e.status, e.code, e.message, e.field], [400, 'bad_request', 'resources.memoryMiB: too small', 'resources.memoryMiB']);
  const plain = errorFromResponse(502, '<html>Bad Gateway</html>');
  assert.deepEqual([plain.status, plain.code], [502, 'internal']);
  assert.match(plain.message, /^HTTP 502: <html>/);
  assert.equal(errorFromResponse(409, '').code, 'conflict');
  assert.equal(errorFromResponse(404, '{"error":"nope"}').code, 'not_found');
});

test('client options: explicit, then environment, then the default', () => {
  const saved = { url: process.env.AIRLOCK_URL, key: process.env.AIRLOCK_API_KEY };
  try {
    delete process.env.AIRLOCK_URL;
    assert.equal(new ApiClient().url, 'http://127.0.0.1:7070');
    process.env.AIRLOCK_URL = 'http://10.0.0.1:1234/';
    assert.equal(new ApiClient().url, 'http://10.0.0.1:1234');
    assert.equal(new ApiClient({ url: 'http://h:1' }).url, 'http://h:1');
  } finally {
    if (saved.url === undefined) delete process.env.AIRLOCK_URL; else process.env.AIRLOCK_URL = saved.url;
    if (saved.key === undefined) delete process.env.AIRLOCK_API_KEY; else process.env.AIRLOCK_API_KEY = saved.key;
  }
});
