/**
 * `airlock usage` against `airlock serve --prices … --metrics-public` (a child process) and in
 * embedded mode; serve's JSON logs with request ids. Real sandboxes (`tiny`), real SQLite.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadPriceSheet } from '../src/commands/serve-observability.js';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

function baseEnv(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], env: NodeJS.ProcessEnv): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { env: { ...baseEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 90_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

describe('airlock usage against airlock serve', () => {
  let dir = '';
  let dataDir = '';
  let server: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  let out = '';
  let url = '';
  let env: NodeJS.ProcessEnv = {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'airlock-test-usage-cli-'));
    // Its own temp dir (not one inside `dir`): sandboxes must be able to traverse down to their rootfs.
    dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-usage-cli-data-'));
    // 3600 per vCPU-hour: the cost is the CPU-seconds (plus the small default memory/disk share).
    writeFileSync(join(dir, 'prices.json'), JSON.stringify({ vcpuHour: 3600 }));
    const child = spawn(process.execPath, [MAIN, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--prices', join(dir, 'prices.json'), '--metrics-public'], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    server = child;
    exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not start: ${out}`)), 60_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /airlockd listening on (http:\/\/\S+)/.exec(out);
        if (m) { clearTimeout(timer); resolve(m[1]!); }
      });
      child.on('exit', () => reject(new Error(`serve exited: ${out}`)));
    });
    env = { AIRLOCK_URL: url, AIRLOCK_API_KEY: readFileSync(join(dataDir, 'admin.key'), 'utf8').trim() };
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('prints usage with cost from the price sheet; /metrics is public; logs are JSON with request ids', async () => {
    const run = airlock(['run', '--template', 'tiny', '--', 'sh', '-c', 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done'], env);
    assert.equal(run.code, 0, run.stderr);
    const j = airlock(['usage', '--json'], env);
    assert.equal(j.code, 0, j.stderr);
    const u = JSON.parse(j.stdout);
    assert.equal(u.sandboxes.length, 1);
    assert.ok(u.cpuSeconds > 0);
    assert.ok(u.cost >= u.cpuSeconds - 1e-9 && u.cost < u.cpuSeconds + 0.01, `cost ${u.cost} for ${u.cpuSeconds} CPU-s`);
    const table = airlock(['usage', '--from', new Date().toISOString().slice(0, 10)], env);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^DAY +TENANT +CPU S/m);
    assert.match(table.stdout, new RegExp(`^${u.sandboxes[0].sandbox} +default `, 'm'));
    assert.match(table.stdout, /^TOTAL /m);
    const both = airlock(['usage', '--sandbox', 'x', '--tenant', 'y'], env);
    assert.equal(both.code, 2, both.stderr);

    const metrics = await fetch(`${url}/metrics`, { headers: { 'x-request-id': 'airlock-usage-cli-1' } });
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^airlock_exec_seconds_count\{runtime="container"\} 1$/m);
    await new Promise((r) => setTimeout(r, 100));
    const logged = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(logged.some((l) => l.reqId === 'airlock-usage-cli-1' && l.msg === 'request completed'), out.slice(-2000));
  });

  it('--prices refuses a bad sheet', () => {
    writeFileSync(join(dir, 'bad.json'), '{"cpu": 1}');
    assert.throws(() => loadPriceSheet(join(dir, 'bad.json')), /unknown field "cpu"/);
    assert.throws(() => loadPriceSheet(join(dir, 'absent.json')), /--prices/);
  });
});

describe('airlock usage, embedded', () => {
  it('reads the data dir as admin', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-test-usage-embedded-'));
    try {
      const r = airlock(['usage', '--data-dir', dir, '--json'], {});
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout).sandboxes, []);
      assert.ok(existsSync(join(dir, 'airlock.db')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
