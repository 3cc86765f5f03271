/**
 * Tenants and scoped keys over real HTTP with real sandboxes: tenant isolation on every
 * sandbox route (taken from /openapi.json, so a new route is covered the day it appears),
 * read-only and exec-only keys, revocation, and the failed-auth rate limit with its bounded
 * auth.denied events.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

type Api = (path: string, init?: RequestInit) => Promise<Response>;

function apiFor(srv: TestServer, key: string): Api {
  return (path, init = {}) => fetch(srv.url + path, {
    ...init,
    headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string> | undefined) },
  });
}

const jsonInit = (method: string, body?: unknown): RequestInit => ({
  method,
  ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
});

async function makeKey(srv: TestServer, body: Record<string, unknown>): Promise<{ id: string; key: string }> {
  const res = await srv.api('/v1/keys', jsonInit('POST', body));
  assert.equal(res.status, 201, await res.clone().text());
  return json(res);
}

async function createSandbox(api: Api, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await api('/v1/sandboxes', jsonInit('POST', { template: TEMPLATE, timeoutSeconds: 120, resources: { diskMiB: 64 }, ...extra }));
  assert.equal(res.status, 201, await res.clone().text());
  return (await json(res)).id;
}

/** One request per method of every /v1/sandboxes/{id}… route in the API's own document. */
async function sandboxRoutes(srv: TestServer): Promise<Array<{ method: string; path: string }>> {
  const doc = await json(await fetch(`${srv.url}/openapi.json`));
  const out: Array<{ method: string; path: string }> = [];
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
    if (!path.startsWith('/v1/sandboxes/{id}')) continue;
    for (const method of Object.keys(ops)) if (['get', 'post', 'put', 'patch', 'delete'].includes(method)) out.push({ method: method.toUpperCase(), path });
  }
  return out;
}

/** The status a WebSocket upgrade gets (101 when it opens; the socket is closed at once). */
function upgradeStatus(srv: TestServer, url: string, key: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(srv.url.replace(/^http/, 'ws') + url, { headers: { authorization: `Bearer ${key}` } });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on('open', () => { ws.close(); resolve({ status: 101, body: '' }); });
    ws.on('error', (e) => { if (!/Unexpected server response/.test(e.message)) reject(e); });
  });
}

/** Every sandbox route with `key` on sandbox `id`: each must answer 404 not_found. */
async function expectAllNotFound(srv: TestServer, key: string, id: string): Promise<void> {
  const api = apiFor(srv, key);
  const routes = await sandboxRoutes(srv);
  assert.ok(routes.length >= 15, `found only ${routes.length} sandbox routes`);
  for (const route of routes) {
    const { url, init } = requestFor(route, id);
    // A WebSocket route answers a plain GET 426 whoever asks: probe it with a real upgrade.
    const { status, body } = url.includes('/pty') ? await upgradeStatus(srv, url, key) : await api(url, init).then(async (r) => ({ status: r.status, body: await r.text() }));
    assert.equal(status, 404, `${route.method} ${url}: ${body}`);
    assert.equal(JSON.parse(body).error.code, 'not_found', `${route.method} ${url}`);
  }
}

/** A well-formed request for the route (so only ownership can refuse it). */
function requestFor(route: { method: string; path: string }, id: string): { url: string; init: RequestInit } {
  const path = route.path.replace('{id}', id).replace('{pid}', '2');
  const q = /\/files(\/stat|\/mkdir|\/watch)?$/.test(path) ? '?path=/tmp/x' : path.endsWith('/outputs') ? '?format=list' : '';
  const url = path + q;
  if (route.method === 'PUT') return { url, init: { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: 'x' } };
  const bodies: Array<[RegExp, unknown]> = [
    [/\/exec$/, { cmd: ['true'] }],
    [/\/timeout$/, { timeoutSeconds: 60 }],
    [/\/network$/, { allow: [] }],
    [/\/files\/rename$/, { from: '/tmp/a', to: '/tmp/b' }],
  ];
  const body = bodies.find(([re]) => re.test(path))?.[1];
  return { url, init: jsonInit(route.method, body) };
}

