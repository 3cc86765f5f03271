/** GET /v1/usage and GET /metrics over real HTTP, and JSON logs that carry request ids. */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const logLines: Array<Record<string, unknown>> = [];
const logStream = new Writable({
  write(chunk: Buffer, _enc, cb) {
    for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logLines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  },
});

let srv: TestServer;
let sandbox = '';
let tenantKey = '';

const post = (body: unknown): RequestInit => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const as = (key: string | null, path: string) => fetch(srv.url + path, key ? { headers: { authorization: `Bearer ${key}` } } : {});

before(async () => {
  srv = await startTestServer({ logger: { level: 'info', stream: logStream } }, { usageSampleMs: 200 });
  let res = await srv.api('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 60, resources: { diskMiB: 64 } }));
  assert.equal(res.status, 201, await res.clone().text());
  sandbox = (await json(res)).id;
  res = await srv.api(`/v1/sandboxes/${sandbox}/exec`, post({ cmd: ['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done'] }));
  assert.equal(res.status, 200, await res.clone().text());
  res = await srv.api(`/v1/sandboxes/${sandbox}`, { method: 'DELETE' });
  assert.ok(res.ok, await res.clone().text());
  assert.equal((await srv.api('/v1/tenants', post({ name: 'acme' }))).status, 201);
  res = await srv.api('/v1/keys', post({ tenant: 'acme', scope: 'tenant' }));
  tenantKey = (await json(res)).key;
});

after(async () => { await srv?.close(); });

describe('GET /v1/usage', () => {
  test('admin: totals, per sandbox and per day', async () => {
    const res = await srv.api('/v1/usage');
    assert.equal(res.status, 200);
    const u = await json(res);
    for (const k of ['cpuSeconds', 'memoryGiBSeconds', 'diskGiBHours', 'netBytesIn', 'netBytesOut', 'cost']) assert.equal(typeof u[k], 'number', k);
    assert.ok(u.cpuSeconds > 0 && u.cost > 0);
    assert.deepEqual(u.sandboxes.map((s: { sandbox: string }) => s.sandbox), [sandbox]);
    assert.equal(u.days.length, 1);
    assert.equal(u.days[0].tenant, 'default');
    const one = await json(await srv.api(`/v1/usage?sandbox=${sandbox}&from=2000-01-01`));
    assert.equal(one.cpuSeconds, u.cpuSeconds);
    assert.equal(one.from, '2000-01-01');
  });

  test('tenant keys see their own tenant only', async () => {
    const own = await as(tenantKey, '/v1/usage');
    assert.equal(own.status, 200);
    assert.equal((await json(own)).sandboxes.length, 0);
    assert.equal((await as(tenantKey, `/v1/usage?sandbox=${sandbox}`)).status, 404);
    assert.equal((await as(tenantKey, '/v1/usage?tenant=default')).status, 403);
    assert.equal((await as(null, '/v1/usage')).status, 401);
  });

  test('bad queries are 400', async () => {
    assert.equal((await srv.api(`/v1/usage?sandbox=${sandbox}&tenant=default`)).status, 400);
    assert.equal((await srv.api('/v1/usage?from=soon')).status, 400);
  });

  test('is in the API document', async () => {
    const doc = await json(await fetch(`${srv.url}/openapi.json`));
    assert.ok(doc.paths['/v1/usage']?.get);
  });
});

describe('GET /metrics', () => {
  test('airlock_ series after a create and an exec; admin keys only', async () => {
    const res = await srv.api('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    assert.match(text, /^airlock_sandbox_create_seconds_count\{runtime="container"\} 1$/m);
    assert.match(text, /^airlock_exec_seconds_count\{runtime="container"\} 1$/m);
    assert.match(text, /^airlock_events_total\{type="sandbox.killed"\} 1$/m);
    assert.match(text, /^# TYPE airlock_sandboxes gauge$/m);
    assert.match(text, /^airlock_process_cpu_seconds_total /m);
    for (const m of text.matchAll(/^# TYPE (\S+)/gm)) assert.ok(m[1]!.startsWith('airlock_'), m[1]);
    assert.equal((await as(tenantKey, '/metrics')).status, 403);
    assert.equal((await as(null, '/metrics')).status, 401);
  });

  test('live sandboxes by state and runtime', async () => {
    const res = await srv.api('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 60, resources: { diskMiB: 64 } }));
    const id = (await json(res)).id;
    try {
      assert.match(await (await srv.api('/metrics')).text(), /^airlock_sandboxes\{state="running",runtime="container"\} 1$/m);
    } finally {
      await srv.api(`/v1/sandboxes/${id}`, { method: 'DELETE' });
    }
  });
});

test('JSON logs carry the request id', async () => {
  const res = await srv.api('/healthz', { headers: { 'x-request-id': 'airlock-test-req-1' } });
  assert.equal(res.headers.get('x-request-id'), 'airlock-test-req-1');
  await new Promise((r) => setTimeout(r, 50));
  const lines = logLines.filter((l) => l.reqId === 'airlock-test-req-1');
  assert.ok(lines.some((l) => l.msg === 'incoming request'), JSON.stringify(lines));
  assert.ok(lines.some((l) => l.msg === 'request completed'));
});
