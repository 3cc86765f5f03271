import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { detectCgroups, idRangeConflicts, runDoctor } from '../src/doctor.js';

const EXPECTED = [
  'root', 'kernel', 'cgroups', 'runc', 'crun', 'runsc', 'uid-range', 'userns',
  'overlayfs', 'disk-images', 'nftables', 'egress', 'kvm', 'microvm', 'templates', 'data-dir',
];

function runscProbeDirs(): string[] {
  return readdirSync(tmpdir()).filter((n) => n.startsWith('airlock-doctor-runsc-'));
}

test('doctor reports every check, and the container tier is healthy on this machine', { timeout: 60_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-doctor-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  chmodSync(dataDir, 0o711);
  const probeDirsBefore = runscProbeDirs();

  const checks = await runDoctor({ dataDir, templatesDir: join(dataDir, 'templates') });
  const byName = new Map(checks.map((c) => [c.name, c]));
  assert.deepEqual(checks.map((c) => c.name), EXPECTED);
  for (const c of checks) assert.ok(c.detail.length > 0, `${c.name} has a detail`);

  for (const name of ['root', 'kernel', 'cgroups', 'runc', 'crun', 'userns', 'overlayfs', 'disk-images', 'nftables', 'egress', 'uid-range', 'data-dir']) {
    const c = byName.get(name);
    assert.ok(c?.ok, `${name}: ${c?.detail}`);
  }
  assert.match(byName.get('runc')!.detail, /libseccomp \d/);
  assert.match(byName.get('cgroups')!.detail, /^(v1|hybrid|v2);/);
  for (const ctrl of ['memory', 'cpu', 'cpuacct', 'pids', 'freezer']) {
    assert.match(byName.get('cgroups')!.detail, new RegExp(`\\b${ctrl}\\b`));
  }
  // scripts/setup-host.sh installs Debian 13's runsc, whose systrap platform runs here.
  assert.ok(byName.get('runsc')?.ok, byName.get('runsc')?.detail);
  assert.match(byName.get('runsc')!.detail, /systrap/);
  // An empty templates dir: the check fails and says what is missing and how to fix it.
  assert.equal(byName.get('templates')?.ok, false);
  assert.match(byName.get('templates')!.detail, /missing base, tiny/);
  assert.match(byName.get('kvm')!.detail, /microvm tier/);
  // The runsc probe cleans its state dir.
  assert.deepEqual(runscProbeDirs(), probeDirsBefore);
});

test('doctor never throws: bad paths become failed checks', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-doctor-bad-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o777);
  const checks = await runDoctor({ dataDir: dir, templatesDir: '/proc/nonexistent/templates' });
  const dataDir = checks.find((c) => c.name === 'data-dir');
  assert.equal(dataDir?.ok, false);
  assert.match(dataDir!.detail, /writable by group or others/);
  const missing = await runDoctor({ dataDir: join(dir, 'not', 'yet'), templatesDir: dir });
  assert.match(missing.find((c) => c.name === 'data-dir')!.detail, /does not exist yet/);
  assert.equal(missing.find((c) => c.name === 'templates')?.ok, false);
});

test('cgroup layout and id range are read from the real host', () => {
  const layout = detectCgroups();
  assert.notEqual(layout.mode, 'none');
  assert.ok(layout.controllers.includes('memory'));
  assert.deepEqual(idRangeConflicts(), []);
  // A range that certainly holds root (uid 0) is reported as taken.
  assert.ok(idRangeConflicts(0, 1).some((c) => c.file === '/etc/passwd' && c.who === 'root'));
});
