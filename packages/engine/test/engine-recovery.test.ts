import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { Engine } from '../src/engine.js';
import { assertHostClean, hostLeftovers, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };
const child = join(fileURLToPath(new URL('.', import.meta.url)), 'crash-child.js');

function crashAfterCreating(dataDir: string, timeouts: number[]): string[] {
  // The child kills itself with SIGKILL once it has printed the ids, as a crashing daemon would.
  const r = spawnSync(process.execPath, [child, dataDir, TEMPLATES_DIR, ...timeouts.map(String)], { timeout: 60_000 });
  assert.equal(r.signal, 'SIGKILL', r.stderr.toString());
  return JSON.parse(r.stdout.toString().trim().split('\n').pop()!) as string[];
}

test('after a daemon crash, the next engine adopts live sandboxes and cleans up expired ones', async () => {
  const dataDir = tempDataDir('recovery');
  let ids: string[] = [];
  try {
    ids = crashAfterCreating(dataDir, [300, 1]);
    const [keepId, expireId] = ids as [string, string];
    await new Promise((r) => setTimeout(r, 1500));
    // Both containers outlived their crashed owner.
    assert.equal(hostLeftovers(dataDir, ids).filter((l) => l.startsWith('runc')).length, 1);

    const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
    try {
      assert.equal(engine.getSandbox(admin, expireId).state, 'expired');
      assert.deepEqual(hostLeftovers(dataDir, [expireId]).filter((l) => l.includes(expireId)), []);
      assert.equal(engine.getSandbox(admin, keepId).state, 'running');
      const r = await engine.exec(admin, keepId, { cmd: ['echo', 'adopted'] });
      assert.equal(r.stdout, 'adopted\n');
      await engine.killSandbox(admin, keepId);
    } finally {
      await engine.close();
    }
    assertHostClean(dataDir, ids);
  } finally {
    removeDataDir(dataDir);
  }
});

test('a sandbox whose container vanished while no engine ran is marked failed and its leftovers removed', async () => {
  const dataDir = tempDataDir('vanish');
  try {
    const ids = crashAfterCreating(dataDir, [300]);
    const id = ids[0]!;
    // Simulate the runtime losing it (e.g. host reboot): kill the container behind Airlock's back.
    execFileSync('runc', ['--root', join(dataDir, 'runc'), 'kill', id, 'KILL']);
    await new Promise((r) => setTimeout(r, 300));
    const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
    try {
      const s = engine.getSandbox(admin, id);
      assert.equal(s.state, 'failed');
      assert.match(s.reason ?? '', /lost/);
    } finally {
      await engine.close();
    }
    assertHostClean(dataDir, ids);
  } finally {
    removeDataDir(dataDir);
  }
});

test('a sandbox whose agent dies is detected and ended', async () => {
  const dataDir = tempDataDir('agentdeath');
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  try {
    const s = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 300 });
    execFileSync('runc', ['--root', join(dataDir, 'runc'), 'kill', s.id, 'KILL']);
    for (let i = 0; i < 100 && engine.getSandbox(admin, s.id).state === 'running'; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(engine.getSandbox(admin, s.id).state, 'failed');
    assertHostClean(dataDir, [s.id]);
  } finally {
    await engine.close();
    removeDataDir(dataDir);
  }
});
