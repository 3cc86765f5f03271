/** Secrets over REST and the SDK: the real engine, tenants and keys; values go in and never come out. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiClient, ApiError, Sandbox, Secret } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const JSON_HEADERS = { 'content-type': 'application/json' };
const VALUE = 'very-secret-value-0123456789';

describe('secrets over REST', () => {
  let s: TestServer;
  let tenantKey: string;
  let otherKey: string;
  let readKey: string;
  const put = (path: string, body: unknown, key?: string) =>
    s.api(path, { method: 'PUT', headers: { ...JSON_HEADERS, ...(key ? { authorization: `Bearer ${key}` } : {}) }, body: JSON.stringify(body) });
  const as = (key: string) => ({ headers: { authorization: `Bearer ${key}` } });

  before(async () => {
    s = await startTestServer();
    const admin = { tenant: null };
    s.engine.createTenant(admin, 'acme');
    s.engine.createTenant(admin, 'other');
    tenantKey = s.engine.createKey(admin, { tenant: 'acme' }).key;
    otherKey = s.engine.createKey(admin, { tenant: 'other' }).key;
    readKey = s.engine.createKey(admin, { tenant: 'acme', scope: 'read' }).key;
  });
  after(async () => { await s?.close(); });

  test('PUT stores, GET lists without values, DELETE removes; bad input 400, unknown 404', async () => {
    const res = await put('/v1/secrets/API_TOKEN', { value: VALUE, hosts: ['api.example.com'], header: 'Authorization: Bearer {value}' }, tenantKey);
    const body = await json(res);
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.deepEqual({ tenant: body.tenant, name: body.name, hosts: body.hosts, header: body.header }, { tenant: 'acme', name: 'API_TOKEN', hosts: ['api.example.com'], header: 'Authorization: Bearer {value}' });
    assert.ok(!JSON.stringify(body).includes(VALUE));
    const list = await json(await s.api('/v1/secrets', as(readKey)));
    assert.deepEqual(list.secrets.map((x: { name: string }) => x.name), ['API_TOKEN']);
    assert.ok(!JSON.stringify(list).includes(VALUE));
    const bad = await put('/v1/secrets/API_TOKEN', { value: 'short', hosts: ['api.example.com'] }, tenantKey);
    assert.equal(bad.status, 400);
    assert.equal((await json(bad)).error.field, 'value');
    assert.equal((await put('/v1/secrets/1BAD', { value: VALUE, hosts: ['x.example'] }, tenantKey)).status, 400);
    assert.equal((await put('/v1/secrets/X_TOKEN', { value: VALUE, hosts: ['x.example'] }, readKey)).status, 403, 'a read key cannot set');
    assert.equal((await s.api('/v1/secrets/NOPE', { method: 'DELETE', ...as(tenantKey) })).status, 404);
  });

  test('another tenant neither sees nor uses nor deletes it', async () => {
    const list = await json(await s.api('/v1/secrets', as(otherKey)));
    assert.deepEqual(list.secrets, []);
    assert.equal((await s.api('/v1/secrets/API_TOKEN', { method: 'DELETE', ...as(otherKey) })).status, 404);
    assert.equal((await put('/v1/secrets/API_TOKEN?tenant=acme', { value: VALUE, hosts: ['x.example'] }, otherKey)).status, 404);
    const res = await s.api('/v1/sandboxes', { method: 'POST', headers: { ...JSON_HEADERS, authorization: `Bearer ${otherKey}` }, body: JSON.stringify({ template: TEMPLATE, secrets: ['API_TOKEN'] }) });
    assert.equal(res.status, 404);
    assert.match((await json(res)).error.message, /secret API_TOKEN/);
  });

  test('admin: ?tenant= picks the tenant, GET without it lists all', async () => {
    assert.equal((await put('/v1/secrets/OPS_TOKEN?tenant=other', { value: VALUE, hosts: ['ops.example.com'] })).status, 200);
    assert.equal((await put('/v1/secrets/OPS_TOKEN?tenant=nosuch', { value: VALUE, hosts: ['ops.example.com'] })).status, 404);
    const all = await json(await s.api('/v1/secrets'));
    assert.deepEqual(all.secrets.map((x: { tenant: string; name: string }) => `${x.tenant}/${x.name}`), ['acme/API_TOKEN', 'other/OPS_TOKEN']);
    const one = await json(await s.api('/v1/secrets?tenant=other'));
    assert.deepEqual(one.secrets.map((x: { name: string }) => x.name), ['OPS_TOKEN']);
    assert.equal((await s.api('/v1/secrets/OPS_TOKEN?tenant=other', { method: 'DELETE' })).status, 204);
  });

  test('SDK: Secret.set/list/delete and Sandbox.create({ secrets }) puts only a placeholder in the env', async () => {
    const opts = { url: s.url, apiKey: tenantKey };
    const info = await Secret.set('SDK_TOKEN', { value: VALUE, hosts: ['sdk.example.com'] }, opts);
    assert.equal(info.name, 'SDK_TOKEN');
    assert.deepEqual((await Secret.list(opts)).map((x) => x.name), ['API_TOKEN', 'SDK_TOKEN']);
    const sbx = await Sandbox.create({ ...opts, template: TEMPLATE, secrets: ['SDK_TOKEN'], timeoutMs: 60_000 });
    try {
      assert.deepEqual((await sbx.api.getSandbox(sbx.sandboxId)).network.allow, ['sdk.example.com'], 'the secret\'s host joined the allowlist');
      const r = await sbx.commands.run('printf %s "$SDK_TOKEN"; echo; cat $SSL_CERT_FILE | grep -c "BEGIN CERTIFICATE"');
      const [placeholder, certs] = r.stdout.trim().split('\n');
      assert.match(placeholder!, /^airlock-secret-SDK_TOKEN-[0-9a-f]{32}$/);
      assert.equal(certs, '1', 'a template without CAs trusts the Airlock CA only');
    } finally {
      await sbx.kill();
    }
    assert.equal(await Secret.delete('SDK_TOKEN', opts), true);
    assert.equal(await Secret.delete('SDK_TOKEN', opts), false);
    await assert.rejects(new ApiClient(opts).setSecret('X_TOKEN', { value: 'short', hosts: ['a.example'] }), (e: unknown) => e instanceof ApiError && e.status === 400);
  });

  test('the routes are in /openapi.json, and no response schema has a value field', async () => {
    const doc = await json(await fetch(`${s.url}/openapi.json`));
    assert.ok(doc.paths['/v1/secrets']?.get);
    assert.ok(doc.paths['/v1/secrets/{name}']?.put && doc.paths['/v1/secrets/{name}']?.delete);
    const ok = doc.paths['/v1/secrets/{name}'].put.responses['200'];
    assert.ok(!JSON.stringify(ok).includes('"value"'), JSON.stringify(ok));
    assert.ok(JSON.stringify(doc.paths['/v1/sandboxes'].post.requestBody).includes('secrets'));
  });
});
