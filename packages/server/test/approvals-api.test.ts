/**
 * Approvals over REST and the SDK: a create the policy asks about is held open until someone
 * decides; unanswered, it is denied; scopes decide who may list, approve and deny.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ApiClient, ApiError } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, waitFor, type TestServer } from './helpers.js';

const TENANT = 'appr';

describe('approvals API', () => {
  let srv: TestServer;
  let tenantKey = '';
  let readKey = '';
  let execKey = '';
  let otherKey = '';

  const as = (key: string) => (path: string, init: RequestInit = {}) =>
    srv.api(path, { ...init, headers: { ...(init.headers as Record<string, string> | undefined), authorization: `Bearer ${key}` } });
  const post = (body: unknown): RequestInit => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  async function key(input: Record<string, unknown>): Promise<string> {
    const res = await srv.api('/v1/keys', post(input));
    assert.equal(res.status, 201);
    return (await json(res)).key as string;
  }

  async function pendingOne(): Promise<{ id: string; [k: string]: unknown }> {
    return waitFor('a pending approval', async () => {
      const list = (await json(await srv.api('/v1/approvals?state=pending'))).approvals as Array<{ id: string }>;
      return list[0];
    });
  }

  before(async () => {
    srv = await startTestServer();
    for (const name of [TENANT, 'appr-other']) assert.equal((await srv.api('/v1/tenants', post({ name }))).status, 201);
    const set = await srv.api(`/v1/policies/${TENANT}`, {
      method: 'PUT', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ approvals: { lifetimeAbove: { seconds: 600, action: 'ask' }, timeoutSeconds: 2 } }),
    });
    assert.equal(set.status, 200, await set.text());
    tenantKey = await key({ tenant: TENANT });
    readKey = await key({ tenant: TENANT, scope: 'read' });
    otherKey = await key({ tenant: 'appr-other' });
    const s = await json(await as(tenantKey)('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 60 })));
    execKey = await key({ tenant: TENANT, scope: 'exec', sandbox: s.id });
  });
  after(async () => { await srv?.close(); });

  test('a client that hangs up withdraws its request: expired, nothing to approve, no sandbox', async () => {
    const before = (await json(await as(tenantKey)('/v1/sandboxes'))).sandboxes.length;
    const abort = new AbortController();
    const creating = as(tenantKey)('/v1/sandboxes', { ...post({ template: TEMPLATE, timeoutSeconds: 3000 }), signal: abort.signal });
    creating.catch(() => {});
    const a = await pendingOne();
    abort.abort();
    const gone = await waitFor('the request withdrawn', async () => {
      const cur = await json(await srv.api(`/v1/approvals/${a.id}`));
      return cur.state === 'expired' ? cur : null;
    });
    assert.match(gone.reason, /withdrawn/);
    assert.equal((await srv.api(`/v1/approvals/${a.id}/approve`, post({}))).status, 409);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await json(await as(tenantKey)('/v1/sandboxes'))).sandboxes.length, before, 'no sandbox was created');
  });

  test('the create waits; approved by an admin key it answers 201; read and tenant keys cannot approve', async () => {
    const creating = as(tenantKey)('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 3600 }));
    const a = await pendingOne();
    assert.equal(a.kind, 'lifetime');
    assert.equal(a.tenant, TENANT);
    assert.equal((a.subject as { lifetimeSeconds: number }).lifetimeSeconds, 3600);

    const readList = await as(readKey)('/v1/approvals');
    assert.equal(readList.status, 200);
    assert.ok((await json(readList)).approvals.some((x: { id: string }) => x.id === a.id));
    assert.equal((await as(readKey)(`/v1/approvals/${a.id}/approve`, post({}))).status, 403);
    assert.equal((await as(readKey)(`/v1/approvals/${a.id}/deny`, post({}))).status, 403);
    assert.equal((await as(execKey)('/v1/approvals')).status, 403);
    assert.equal((await as(execKey)(`/v1/approvals/${a.id}`)).status, 403);
    assert.equal((await as(tenantKey)(`/v1/approvals/${a.id}/approve`, post({}))).status, 403, 'the gated tenant cannot approve itself');
    assert.equal((await as(otherKey)(`/v1/approvals/${a.id}`)).status, 404);
    assert.deepEqual((await json(await as(otherKey)('/v1/approvals'))).approvals, []);

    const ok = await srv.api(`/v1/approvals/${a.id}/approve`, post({ reason: 'ok by ops' }));
    assert.equal(ok.status, 200);
    const decided = await json(ok);
    assert.equal(decided.state, 'approved');
    assert.equal(decided.reason, 'ok by ops');
    const res = await creating;
    assert.equal(res.status, 201);
    const s = await json(res);
    assert.ok(Date.parse(s.expiresAt) - Date.parse(s.createdAt) >= 3_599_000);
    assert.equal((await srv.api(`/v1/approvals/${a.id}/deny`, post({}))).status, 409, 'already decided');
    assert.equal((await srv.api(`/v1/sandboxes/${s.id}`, { method: 'DELETE' })).status, 200);
  });

  test('unanswered: 422 approval_denied after the timeout, the request expired; a tenant key may deny its own', async () => {
    // (an earlier test withdrew one request: count from here)
    const expiredBefore = (await json(await srv.api(`/v1/approvals?state=expired`))).approvals.length;
    const eventsBefore = (await json(await srv.api('/v1/events?type=approval.expired'))).events.length;
    const t0 = Date.now();
    const res = await as(tenantKey)('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 3600 }));
    assert.equal(res.status, 422);
    const body = await json(res);
    assert.equal(body.error.code, 'approval_denied');
    assert.ok(Date.now() - t0 >= 1900);
    const expired = (await json(await srv.api(`/v1/approvals?state=expired`))).approvals;
    assert.equal(expired.length, expiredBefore + 1);
    assert.equal((await json(await srv.api(`/v1/approvals/${expired[0].id}`))).state, 'expired');
    const events = await json(await srv.api('/v1/events?type=approval.expired'));
    assert.equal((events.events ?? events).length, eventsBefore + 1);

    const denied = as(tenantKey)('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 3600 }));
    const a = await pendingOne();
    assert.equal((await as(tenantKey)(`/v1/approvals/${a.id}/deny`, post({ reason: 'changed my mind' }))).status, 200);
    const r = await denied;
    assert.equal(r.status, 422);
    assert.match((await json(r)).error.message, /changed my mind/);
  });

  test('POST …/timeout above the threshold waits too; lists filter by state and sandbox', async () => {
    const s = await json(await as(tenantKey)('/v1/sandboxes', post({ template: TEMPLATE, timeoutSeconds: 60 })));
    const extending = as(tenantKey)(`/v1/sandboxes/${s.id}/timeout`, post({ timeoutSeconds: 1800 }));
    const a = await pendingOne();
    assert.equal(a.sandbox, s.id);
    const bySandbox = (await json(await srv.api(`/v1/approvals?sandbox=${s.id}`))).approvals;
    assert.deepEqual(bySandbox.map((x: { id: string }) => x.id), [a.id]);
    assert.equal((await srv.api(`/v1/approvals/${a.id}/approve`, { method: 'POST' })).status, 200, 'no body is fine');
    const res = await extending;
    assert.equal(res.status, 200);
    assert.ok(Date.parse((await json(res)).expiresAt) - Date.now() > 1_700_000);
    assert.equal((await srv.api(`/v1/sandboxes/${s.id}`, { method: 'DELETE' })).status, 200);
  });

  test('bad ids are 400, unknown ones 404; bad filters 400; the routes are in /openapi.json', async () => {
    assert.equal((await srv.api('/v1/approvals/nope')).status, 400);
    assert.equal((await srv.api('/v1/approvals/0123456789ab')).status, 404);
    assert.equal((await srv.api('/v1/approvals/0123456789ab/approve', post({}))).status, 404);
    assert.equal((await srv.api('/v1/approvals?state=maybe')).status, 400);
    assert.equal((await srv.api('/v1/approvals/0123456789ab/approve', post({ reason: 'x'.repeat(1001) }))).status, 400);
    const doc = await json(await srv.api('/openapi.json'));
    for (const p of ['/v1/approvals', '/v1/approvals/{id}', '/v1/approvals/{id}/approve', '/v1/approvals/{id}/deny']) assert.ok(doc.paths[p], p);
  });

  test('the SDK lists, approves and denies; a denied create is an ApiError approval_denied', async () => {
    const admin = new ApiClient({ url: srv.url, apiKey: srv.key });
    const tenant = new ApiClient({ url: srv.url, apiKey: tenantKey });
    const creating = tenant.createSandbox({ template: TEMPLATE, timeoutSeconds: 3600 }).then(() => null, (e: ApiError) => e);
    const a = await waitFor('pending', async () => (await admin.listApprovals({ state: 'pending' }))[0]);
    assert.equal((await admin.getApproval(a.id)).id, a.id);
    const d = await admin.denyApproval(a.id, { reason: 'no' });
    assert.equal(d.state, 'denied');
    const err = await creating;
    assert.ok(err instanceof ApiError);
    assert.equal(err.status, 422);
    assert.equal(err.code, 'approval_denied');
    await assert.rejects(admin.approveApproval(a.id), (e: ApiError) => e.status === 409);
  });
});
