/**
 * POST /v1/sandboxes/:id/pause|resume over HTTP and through the SDK: states, status codes,
 * events and /openapi.json. Freezing itself on every tier is in the engine's conformance suite.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ApiClient, Sandbox } from '@airlock/sdk';
import { startTestServer, TEMPLATE, type TestServer } from './helpers.js';

describe('pause / resume API', () => {
  let srv: TestServer;
  before(async () => { srv = await startTestServer(); });
  after(async () => { await srv?.close(); });

  const post = (path: string, body?: unknown) => srv.api(path, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });

  test('pause → 409 on exec → resume → exec works; repeats are idempotent; events recorded', async () => {
    const created = await post('/v1/sandboxes', { template: TEMPLATE, timeoutSeconds: 60 });
    assert.equal(created.status, 201, await created.clone().text());
    const { id } = await created.json() as { id: string };

    const p = await post(`/v1/sandboxes/${id}/pause`);
    assert.equal(p.status, 200, await p.clone().text());
    assert.equal((await p.json() as { state: string }).state, 'paused');
    assert.equal((await (await post(`/v1/sandboxes/${id}/pause`)).json() as { state: string }).state, 'paused');

    const exec = await post(`/v1/sandboxes/${id}/exec`, { cmd: ['true'] });
    assert.equal(exec.status, 409);
    const err = await exec.json() as { error: { code: string; message: string } };
    assert.equal(err.error.code, 'conflict');
    assert.match(err.error.message, /paused/);
    const listed = await (await srv.api('/v1/sandboxes?state=paused')).json() as { sandboxes: Array<{ id: string }> };
    assert.ok(listed.sandboxes.some((s) => s.id === id));

    const r = await post(`/v1/sandboxes/${id}/resume`);
    assert.equal(r.status, 200);
    assert.equal((await r.json() as { state: string }).state, 'running');
    const ok = await post(`/v1/sandboxes/${id}/exec`, { cmd: ['echo', 'back'] });
    assert.equal((await ok.json() as { stdout: string }).stdout, 'back\n');

    const events = await (await srv.api(`/v1/events?sandbox=${id}`)).json() as { events: Array<{ type: string }> };
    const types = events.events.map((e) => e.type);
    assert.ok(types.includes('sandbox.paused') && types.includes('sandbox.resumed'), types.join(','));

    assert.equal((await srv.api(`/v1/sandboxes/${id}`, { method: 'DELETE' })).status, 200);
    const afterKill = await post(`/v1/sandboxes/${id}/pause`);
    assert.equal(afterKill.status, 409);
  });

  test('unknown ids answer 404, malformed ids 400, no key 401', async () => {
    assert.equal((await post('/v1/sandboxes/zzzzzzzzzzzz/pause')).status, 404);
    assert.equal((await post('/v1/sandboxes/..%2F..%2Fetc/resume')).status, 400);
    const anon = await fetch(`${srv.url}/v1/sandboxes/zzzzzzzzzzzz/pause`, { method: 'POST' });
    assert.equal(anon.status, 401);
  });

  test('the SDK pauses and resumes; /openapi.json documents both routes', async () => {
    const sbx = await Sandbox.create({ template: TEMPLATE, timeoutMs: 60_000, url: srv.url, apiKey: srv.key });
    try {
      await sbx.pause();
      assert.equal((await sbx.getInfo()).state, 'paused');
      assert.equal(await sbx.isRunning(), false);
      await sbx.resume();
      assert.equal((await sbx.commands.run('echo hi')).stdout, 'hi\n');
      const client = new ApiClient({ url: srv.url, apiKey: srv.key });
      assert.equal((await client.pauseSandbox(sbx.sandboxId)).state, 'paused');
    } finally {
      await sbx.kill();
    }
    const doc = await (await srv.api('/openapi.json')).json() as { paths: Record<string, Record<string, unknown>> };
    assert.ok(doc.paths['/v1/sandboxes/{id}/pause']?.['post']);
    assert.ok(doc.paths['/v1/sandboxes/{id}/resume']?.['post']);
  });
});
