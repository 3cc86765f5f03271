/**
 * PATCH /v1/sandboxes/:id/network and the network fields over HTTP. Egress itself (DNS, proxy,
 * nftables against a test internet) is covered in the engine's network.test.ts; here the
 * contract: shapes, validation, status codes, the SDK and /openapi.json.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '@airlock/sdk';
import { startTestServer, TEMPLATE, type TestServer } from './helpers.js';

// Nothing is resolved in these tests; an upstream that answers nothing is enough.
const DNS_UPSTREAM = '127.0.0.1:9';

describe('network policy API', () => {
  let srv: TestServer;
  before(async () => { srv = await startTestServer({}, { dnsUpstream: DNS_UPSTREAM }); });
  after(async () => { await srv?.close(); });

  test('create with an allowlist, patch it live, read it back', async () => {
    const res = await srv.api('/v1/sandboxes', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ template: TEMPLATE, timeoutSeconds: 60, network: { allow: ['a.test', '*.w.test:443'], bandwidthMbps: 50 } }),
    });
    assert.equal(res.status, 201, await res.clone().text());
    const info = await res.json() as { id: string; network: { allow: string[]; deny: string[]; bandwidthMbps?: number } };
    assert.deepEqual(info.network, { allow: ['a.test', '*.w.test:443'], deny: [], bandwidthMbps: 50 });

    const patch = (body: unknown) => srv.api(`/v1/sandboxes/${info.id}/network`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const p = await patch({ deny: ['a.test'] });
    assert.equal(p.status, 200, await p.clone().text());
    const patched = await p.json() as { network: { allow: string[]; deny: string[] }; cut: number };
    assert.deepEqual(patched.network.allow, ['a.test', '*.w.test:443']);
    assert.deepEqual(patched.network.deny, ['a.test']);
    assert.equal(patched.cut, 0);

    for (const bad of [{ allow: ['https://a.test/'] }, { allow: ['[2001:db8::1]'] }, { nope: 1 }, { bandwidthMbps: 0 }]) {
      const r = await patch(bad);
      assert.equal(r.status, 400, JSON.stringify(bad));
      const body = await r.json() as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'bad_request');
    }
    const malformed = await srv.api(`/v1/sandboxes/${info.id}/network`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: '{"allow": [' });
    assert.equal(malformed.status, 400);

    // The SDK, then the network taken away.
    const client = new ApiClient({ url: srv.url, apiKey: srv.key });
    const viaSdk = await client.updateNetwork(info.id, { allow: [] });
    assert.deepEqual(viaSdk.network.allow, []);
    const events = await (await srv.api(`/v1/events?sandbox=${info.id}&type=network.updated`)).json() as { events: unknown[] };
    assert.equal(events.events.length, 2);

    await srv.api(`/v1/sandboxes/${info.id}`, { method: 'DELETE' });
    const gone = await patch({ allow: ['a.test'] });
    assert.equal(gone.status, 409);
    const unknown = await srv.api('/v1/sandboxes/zzzzzzzzzzzz/network', { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(unknown.status, 404);
  });

  test('/openapi.json documents the PATCH', async () => {
    const doc = await (await srv.api('/openapi.json')).json() as { paths: Record<string, Record<string, unknown>> };
    assert.ok(doc.paths['/v1/sandboxes/{id}/network']?.patch);
  });
});