describe('tenants and scoped keys', () => {
  let srv: TestServer;
  let a: Api;
  let b: Api;
  let bKey = '';
  let sbxA = '';
  let sbxA2 = '';

  before(async () => {
    srv = await startTestServer();
    for (const name of ['team-a', 'team-b']) assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name }))).status, 201);
    a = apiFor(srv, (await makeKey(srv, { tenant: 'team-a' })).key);
    bKey = (await makeKey(srv, { tenant: 'team-b' })).key;
    b = apiFor(srv, bKey);
    sbxA = await createSandbox(a);
    sbxA2 = await createSandbox(a);
  });
  after(async () => { await srv?.close(); });

  test('tenant admin: create, list, duplicate 409, bad names 400, non-admin 403', async () => {
    const list = await json(await srv.api('/v1/tenants'));
    assert.deepEqual(list.tenants.map((t: { name: string }) => t.name), ['default', 'team-a', 'team-b']);
    assert.equal(list.tenants.find((t: { name: string }) => t.name === 'team-a').liveSandboxes, 2);
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name: 'team-a' }))).status, 409);
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name: 'Bad Name' }))).status, 400);
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name: 'system' }))).status, 400);
    for (const [path, init] of [['/v1/tenants', {}], ['/v1/keys', {}], ['/v1/tenants', jsonInit('POST', { name: 'x' })], ['/v1/keys', jsonInit('POST', { tenant: 'team-a' })], ['/v1/policies/team-a', jsonInit('PUT', {})]] as Array<[string, RequestInit]>) {
      const res = await a(path, init);
      assert.equal(res.status, 403, `${init.method ?? 'GET'} ${path}`);
      assert.equal((await json(res)).error.code, 'forbidden');
    }
    // A tenant with live sandboxes cannot be removed.
    const rm = await srv.api('/v1/tenants/team-a', { method: 'DELETE' });
    assert.equal(rm.status, 409);
    assert.match((await json(rm)).error.message, /2 live sandboxes/);
  });

  test('keys are shown once and listed without secrets', async () => {
    const k = await makeKey(srv, { tenant: 'team-b', scope: 'read' });
    assert.match(k.key, /^alk_[0-9a-f]{12}_[A-Za-z0-9_-]{32}$/);
    const listed = await srv.api('/v1/keys?tenant=team-b');
    const text = await listed.text();
    assert.ok(!text.includes(k.key.slice('alk_'.length + 13)), 'the secret never appears in a listing');
    const keys = JSON.parse(text).keys as Array<{ id: string; scope: string; tenant: string }>;
    assert.ok(keys.some((x) => x.id === k.id && x.scope === 'read' && x.tenant === 'team-b'));
    assert.equal((await srv.api('/v1/keys', jsonInit('POST', { tenant: 'nope' }))).status, 404);
    assert.equal((await srv.api('/v1/keys', jsonInit('POST', { tenant: 'team-b', scope: 'exec' }))).status, 400, 'exec keys need a sandbox');
    // An exec key for another tenant's sandbox: that sandbox does not exist for team-b.
    assert.equal((await srv.api('/v1/keys', jsonInit('POST', { tenant: 'team-b', scope: 'exec', sandbox: sbxA }))).status, 404);
  });

  test('tenant B cannot see or touch tenant A\'s sandbox on any route: 404, like an unknown id', async () => {
    for (const id of [sbxA, 'zzzzzzzzzzzz']) await expectAllNotFound(srv, bKey, id);
    // Listing: B sees none of A's; the events list and the live follow refuse A's sandbox.
    assert.deepEqual((await json(await b('/v1/sandboxes'))).sandboxes, []);
    assert.equal((await b(`/v1/events?sandbox=${sbxA}`)).status, 404);
    const follow = await b(`/v1/events?sandbox=${sbxA}&follow=1`, { headers: { accept: 'text/event-stream' } });
    assert.equal(follow.status, 404);
    await follow.body?.cancel();
    const bEvents = (await json(await b('/v1/events'))).events as Array<{ tenant: string; sandbox: string | null }>;
    assert.ok(bEvents.every((e) => e.tenant === 'team-b'), 'B sees only its own events');
    assert.ok(!bEvents.some((e) => e.sandbox === sbxA));
    // A still has its sandbox, untouched by all of the above.
    const mine = await json(await a(`/v1/sandboxes/${sbxA}`));
    assert.equal(mine.state, 'running');
    assert.equal((await json(await a(`/v1/sandboxes/${sbxA}/exec`, jsonInit('POST', { cmd: ['echo', 'still mine'] })))).stdout, 'still mine\n');
  });

  test('a live follow of all events by B never carries A\'s events', async () => {
    const ctl = new AbortController();
    const res = await b('/v1/events?follow=1', { headers: { accept: 'text/event-stream' }, signal: ctl.signal });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let seen = '';
    const reading = (async () => {
      try {
        for (;;) {
          const r = await reader.read();
          if (r.done) return;
          seen += new TextDecoder().decode(r.value);
        }
      } catch { /* aborted */ }
    })();
    await a(`/v1/sandboxes/${sbxA}/exec`, jsonInit('POST', { cmd: ['true'] }));
    await new Promise((r) => setTimeout(r, 300));
    ctl.abort();
    await reading;
    assert.ok(!seen.includes(sbxA), 'no event of A reached B');
  });

  test('volumes are per tenant: B gets 404 for A\'s volume', async () => {
    assert.equal((await a('/v1/volumes', jsonInit('POST', { name: 'avol', sizeMiB: 16 }))).status, 201);
    try {
      assert.equal((await b('/v1/volumes/avol')).status, 404);
      assert.equal((await b('/v1/volumes/avol', { method: 'DELETE' })).status, 404);
      assert.deepEqual((await json(await b('/v1/volumes'))).volumes, []);
    } finally {
      assert.equal((await a('/v1/volumes/avol', { method: 'DELETE' })).status, 204);
    }
  });

  test('read-only key: reads work, every write is 403', async () => {
    const r = apiFor(srv, (await makeKey(srv, { tenant: 'team-a', scope: 'read' })).key);
    await a(`/v1/sandboxes/${sbxA}/files?path=/tmp/readme`, { method: 'PUT', body: 'hello' });
    assert.equal((await r(`/v1/sandboxes/${sbxA}`)).status, 200);
    assert.equal((await json(await r('/v1/sandboxes'))).sandboxes.length >= 2, true);
    assert.equal(await (await r(`/v1/sandboxes/${sbxA}/files?path=/tmp/readme`)).text(), 'hello');
    assert.equal((await r(`/v1/sandboxes/${sbxA}/files?path=/tmp`)).status, 200);
    assert.equal((await r(`/v1/events?sandbox=${sbxA}`)).status, 200);
    assert.equal((await r('/v1/templates')).status, 200);
    assert.equal((await r('/v1/policies/team-a')).status, 200, 'a tenant may read its own policy');
    assert.equal((await r('/v1/policies/team-b')).status, 404, 'but not another\'s');
    const writes: Array<[string, RequestInit]> = [
      ['/v1/sandboxes', jsonInit('POST', { template: TEMPLATE })],
      [`/v1/sandboxes/${sbxA}/exec`, jsonInit('POST', { cmd: ['true'] })],
      [`/v1/sandboxes/${sbxA}/files?path=/tmp/w`, { method: 'PUT', body: 'x' }],
      [`/v1/sandboxes/${sbxA}/files?path=/tmp/readme`, { method: 'DELETE' }],
      [`/v1/sandboxes/${sbxA}/network`, jsonInit('PATCH', { allow: [] })],
      [`/v1/sandboxes/${sbxA}/timeout`, jsonInit('POST', { timeoutSeconds: 60 })],
      [`/v1/sandboxes/${sbxA}/pause`, jsonInit('POST')],
      [`/v1/sandboxes/${sbxA}`, { method: 'DELETE' }],
      ['/v1/volumes', jsonInit('POST', { name: 'v', sizeMiB: 16 })],
    ];
    for (const [path, init] of writes) {
      const res = await r(path, init);
      assert.equal(res.status, 403, `${init.method} ${path}: ${await res.clone().text()}`);
      assert.equal((await json(res)).error.code, 'forbidden');
    }
    assert.equal((await json(await a(`/v1/sandboxes/${sbxA}`))).state, 'running');
  });

  test('exec-only key: exec and files on its sandbox; another sandbox 404; create, kill, list 403', async () => {
    const xKey = (await makeKey(srv, { tenant: 'team-a', scope: 'exec', sandbox: sbxA })).key;
    const x = apiFor(srv, xKey);
    const ran = await x(`/v1/sandboxes/${sbxA}/exec`, jsonInit('POST', { cmd: ['echo', 'exec key'] }));
    assert.equal(ran.status, 200);
    assert.equal((await json(ran)).stdout, 'exec key\n');
    assert.equal((await x(`/v1/sandboxes/${sbxA}/files?path=/tmp/by-exec-key`, { method: 'PUT', body: 'y' })).status, 200);
    assert.equal((await x(`/v1/sandboxes/${sbxA}`)).status, 200);
    // Every route on a sibling sandbox of the same tenant: not found.
    await expectAllNotFound(srv, xKey, sbxA2);
    for (const [path, init] of [
      ['/v1/sandboxes', jsonInit('POST', { template: TEMPLATE })],
      ['/v1/sandboxes', {}],
      [`/v1/sandboxes/${sbxA}`, { method: 'DELETE' }],
      [`/v1/sandboxes/${sbxA}/timeout`, jsonInit('POST', { timeoutSeconds: 60 })],
      ['/v1/events', {}],
      ['/v1/volumes', {}],
    ] as Array<[string, RequestInit]>) {
      const res = await x(path, init);
      assert.equal(res.status, 403, `${init.method ?? 'GET'} ${path}`);
    }
  });

  test('a revoked key answers 401 at once (it was cached as valid a moment before)', async () => {
    const k = await makeKey(srv, { tenant: 'team-b' });
    const kb = apiFor(srv, k.key);
    assert.equal((await kb('/v1/sandboxes')).status, 200);
    assert.equal((await srv.api(`/v1/keys/${k.id}`, { method: 'DELETE' })).status, 204);
    const res = await kb('/v1/sandboxes');
    assert.equal(res.status, 401);
    const keys = (await json(await srv.api('/v1/keys?tenant=team-b'))).keys as Array<{ id: string; revokedAt: string | null }>;
    assert.ok(keys.find((x) => x.id === k.id)?.revokedAt);
    assert.equal((await srv.api('/v1/keys/0123456789ab', { method: 'DELETE' })).status, 404);
  });

  test('tenant rm revokes its keys; refused while it has live sandboxes', async () => {
    assert.equal((await srv.api('/v1/tenants', jsonInit('POST', { name: 'team-c' }))).status, 201);
    const c = apiFor(srv, (await makeKey(srv, { tenant: 'team-c' })).key);
    const id = await createSandbox(c);
    assert.equal((await srv.api('/v1/tenants/team-c', { method: 'DELETE' })).status, 409);
    assert.equal((await c(`/v1/sandboxes/${id}`, { method: 'DELETE' })).status, 200);
    assert.equal((await srv.api('/v1/tenants/team-c', { method: 'DELETE' })).status, 204);
    assert.equal((await c('/v1/sandboxes')).status, 401);
    assert.equal((await srv.api('/v1/tenants/team-c', { method: 'DELETE' })).status, 404);
    assert.equal((await srv.api('/v1/tenants/default', { method: 'DELETE' })).status, 409);
  });

  test('admin sees every tenant\'s sandboxes', async () => {
    const all = (await json(await srv.api('/v1/sandboxes'))).sandboxes as Array<{ id: string; tenant: string }>;
    assert.ok(all.some((s) => s.id === sbxA && s.tenant === 'team-a'));
  });
});

