/** The tier floor over HTTP: 422 policy_denied for a weaker runtime, the default raised to the floor. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const hasGvisor = existsSync(process.env['AIRLOCK_RUNSC'] ?? '/usr/local/bin/runsc');

describe('tier policy over REST', { skip: !hasGvisor && 'runsc is not installed' }, () => {
  let srv: TestServer;
  before(async () => { srv = await startTestServer({}, { runtimePolicy: { minimum: 'gvisor' } }); });
  after(async () => { await srv?.close(); });

  const create = (body: unknown) => srv.api('/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  test('container below the floor: 422 policy_denied naming the field; no runtime: the floor', async () => {
    const denied = await create({ template: TEMPLATE, runtime: 'container' });
    assert.equal(denied.status, 422);
    const err = await denied.json() as { error: { code: string; message: string; field?: string } };
    assert.equal(err.error.code, 'policy_denied');
    assert.match(err.error.message, /below this installation's minimum/);

    const ok = await create({ template: TEMPLATE, timeoutSeconds: 60 });
    assert.equal(ok.status, 201, await ok.clone().text());
    const info = await ok.json() as { id: string; runtime: string };
    assert.equal(info.runtime, 'gvisor');
    assert.equal((await srv.api(`/v1/sandboxes/${info.id}`, { method: 'DELETE' })).status, 200);

    const events = await (await srv.api('/v1/events?type=policy.denied')).json() as { events: Array<{ data: { what: string } }> };
    assert.equal(events.events.filter((e) => e.data.what === 'runtime').length, 1);
  });
});
