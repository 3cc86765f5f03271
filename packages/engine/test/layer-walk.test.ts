/**
 * The writable-layer walk behind file.changes: the layer's content is the sandbox's, so no link
 * may lead the walk or a hash out of it, at the last component or any before it.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { hashLayerFile, walkLayer } from '../src/telemetry/layer-walk.js';

const root = mkdtempSync(join(tmpdir(), 'airlock-test-layerwalk-'));
after(() => rmSync(root, { recursive: true, force: true }));
const limits = { maxEntries: 1000, budgetMs: 5000 };

test('lists files, dirs and links without following links; hashes only inside', async () => {
  mkdirSync(join(root, 'work/sub'), { recursive: true });
  writeFileSync(join(root, 'work/sub/f'), 'hello');
  symlinkSync('/etc', join(root, 'etc-link'));
  symlinkSync('/etc/passwd', join(root, 'work/pw'));
  const w = await walkLayer(root, limits);
  assert.equal(w.complete, true);
  assert.deepEqual([...w.entries.keys()].sort(), ['/etc-link', '/work', '/work/pw', '/work/sub', '/work/sub/f']);
  assert.equal(w.entries.get('/etc-link')!.type, 'symlink');
  assert.equal(await hashLayerFile(root, 'work/sub/f', 1024), '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
  // A link as the last component, or as any directory on the way, is never followed.
  assert.equal(await hashLayerFile(root, 'work/pw', 1 << 20), null);
  assert.equal(await hashLayerFile(root, 'etc-link/passwd', 1 << 20), null);
  assert.equal(await hashLayerFile(root, '../etc/passwd', 1 << 20), null);
  assert.equal(await hashLayerFile(root, 'work/sub/f', 2), null, 'over the cap');
});

test('a directory swapped for a link is not descended into', async () => {
  const r2 = join(root, 'swap');
  mkdirSync(join(r2, 'd'), { recursive: true });
  writeFileSync(join(r2, 'd/x'), 'x');
  rmSync(join(r2, 'd'), { recursive: true });
  symlinkSync('/etc', join(r2, 'd'));
  const w = await walkLayer(r2, limits);
  assert.deepEqual([...w.entries.keys()], ['/d']);
  assert.equal(w.entries.get('/d')!.type, 'symlink');
});

test('a missing layer is reported as missing; the entry budget makes it incomplete', async () => {
  assert.equal((await walkLayer(join(root, 'nope'), limits)).missing, true);
  const many = join(root, 'many');
  mkdirSync(many);
  for (let i = 0; i < 50; i++) writeFileSync(join(many, `f${i}`), '');
  const w = await walkLayer(many, { maxEntries: 10, budgetMs: 5000 });
  assert.equal(w.complete, false);
  assert.equal(w.entries.size, 10);
});
