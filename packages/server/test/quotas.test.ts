/**
 * Per-tenant quotas over real HTTP with real sandboxes: never exceeded under concurrent
 * creates (checked in the transaction that records the sandbox), and every 429 names the
 * quota, its limit and the current use.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ApiClient, type ApiError } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

type Api = (path: string, init?: RequestInit) => Promise<Response>;

const jsonInit = (method: string, body?: unknown): RequestInit => ({
  method,
  ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
});

describe('quotas', () => {
  let srv: TestServer;
  before(async () => { srv = await startTestServer(); });
  after(async () => { await srv?.close(); });

  /** A fresh tenant with `quotas`, and its full key. */
  async function tenantWith(name: string, quotas: Record<string, number>): Promise<Api> {
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name }))).status, 201);
    const set = await srv.api(`/v1/policies/${name}`, jsonInit('PUT', { quotas }));
    assert.equal(set.status, 200, await set.clone().text());
    const { key } = await json(await srv.api('/v1/keys', jsonInit('POST', { tenant: name })));
    return (path, init = {}) => fetch(srv.url + path, { ...init, headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string> | undefined) } });
  }

  const create = (api: Api, extra: Record<string, unknown> = {}) =>
    api('/v1/sandboxes', jsonInit('POST', { template: TEMPLATE, timeoutSeconds: 120, resources: { diskMiB: 64, memoryMiB: 64, cpus: 0.1 }, ...extra }));

  async function killAll(api: Api): Promise<void> {
    const { sandboxes } = await json(await api('/v1/sandboxes?state=running'));
    await Promise.all(sandboxes.map((s: { id: string }) => api(`/v1/sandboxes/${s.id}`, { method: 'DELETE' })));
  }

  async function expectQuota(res: Response, quota: string, limit: number, used: number): Promise<void> {
    const text = await res.text();
    assert.equal(res.status, 429, text);
    const { error } = JSON.parse(text);
    assert.equal(error.code, 'quota_exceeded');
    assert.deepEqual({ quota: error.quota, limit: error.limit, used: error.used }, { quota, limit, used }, text);
    assert.match(error.message, new RegExp(quota));
    assert.match(error.message, new RegExp(`limit ${limit}`));
  }

  test('the SDK\'s ApiError carries the quota, its limit and the use', async () => {
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name: 'sdkquota' }))).status, 201);
    assert.equal((await srv.api('/v1/policies/sdkquota', jsonInit('PUT', { quotas: { maxSandboxes: 1 } }))).status, 200);
    const { key } = await json(await srv.api('/v1/keys', jsonInit('POST', { tenant: 'sdkquota' })));
    const client = new ApiClient({ url: srv.url, apiKey: key });
    const first = await client.createSandbox({ template: TEMPLATE, timeoutSeconds: 60 });
    try {
      await assert.rejects(client.createSandbox({ template: TEMPLATE, timeoutSeconds: 60 }), (e: ApiError) =>
        e.status === 429 && e.code === 'quota_exceeded' && e.quota === 'maxSandboxes' && e.limit === 1 && e.used === 1);
    } finally {
      await client.killSandbox(first.id);
    }
  });

  test('20 concurrent creates against maxSandboxes=5: exactly 5 succeed, 15 answer 429 naming the quota', async () => {
    const api = await tenantWith('burst', { maxSandboxes: 5 });
    try {
      const results = await Promise.all(Array.from({ length: 20 }, () => create(api)));
      const ok = results.filter((r) => r.status === 201);
      const refused = results.filter((r) => r.status === 429);
      assert.equal(ok.length, 5, results.map((r) => r.status).join(','));
      assert.equal(refused.length, 15);
      for (const r of refused) await expectQuota(r, 'maxSandboxes', 5, 5);

      for (const r of ok) await r.body?.cancel();
      const live = (await json(await api('/v1/sandboxes'))).sandboxes.filter((s: { state: string }) => s.state === 'running');
      assert.equal(live.length, 5);
      const events = srv.engine.listEvents({ tenant: 'burst' }, { type: 'quota.exceeded' });
      assert.equal(events.length, 15);
      assert.deepEqual(events[0]!.data, { quota: 'maxSandboxes', limit: 5, used: 5 });
      // Killing one frees a slot.
      await api(`/v1/sandboxes/${live[0].id}`, { method: 'DELETE' });
      const again = await create(api);
      assert.equal(again.status, 201);
      await again.body?.cancel();
    } finally {
      await killAll(api);
    }
  });

  test('maxMemoryMiB and maxVcpus are totals over live sandboxes', async () => {
    const mem = await tenantWith('memq', { maxMemoryMiB: 300 });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await create(mem, { resources: { memoryMiB: 128, diskMiB: 64 } })).status, 201);
      await expectQuota(await create(mem, { resources: { memoryMiB: 128, diskMiB: 64 } }), 'maxMemoryMiB', 300, 256);
      assert.equal((await create(mem, { resources: { memoryMiB: 32, diskMiB: 64 } })).status, 201, 'what still fits is allowed');
    } finally {
      await killAll(mem);
    }
    const cpu = await tenantWith('cpuq', { maxVcpus: 1 });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await create(cpu, { resources: { cpus: 0.5, diskMiB: 64, memoryMiB: 64 } })).status, 201);
      await expectQuota(await create(cpu, { resources: { cpus: 0.1, diskMiB: 64, memoryMiB: 64 } }), 'maxVcpus', 1, 1);
    } finally {
      await killAll(cpu);
    }
  });

  test('maxDiskMiB totals the sandboxes\' disk', async () => {
    const api = await tenantWith('diskq', { maxDiskMiB: 100 });
    try {
      assert.equal((await create(api, { resources: { diskMiB: 64, memoryMiB: 64 } })).status, 201);
      await expectQuota(await create(api, { resources: { diskMiB: 64, memoryMiB: 64 } }), 'maxDiskMiB', 100, 64);
    } finally {
      await killAll(api);
    }
  });

  test('createsPerMinute counts creations in the last 60 s, live or not', async () => {
    const api = await tenantWith('rate', { createsPerMinute: 3 });
    try {
      for (let i = 0; i < 3; i++) {
        const res = await create(api);
        assert.equal(res.status, 201);
        const { id } = await json(res);
        assert.equal((await api(`/v1/sandboxes/${id}`, { method: 'DELETE' })).status, 200);
      }
      await expectQuota(await create(api), 'createsPerMinute', 3, 3);
    } finally {
      await killAll(api);
    }
  });

  test('maxLifetimeSeconds bounds create and POST …/timeout; an unasked lifetime is clamped to it', async () => {
    const api = await tenantWith('life', { maxLifetimeSeconds: 60 });
    try {
      await expectQuota(await create(api, { timeoutSeconds: 120 }), 'maxLifetimeSeconds', 60, 120);
      const res = await create(api, { timeoutSeconds: 30 });
      assert.equal(res.status, 201);
      const { id } = await json(res);
      await expectQuota(await api(`/v1/sandboxes/${id}/timeout`, jsonInit('POST', { timeoutSeconds: 100 })), 'maxLifetimeSeconds', 60, 100);
      assert.equal((await api(`/v1/sandboxes/${id}/timeout`, jsonInit('POST', { timeoutSeconds: 45 }))).status, 200);
      // No timeout asked: the default (300 s) is clamped to the quota instead of refused.
      const dflt = await create(api, { timeoutSeconds: undefined });
      assert.equal(dflt.status, 201);
      const info = await json(dflt);
      const lifetime = (Date.parse(info.expiresAt) - Date.parse(info.createdAt)) / 1000;
      assert.equal(lifetime, 60);
    } finally {
      await killAll(api);
    }
  });

  test('policy test reports the quotas against the current use', async () => {
    const api = await tenantWith('report', { maxSandboxes: 1 });
    try {
      assert.equal((await create(api)).status, 201);
      const res = await srv.api('/v1/policies/test', jsonInit('POST', { tenant: 'report', spec: { template: TEMPLATE } }));
      const verdict = await json(res);
      assert.equal(verdict.allowed, false);
      const rule = verdict.rules.find((r: { rule: string }) => r.rule === 'quotas.maxSandboxes');
      assert.deepEqual({ verdict: rule.verdict, limit: rule.limit, used: rule.used }, { verdict: 'deny', limit: 1, used: 1 });
    } finally {
      await killAll(api);
    }
  });

  test('/openapi.json documents the quota fields of the error body', async () => {
    const doc = await json(await fetch(`${srv.url}/openapi.json`));
    const text = JSON.stringify(doc);
    for (const p of ['/v1/tenants', '/v1/keys', '/v1/keys/{id}', '/v1/policies/{tenant}', '/v1/policies/test']) assert.ok(doc.paths[p], p);
    assert.match(text, /429 quota_exceeded: which quota/);
  });
});
