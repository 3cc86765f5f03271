/** HTTP behaviour of airlockd that needs no sandbox: auth, errors, limits, OpenAPI. Real engine. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { json, startTestServer, type TestServer } from './helpers.js';

describe('airlockd without sandboxes', () => {
  let s: TestServer;
  before(async () => { s = await startTestServer({ uploadLimitBytes: 4096 }); });
  after(async () => { await s?.close(); });

  test('/healthz is public and carries a request id', async () => {
    const res = await fetch(`${s.url}/healthz`);
    assert.equal(res.status, 200);
    const body = await json(res);
    assert.equal(body.ok, true);
    assert.equal(typeof body.version, 'string');
    assert.match(res.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
    const echoed = await fetch(`${s.url}/healthz`, { headers: { 'x-request-id': 'trace-123' } });
    assert.equal(echoed.headers.get('x-request-id'), 'trace-123');
    const unsafe = await fetch(`${s.url}/healthz`, { headers: { 'x-request-id': 'a b<script>' } });
    assert.notEqual(unsafe.headers.get('x-request-id'), 'a b<script>');
  });

  test('no key, a wrong key or a malformed header: 401 with the error body', async () => {
    for (const headers of [{}, { authorization: 'Bearer nope' }, { authorization: `Basic ${s.key}` }] as Record<string, string>[]) {
      const res = await fetch(`${s.url}/v1/sandboxes`, { headers });
      assert.equal(res.status, 401, JSON.stringify(headers));
      assert.equal(res.headers.get('www-authenticate'), 'Bearer');
      assert.ok(res.headers.get('x-request-id'));
      const body = await json(res);
      assert.equal(body.error.code, 'unauthorized');
      assert.equal(typeof body.error.message, 'string');
    }
  });

  test('unauthenticated uploads are refused before the body is read', async () => {
    const res = await fetch(`${s.url}/v1/sandboxes/abc/files?path=/x`, { method: 'PUT', body: new Uint8Array(100_000) });
    assert.equal(res.status, 401);
  });

  test('a key opens the API', async () => {
    const res = await s.api('/v1/sandboxes');
    assert.equal(res.status, 200);
    assert.deepEqual(await json(res), { sandboxes: [] });
    const t = await json(await s.api('/v1/templates'));
    assert.ok(t.templates.some((x: { name: string }) => x.name === 'tiny'), JSON.stringify(t));
  });

  test('malformed JSON: 400 bad_request', async () => {
    const res = await s.api('/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"template": ' });
    assert.equal(res.status, 400);
    const body = await json(res);
    assert.equal(body.error.code, 'bad_request');
    assert.doesNotMatch(body.error.message, /at .*\.js/);
  });

  test('JSON body over 1 MiB: 413 too_large', async () => {
    const big = JSON.stringify({ metadata: { a: 'x'.repeat(1024 * 1024 + 10) } });
    const res = await s.api('/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: big });
    assert.equal(res.status, 413);
    assert.equal((await json(res)).error.code, 'too_large');
  });

  test('upload over the upload limit: 413 too_large', async () => {
    const res = await s.api('/v1/sandboxes/abc123/files?path=/work/x', {
      method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: new Uint8Array(8192),
    });
    assert.equal(res.status, 413);
    assert.equal((await json(res)).error.code, 'too_large');
  });

  test('invalid resources: 400 naming the field', async () => {
    const res = await s.api('/v1/sandboxes', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ template: 'tiny', resources: { memoryMiB: 1 } }),
    });
    assert.equal(res.status, 400);
    const body = await json(res);
    assert.equal(body.error.code, 'bad_request');
    assert.equal(body.error.field, 'resources.memoryMiB');
    const typo = await json(await s.api('/v1/sandboxes', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ resource: {} }),
    }));
    assert.equal(typo.error.field, 'resource');
  });

  test('bad query and path values: 400 naming the field', async () => {
    const cases: Array<[string, RequestInit, string]> = [
      ['/v1/sandboxes/abc123/files?path=relative', {}, 'path'],
      ['/v1/sandboxes/abc123/files', {}, 'path'],
      ['/v1/sandboxes/ABC!', {}, 'id'],
      ['/v1/sandboxes?bogus=1', {}, 'bogus'],
      ['/v1/events?limit=0', {}, 'limit'],
      ['/v1/sandboxes/abc123/processes/notanumber', { method: 'DELETE' }, 'pid'],
    ];
    for (const [path, init, field] of cases) {
      const res = await s.api(path, init);
      const body = await json(res);
      assert.equal(res.status, 400, `${path}: ${JSON.stringify(body)}`);
      assert.equal(body.error.field, field, path);
    }
  });

  test('unknown sandbox: 404 not_found on every sandbox route', async () => {
    const id = 'nosuchsandbox1';
    const cases: Array<[string, RequestInit]> = [
      [`/v1/sandboxes/${id}`, {}],
      [`/v1/sandboxes/${id}`, { method: 'DELETE' }],
      [`/v1/sandboxes/${id}/timeout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"timeoutSeconds":10}' }],
      [`/v1/sandboxes/${id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"cmd":["/bin/true"]}' }],
      [`/v1/sandboxes/${id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' }, body: '{"cmd":["/bin/true"]}' }],
      [`/v1/sandboxes/${id}/processes`, {}],
      [`/v1/sandboxes/${id}/files?path=/work`, {}],
      [`/v1/sandboxes/${id}/files?path=/work/a`, { method: 'PUT', body: 'x' }],
      [`/v1/sandboxes/${id}/files?path=/work/a`, { method: 'DELETE' }],
    ];
    for (const [path, init] of cases) {
      const res = await s.api(path, init);
      const body = await json(res);
      assert.equal(res.status, 404, `${init.method ?? 'GET'} ${path}: ${JSON.stringify(body)}`);
      assert.equal(body.error.code, 'not_found');
    }
  });

  test('unknown route: 404 with the error body', async () => {
    const res = await s.api('/v1/nothing-here');
    assert.equal(res.status, 404);
    assert.equal((await json(res)).error.code, 'not_found');
  });

  test('events list answers JSON', async () => {
    const body = await json(await s.api('/v1/events?limit=5'));
    assert.ok(Array.isArray(body.events));
  });

  test('/openapi.json is public and lists every route', async () => {
    const res = await fetch(`${s.url}/openapi.json`);
    assert.equal(res.status, 200);
    const doc = await json(res);
    assert.match(doc.openapi, /^3\./);
    const expected: Record<string, string[]> = {
      '/v1/sandboxes': ['get', 'post'],
      '/v1/sandboxes/{id}': ['get', 'delete'],
      '/v1/sandboxes/{id}/timeout': ['post'],
      '/v1/sandboxes/{id}/exec': ['post'],
      '/v1/sandboxes/{id}/processes': ['get'],
      '/v1/sandboxes/{id}/processes/{pid}': ['delete'],
      '/v1/sandboxes/{id}/files': ['get', 'put', 'delete'],
      '/v1/templates': ['get'],
      '/v1/events': ['get'],
      '/healthz': ['get'],
    };
    for (const [path, methods] of Object.entries(expected)) {
      for (const m of methods) assert.ok(doc.paths?.[path]?.[m], `${m.toUpperCase()} ${path} missing from /openapi.json`);
    }
    const create = doc.paths['/v1/sandboxes'].post;
    const schema = create.requestBody.content['application/json'].schema;
    assert.equal(schema.properties.resources.properties.memoryMiB.maximum, 262144);
    assert.ok(doc.paths['/v1/sandboxes/{id}/exec'].post.responses['200'].content['application/x-ndjson']);
  });

  test('the server survives hostile input', async () => {
    const nasty: Array<[string, RequestInit]> = [
      ['/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[]' }],
      ['/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'null' }],
      ['/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"__proto__":{"x":1}}' }],
      ['/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hi' }],
      ['/v1/sandboxes/abc123/exec', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"cmd":"ls"}' }],
      ['/v1/sandboxes/%ZZ', {}],
      ['/v1/events?after=-1', {}],
    ];
    for (const [path, init] of nasty) {
      const res = await s.api(path, init);
      assert.ok(res.status >= 400 && res.status < 500, `${path}: ${res.status}`);
      assert.ok((await json(res)).error.code);
    }
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
  });
});
