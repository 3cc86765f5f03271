import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import type { Caller } from '../src/engine-api.js';
import { cgroupCpuSeconds } from '../src/metering/cgroup-usage.js';
import { costOf } from '../src/metering/usage-repo.js';
import { parsePriceSheet } from '../src/metering/prices.js';
import { DEFAULT_PRICES } from '../src/metering/types.js';
import { cgroupsPathFor } from '../src/runtime/container-driver.js';
import { startTestInternet, type TestInternet } from './net-fixture.js';
import { closeAndClean, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin: Caller = { tenant: null };
const acme: Caller = { tenant: 'acme' };
const MIB = 1024 * 1024;
const today = new Date().toISOString().slice(0, 10);

let net: TestInternet;
let engine: Engine;
let dataDir: string;
const ids: string[] = [];

before(async () => {
  net = await startTestInternet();
  dataDir = tempDataDir('meter');
  // Prices chosen so the cost is easy to check: 3600 per vCPU-hour = 1 per CPU-second.
  engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, dnsUpstream: net.dnsUpstream, prices: { vcpuHour: 3600 }, usageSampleMs: 500 });
  engine.createTenant(admin, 'acme');
});

after(async () => {
  try {
    if (engine) await closeAndClean(engine, dataDir, ids);
  } finally {
    if (dataDir && existsSync(dataDir)) removeDataDir(dataDir);
    await net?.close();
  }
});

async function waitFor<T>(what: string, get: () => T, ok: (v: T) => boolean, ms = 5000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = get();
    if (ok(v)) return v;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('metering', () => {
  let cpuSandbox = '';

  test('CPU-seconds match the cgroup counter within 5% for a CPU-bound workload', async () => {
    const s = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 60, resources: { cpus: 1 } });
    ids.push(s.id);
    cpuSandbox = s.id;
    const r = await engine.exec(admin, s.id, { cmd: ['timeout', '2', 'sh', '-c', 'while :; do :; done'], timeoutSeconds: 20 });
    assert.ok(r.exitCode === 124 || r.exitCode === 143, `exit ${r.exitCode}: ${r.stderr}`); // busybox timeout: 143
    const counted = cgroupCpuSeconds(cgroupsPathFor(s.id));
    assert.ok(counted !== null && counted > 1.5, `cgroup counted ${counted} s`);
    await engine.killSandbox(admin, s.id);
    const u = engine.usage(admin, { sandbox: s.id });
    assert.ok(Math.abs(u.cpuSeconds - counted) / counted < 0.05, `metered ${u.cpuSeconds} s, cgroup ${counted} s`);
    assert.ok(u.memoryGiBSeconds > 0, 'memory was sampled');
    assert.ok(u.diskGiBHours > 0, 'reserved disk was charged');
    assert.equal(u.sandboxes.length, 1);
    assert.equal(u.sandboxes[0]!.sandbox, s.id);
    assert.equal(u.days.length, 1);
    assert.equal(u.days[0]!.day, today);
    assert.equal(u.days[0]!.tenant, 'default');
    // 1 per CPU-second (plus the default memory/disk prices' small share).
    assert.ok(u.cost >= u.cpuSeconds - 1e-5 && u.cost < u.cpuSeconds + 0.01, `cost ${u.cost}`);
  });

  test('gVisor: the sandbox cgroup counts its CPU too', async () => {
    const s = await engine.createSandbox(admin, { runtime: 'gvisor', template: 'tiny', timeoutSeconds: 60, resources: { cpus: 1 } });
    ids.push(s.id);
    await engine.exec(admin, s.id, { cmd: ['timeout', '1', 'sh', '-c', 'while :; do :; done'], timeoutSeconds: 20 });
    const counted = cgroupCpuSeconds(cgroupsPathFor(s.id));
    assert.ok(counted !== null && counted > 0.7, `cgroup counted ${counted} s`);
    await engine.killSandbox(admin, s.id);
    const u = engine.usage(admin, { sandbox: s.id });
    assert.ok(Math.abs(u.cpuSeconds - counted) / counted < 0.05, `metered ${u.cpuSeconds} s, cgroup ${counted} s`);
  });

  test('network bytes through the egress proxy are metered', async () => {
    const s = await engine.createSandbox(admin, { template: 'base', timeoutSeconds: 60, network: { allow: ['a.test'] } });
    ids.push(s.id);
    const r = await engine.exec(admin, s.id, { cmd: ['curl', '-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{size_download}', 'http://a.test/bytes/1048576'], timeoutSeconds: 20 });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout.trim(), String(MIB));
    const u = await waitFor('net bytes', () => engine.usage(admin, { sandbox: s.id }), (v) => v.netBytesIn >= MIB);
    assert.ok(u.netBytesOut > 0 && u.netBytesOut < 64 * 1024, `out ${u.netBytesOut}`);
    await engine.killSandbox(admin, s.id);
  });

  test('tenants see only their own usage', async () => {
    const s = await engine.createSandbox(acme, { template: 'tiny', timeoutSeconds: 60 });
    ids.push(s.id);
    await engine.exec(acme, s.id, { cmd: ['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'], timeoutSeconds: 20 });
    await engine.killSandbox(acme, s.id);

    const mine = engine.usage(acme);
    assert.deepEqual(mine.sandboxes.map((x) => x.sandbox), [s.id]);
    assert.ok(mine.days.every((d) => d.tenant === 'acme'));
    assert.ok(mine.cpuSeconds > 0);
    assert.throws(() => engine.usage(acme, { sandbox: cpuSandbox }), (e: { status?: number }) => e.status === 404);
    assert.throws(() => engine.usage(acme, { tenant: 'default' }), (e: { status?: number }) => e.status === 403);
    assert.throws(() => engine.usage({ tenant: 'acme', scope: 'exec', sandbox: s.id }), (e: { status?: number }) => e.status === 403);

    const all = engine.usage(admin);
    assert.ok(all.sandboxes.length >= 4);
    const acmeOnly = engine.usage(admin, { tenant: 'acme' });
    assert.equal(acmeOnly.cpuSeconds, mine.cpuSeconds);
    assert.ok(all.cpuSeconds > acmeOnly.cpuSeconds);
  });

  test('from/to select days', () => {
    assert.equal(engine.usage(admin, { from: '2000-01-01', to: '2000-01-02' }).sandboxes.length, 0);
    const u = engine.usage(admin, { from: today, to: `${today}T23:59:59Z` });
    assert.equal(u.from, today);
    assert.ok(u.sandboxes.length >= 3);
    assert.throws(() => engine.usage(admin, { from: 'yesterday' }), (e: { status?: number }) => e.status === 400);
    assert.throws(() => engine.usage(admin, { from: today, to: '2000-01-01' }), (e: { status?: number }) => e.status === 400);
  });
});

describe('price sheet', () => {
  test('defaults, overrides and refusals', () => {
    assert.deepEqual(parsePriceSheet({}), DEFAULT_PRICES);
    assert.equal(parsePriceSheet({ vcpuHour: 1 }).vcpuHour, 1);
    assert.throws(() => parsePriceSheet({ vcpu: 1 }), /unknown field/);
    assert.throws(() => parsePriceSheet({ vcpuHour: -1 }), /≥ 0/);
    assert.throws(() => parsePriceSheet([]), /object/);
    const p = { vcpuHour: 1, memoryGiBHour: 2, diskGiBHour: 3, netGiB: 4 };
    assert.equal(costOf({ cpuSeconds: 3600, memoryGiBSeconds: 3600, diskGiBHours: 1, netBytesIn: 2 ** 30, netBytesOut: 0 }, p), 10);
  });
});