describe('failed authentication is rate-limited per address', () => {
  let srv: TestServer;
  before(async () => { srv = await startTestServer({ authRateLimit: { burst: 20, perMinute: 30 } }); });
  after(async () => { await srv?.close(); });

  test('20 failures, then 429 with Retry-After even for a good key; auth.denied events are coalesced', async () => {
    const k = await makeKey(srv, { tenant: 'default' });
    const secret = 'alk_' + k.id + '_' + 'A'.repeat(32);
    const started = Date.now();
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      const res = await fetch(`${srv.url}/v1/sandboxes`, { headers: { authorization: `Bearer ${i % 2 ? secret : 'nope'}` } });
      statuses.push(res.status);
      if (res.status === 429) {
        assert.ok(Number(res.headers.get('retry-after')) >= 1);
        assert.equal((await json(res)).error.code, 'rate_limited');
      } else await res.body?.cancel();
    }
    assert.deepEqual(statuses.slice(0, 20), new Array(20).fill(401));
    assert.ok(statuses.slice(20).every((s) => s === 429), statuses.join(','));
    const good = await srv.api('/v1/sandboxes');
    assert.equal(good.status, 429, 'a correct key from a blocked address waits too');
    const wait = Number(good.headers.get('retry-after'));
    await good.body?.cancel();
    assert.ok(wait >= 1 && wait <= 2, `retry-after ${wait}`);

    await new Promise((r) => setTimeout(r, 1500)); // the summary of the last window is written
    const elapsedS = (Date.now() - started) / 1000;
    const denied = srv.engine.listEvents({ tenant: null }, { type: 'auth.denied', limit: 10_000 });
    const total = denied.reduce((n, e) => n + (e.data.reason === 'coalesced' ? Number(e.data.count) : 1), 0);
    assert.equal(total, 61, 'every refusal is counted');
    assert.ok(denied.length <= 2 * (Math.ceil(elapsedS) + 1) * 2, `${denied.length} events in ${elapsedS} s: coalesced`);
    assert.ok(denied.some((e) => e.tenant === 'default' && (e.data.keyId === k.id || (e.data.keyIds as string[] | undefined)?.includes(k.id))),
      'a real key id names its tenant');
    assert.ok(!JSON.stringify(denied).includes('A'.repeat(32)), 'the presented secret is never recorded');

    // After the wait the address may try again.
    await new Promise((r) => setTimeout(r, wait * 1000));
    assert.equal((await srv.api('/v1/sandboxes')).status, 200);
  });
});
