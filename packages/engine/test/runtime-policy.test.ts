/**
 * Tier policy: an operator floor (global and per tenant) that sandbox specs cannot go below,
 * enforced at create with a 422 and a `policy.denied` event.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import { RuntimePolicyChecker } from '../src/sandbox/runtime-policy.js';
import { closeAndClean, removeDataDir, sandboxIdsIn, tempDataDir, TEMPLATES_DIR } from './support.js';

describe('RuntimePolicyChecker', () => {
  const all = ['container', 'gvisor', 'microvm'] as const;

  test('no policy: anything goes, the default is container', () => {
    const p = new RuntimePolicyChecker({}, all);
    assert.equal(p.choose('t', undefined), 'container');
    assert.equal(p.choose('t', 'microvm'), 'microvm');
  });

  test('a floor refuses weaker tiers with 422 and raises the default', () => {
    const p = new RuntimePolicyChecker({ minimum: 'gvisor' }, all);
    assert.throws(() => p.choose('t', 'container'), (e: AirlockError) => e.status === 422 && e.code === 'policy_denied' && e.field === 'runtime' && /gvisor or microvm/.test(e.message));
    assert.equal(p.choose('t', 'gvisor'), 'gvisor');
    assert.equal(p.choose('t', 'microvm'), 'microvm');
    assert.equal(p.choose('t', undefined), 'gvisor');
  });

  test('tenant floors: the stronger of the tenant\'s and the global one applies', () => {
    const p = new RuntimePolicyChecker({ minimum: 'gvisor', tenants: { untrusted: 'microvm', trusted: 'container' } }, all);
    assert.equal(p.floorFor('untrusted'), 'microvm');
    assert.equal(p.floorFor('trusted'), 'gvisor', 'a tenant floor never lowers the global one');
    assert.equal(p.floorFor('other'), 'gvisor');
    assert.throws(() => p.choose('untrusted', 'gvisor'), (e: AirlockError) => e.status === 422);
    assert.equal(p.choose('untrusted', undefined), 'microvm');
  });

  test('the default is raised to the weakest installed tier at or above the floor', () => {
    const p = new RuntimePolicyChecker({ minimum: 'gvisor' }, ['container', 'microvm']);
    assert.equal(p.choose('t', undefined), 'microvm');
    const d = new RuntimePolicyChecker({ default: 'gvisor' }, all);
    assert.equal(d.choose('t', undefined), 'gvisor');
    assert.equal(d.choose('t', 'container'), 'container', 'the default is not a floor');
  });

  test('a policy no installed tier can meet, or naming an unknown tier, is refused up front', () => {
    assert.throws(() => new RuntimePolicyChecker({ minimum: 'microvm' }, ['container', 'gvisor']), /requires microvm or stronger, but this host has only container, gvisor/);
    assert.throws(() => new RuntimePolicyChecker({ tenants: { x: 'microvm' } }, ['container']), /requires microvm/);
    assert.throws(() => new RuntimePolicyChecker({ minimum: 'vm' as never }, all), /"vm" is not one of container, gvisor, microvm/);
  });
});

describe('the engine enforces the floor', () => {
  const hasGvisor = existsSync(process.env['AIRLOCK_RUNSC'] ?? '/usr/local/bin/runsc');
  let engine: Engine;
  let dataDir: string;

  before(async () => {
    if (!hasGvisor) return;
    dataDir = tempDataDir('tierpolicy');
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, runtimePolicy: { tenants: { untrusted: 'gvisor' } } });
  });
  after(async () => {
    if (engine) await closeAndClean(engine, dataDir, sandboxIdsIn(dataDir));
    if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
  });

  test('an untrusted tenant gets gvisor by default and a 422 for container; others are unaffected', { skip: !hasGvisor && 'runsc is not installed' }, async () => {
    const untrusted = { tenant: 'untrusted' };
    await assert.rejects(engine.createSandbox(untrusted, { template: 'tiny', runtime: 'container' }), (e: AirlockError) => e.status === 422 && e.field === 'runtime');
    const denied = engine.listEvents({ tenant: null }, { type: 'policy.denied' });
    assert.equal(denied.length, 1);
    assert.deepEqual(denied[0]!.data, { what: 'runtime', field: 'runtime', requested: 'container', minimum: 'gvisor' });
    assert.equal(denied[0]!.tenant, 'untrusted');

    const s = await engine.createSandbox(untrusted, { template: 'tiny', timeoutSeconds: 60 });
    assert.equal(s.runtime, 'gvisor');
    assert.match((await engine.exec(untrusted, s.id, { cmd: ['dmesg'] })).stdout, /gVisor|Starting/);
    await engine.killSandbox(untrusted, s.id);

    const other = await engine.createSandbox({ tenant: 'trusted' }, { template: 'tiny', timeoutSeconds: 60 });
    assert.equal(other.runtime, 'container');
    await engine.killSandbox({ tenant: 'trusted' }, other.id);
  });

  test('Engine.open refuses a floor this host cannot meet', { skip: !hasGvisor && 'runsc is not installed' }, async () => {
    if (engine.runtimes().includes('microvm')) return;
    const dir = tempDataDir('tierpolicy-bad');
    try {
      await assert.rejects(Engine.open({ dataDir: dir, templatesDir: TEMPLATES_DIR, runtimePolicy: { minimum: 'microvm' } }), /requires microvm or stronger/);
    } finally {
      removeDataDir(dir);
    }
  });
});
