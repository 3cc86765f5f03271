/** Volumes and the mount policy over REST: the real engine, runc and the tiny template. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiError, Sandbox, Volume } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const JSON_HEADERS = { 'content-type': 'application/json' };

describe('volumes over REST', () => {
  let s: TestServer;
  let scratch: string;
  const post = (path: string, body: unknown) => s.api(path, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify(body) });

  before(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'airlock-server-test-policy-'));
    mkdirSync(join(scratch, 'allowed'));
    mkdirSync(join(scratch, 'allowed-not'));
    s = await startTestServer({}, { mountPolicy: { allowReadWrite: false, allowedHostPrefixes: [join(scratch, 'allowed')] } });
  });
  after(async () => {
    await s?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  test('create 201, list, get, bad input 400, duplicate 409', async () => {
    const res = await post('/v1/volumes', { name: 'results', sizeMiB: 32 });
    const v = await json(res);
    assert.equal(res.status, 201, JSON.stringify(v));
    assert.deepEqual({ name: v.name, sizeMiB: v.sizeMiB, usedMiB: v.usedMiB, attachments: v.attachments }, { name: 'results', sizeMiB: 32, usedMiB: 0, attachments: [] });
    assert.equal((await post('/v1/volumes', { name: 'results', sizeMiB: 32 })).status, 409);
    const bad = await post('/v1/volumes', { name: 'Results!', sizeMiB: 32 });
    assert.equal(bad.status, 400);
    assert.equal((await json(bad)).error.field, 'name');
    assert.equal((await post('/v1/volumes', { name: 'x', sizeMiB: 2 })).status, 400);
    const list = await json(await s.api('/v1/volumes'));
    assert.deepEqual(list.volumes.map((x: { name: string }) => x.name), ['results']);
    assert.equal((await s.api('/v1/volumes/nope')).status, 404);
  });

  test('attach at sandbox create; 409 on a second read-write user; delete 409 while attached, then 204', async () => {
    const res = await post('/v1/sandboxes', { template: TEMPLATE, volumes: [{ name: 'results', target: '/out', readOnly: false }] });
    const sbx = await json(res);
    assert.equal(res.status, 201, JSON.stringify(sbx));
    assert.deepEqual(sbx.volumes, [{ name: 'results', target: '/out', readOnly: false }]);
    const w = await json(await post(`/v1/sandboxes/${sbx.id}/exec`, { cmd: ['sh', '-c', 'echo done > /out/r && cat /out/r'] }));
    assert.equal(w.stdout, 'done\n');
    const second = await post('/v1/sandboxes', { template: TEMPLATE, volumes: [{ name: 'results', target: '/in' }] });
    assert.equal(second.status, 409);
    assert.match((await json(second)).error.message, new RegExp(sbx.id));
    const got = await json(await s.api('/v1/volumes/results'));
    assert.deepEqual(got.attachments, [{ sandbox: sbx.id, target: '/out', readOnly: false }]);
    assert.equal((await s.api('/v1/volumes/results', { method: 'DELETE' })).status, 409);
    assert.equal((await s.api(`/v1/sandboxes/${sbx.id}`, { method: 'DELETE' })).status, 200);
    assert.equal((await s.api('/v1/volumes/results', { method: 'DELETE' })).status, 204);
    assert.equal((await s.api('/v1/volumes/results')).status, 404);
  });

  test('a mount the policy denies answers 422 policy_denied naming the mount', async () => {
    for (const [source, readOnly] of [[join(scratch, 'allowed-not'), true], [join(scratch, 'allowed'), false]] as const) {
      const res = await post('/v1/sandboxes', { template: TEMPLATE, mounts: [{ source, target: '/in', readOnly }] });
      const body = await json(res);
      assert.equal(res.status, 422, JSON.stringify(body));
      assert.equal(body.error.code, 'policy_denied');
      assert.equal(body.error.field, 'mounts.0');
    }
    const events = await json(await s.api('/v1/events?type=policy.denied'));
    assert.deepEqual(events.events.map((e: { data: { rule: string } }) => e.data.rule), ['outside_allowed_prefixes', 'read_write_forbidden']);
  });

  test('SDK: Volume.create, attach through Sandbox.create, Volume.delete', async () => {
    const opts = { url: s.url, apiKey: s.key };
    const vol = await Volume.create('sdk-vol', { ...opts, sizeMiB: 16 });
    assert.equal(vol.sizeMiB, 16);
    assert.ok((await Volume.list(opts)).some((v) => v.name === 'sdk-vol'));
    const writer = await Sandbox.create({ ...opts, template: TEMPLATE, volumes: [{ name: 'sdk-vol', target: '/v', readOnly: false }] });
    await writer.commands.run('echo 42 > /v/answer');
    await assert.rejects(vol.delete(), (e: unknown) => e instanceof ApiError && e.status === 409);
    await writer.kill();
    const reader = await Sandbox.create({ ...opts, template: TEMPLATE, volumes: [{ name: 'sdk-vol', target: '/v' }] });
    assert.equal((await reader.commands.run('cat /v/answer')).stdout, '42\n');
    assert.equal((await vol.refresh()).attachments.length, 1);
    await reader.kill();
    assert.equal(await Volume.delete('sdk-vol', opts), true);
    assert.equal(await Volume.delete('sdk-vol', opts), false);
  });

  test('the OpenAPI document describes the volume routes', async () => {
    const doc = await json(await s.api('/openapi.json'));
    assert.ok(doc.paths['/v1/volumes'].post);
    assert.ok(doc.paths['/v1/volumes/{name}'].delete);
  });
});
