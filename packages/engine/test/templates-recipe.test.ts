/**
 * Recipes: validation with field-naming errors, digest stability, layer reuse by prefix,
 * files copied from the recipe's directory (and nothing outside it), run steps in the
 * template, progress lines and the build log.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SANDBOX_ID_BASE } from '../src/constants.js';
import { buildTemplate, builtinRecipeDigest } from '../src/template/build-template.js';
import { parseRecipe } from '../src/template/recipe.js';
import { planRecipe } from '../src/template/recipe-plan.js';
import { TemplateStore } from '../src/template/template-store.js';
import { errorCode, tmpTemplates } from './templates-support.js';

function recipeDir(t: { after: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-recipe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function fieldOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    assert.ok(errorCode('bad_request')(e), String(e));
    return (e as { field?: string }).field;
  }
  assert.fail('the recipe was accepted');
}

test('recipes are validated with errors that name the field', async () => {
  const cases: Array<[unknown, string]> = [
    [{ packages: ['python3', 'rm -rf /'] }, 'packages.1'],
    [{ packages: 'python3' }, 'packages'],
    [{ suite: 'Bookworm!' }, 'suite'],
    [{ variant: 'huge' }, 'variant'],
    [{ bootstrap: 'alpine' }, 'bootstrap'],
    [{ workdir: 'relative' }, 'workdir'],
    [{ workdir: '/a/../b' }, 'workdir'],
    [{ run: ['echo ok', ''] }, 'run.1'],
    [{ env: { 'BAD-KEY': 'x' } }, 'env.BAD-KEY'],
    [{ env: { DEBUG: true } }, 'env.DEBUG'],
    [{ files: [{ src: '../etc/passwd', dest: '/x' }] }, 'files.0.src'],
    [{ files: [{ src: '/etc/passwd', dest: '/x' }] }, 'files.0.src'],
    [{ files: [{ src: 'a', dest: 'x' }] }, 'files.0.dest'],
    [{ files: [{ src: 'a', dest: '/x', mode: '999' }] }, 'files.0.mode'],
    [{ unknown: 1 }, ''],
    [{ bootstrap: 'busybox', packages: ['python3'] }, 'packages'],
    [{ bootstrap: 'busybox', suite: 'bookworm' }, 'suite'],
  ];
  for (const [recipe, field] of cases) {
    const got = await fieldOf(parseRecipe(recipe, '/nonexistent'));
    if (field) assert.equal(got, field, JSON.stringify(recipe));
  }
  await assert.rejects(parseRecipe('packages: [a\n  b: c', null), /not valid YAML/);
  await assert.rejects(parseRecipe({ files: [{ src: 'a', dest: '/a' }] }, null), /needs the recipe's directory/);
});

test('identical recipes give identical digests, whatever their spelling', async () => {
  const a = await planRecipe(await parseRecipe('packages: [jq, curl]\nrun: ["echo hi"]\n', null));
  const b = await planRecipe(await parseRecipe({ bootstrap: 'debootstrap', suite: 'bookworm', variant: 'minbase', packages: ['curl', 'jq', 'jq'], run: ['echo hi'], workdir: '/work' }, null));
  const c = await planRecipe(await parseRecipe('{"packages": ["curl", "jq"], "run": ["echo hi"]}', null));
  assert.equal(a.digest, b.digest);
  assert.equal(a.digest, c.digest);
  assert.deepEqual(a.steps.map((s) => s.hex), b.steps.map((s) => s.hex));
  const other = await planRecipe(await parseRecipe({ packages: ['curl', 'jq'], run: ['echo bye'] }, null));
  assert.notEqual(other.digest, a.digest);
  // Same prefix, same layers: debootstrap and packages are shared, the run step is not.
  assert.deepEqual(other.steps.slice(0, 2).map((s) => s.hex), a.steps.slice(0, 2).map((s) => s.hex));
  assert.notEqual(other.steps[2]!.hex, a.steps[2]!.hex);
  // Numbers in env become strings; (unquoted file modes like 0755 are octal: the files test.)
  const numeric = await parseRecipe('bootstrap: busybox\nworkdir: /w\nenv: {PORT: 8080}\n', null);
  assert.deepEqual(numeric.env, { PORT: '8080' });
  // The built-in recipes have stable digests too.
  assert.equal(await builtinRecipeDigest('tiny'), await builtinRecipeDigest('tiny'));
  assert.match(await builtinRecipeDigest('base'), /^sha256:[a-f0-9]{64}$/);
});

test('an extended recipe reuses the layers of its unchanged prefix and only builds the rest', async (t) => {
  const dir = tmpTemplates(t, 'reuse');
  const v1 = { bootstrap: 'busybox', run: ['echo one > /one', 'sleep 1; echo two > /two'] };
  const first: string[] = [];
  let started = Date.now();
  const a = await buildTemplate(dir, 'app', { recipe: v1, log: (l) => first.push(l) });
  const firstMs = Date.now() - started;
  assert.equal(a.layers, 4);
  assert.ok(first.filter((l) => /building layer/.test(l)).length === 4, first.join('\n'));

  const v2 = { ...v1, run: [...v1.run, 'echo three > /three'] };
  const second: string[] = [];
  started = Date.now();
  const b = await buildTemplate(dir, 'app', { recipe: v2, log: (l) => second.push(l) });
  const secondMs = Date.now() - started;
  assert.notEqual(b.digest, a.digest);
  assert.equal(b.layers, 5);
  const reused = second.filter((l) => /reusing layer/.test(l));
  assert.equal(reused.length, 3, second.join('\n'));
  assert.match(reused[0]!, /\[1\/5\] busybox/);
  assert.match(reused[2]!, /\[3\/5\] run: sleep 1/);
  // The slow step (sleep 1) is not run again.
  assert.ok(secondMs < firstMs && secondMs < 1000, `second build took ${secondMs} ms, the first ${firstMs} ms`);

  // The replaced template's finalize layer is garbage: only what the new one uses stays.
  const store = new TemplateStore(dir);
  const used = store.manifest('app')!.layers!;
  assert.deepEqual(readdirSync(join(dir, '_layers')).sort(), [...used].sort());
  // Another template with the same prefix shares layers on disk.
  const other = await buildTemplate(dir, 'other', { recipe: v1 });
  assert.equal(store.manifest('other')!.layers!.at(-1), used.at(-1), 'same busybox layer');
  assert.equal(other.layers, 4);
});

test('files are copied from the recipe directory with their modes; links out of it are refused', async (t) => {
  const dir = tmpTemplates(t, 'files');
  const src = recipeDir(t);
  mkdirSync(join(src, 'app'));
  writeFileSync(join(src, 'app', 'main.sh'), '#!/bin/sh\necho "main says $GREETING"\n');
  writeFileSync(join(src, 'notes.txt'), 'hello\n');
  writeFileSync(join(src, 'recipe.yaml'), [
    'bootstrap: busybox',
    'files:',
    '  - {src: app/main.sh, dest: /opt/app/main.sh, mode: 0755}',
    '  - {src: notes.txt, dest: /bin/notes.txt}',
    'run: ["/opt/app/main.sh > /opt/app/out.txt"]',
    'env: {GREETING: "hi there"}',
  ].join('\n'));
  const lines: string[] = [];
  await buildTemplate(dir, 'files', { file: join(src, 'recipe.yaml'), log: (l) => lines.push(l) });
  const tpl = new TemplateStore(dir).require('files');
  const filesLayer = tpl.layers[2]!;
  const main = statSync(join(filesLayer, 'opt/app/main.sh'));
  assert.equal(main.mode & 0o7777, 0o755);
  assert.equal(main.uid, SANDBOX_ID_BASE);
  assert.equal(statSync(join(filesLayer, 'opt/app')).uid, SANDBOX_ID_BASE, 'created parents belong to the sandbox root');
  // /bin is a real directory in the busybox layer; the copy lands there, in the files layer.
  assert.equal(readFileSync(join(filesLayer, 'bin/notes.txt'), 'utf8'), 'hello\n');
  assert.equal(statSync(join(filesLayer, 'bin/notes.txt')).mode & 0o7777, 0o644);
  assert.equal(readFileSync(join(tpl.layers[1]!, 'opt/app/out.txt'), 'utf8'), 'main says hi there\n', 'run steps see the env and the files');
  assert.ok(lines.some((l) => l.includes('app/main.sh -> /opt/app/main.sh (0755)')), lines.join('\n'));

  // A link inside the recipe directory that leads out of it is refused.
  symlinkSync('/etc/shadow', join(src, 'shadow'));
  writeFileSync(join(src, 'evil.yaml'), 'bootstrap: busybox\nfiles: [{src: shadow, dest: /x}]\n');
  await assert.rejects(buildTemplate(dir, 'evil', { file: join(src, 'evil.yaml') }), /leads outside the recipe's directory/);
  mkdirSync(join(src, 'sub'));
  symlinkSync('..', join(src, 'sub', 'up'));
  writeFileSync(join(src, 'evil2.yaml'), 'bootstrap: busybox\nfiles: [{src: sub/up/notes.txt, dest: /x}]\n');
  // Resolves to a file that is inside the directory after all: allowed.
  await buildTemplate(dir, 'fine', { file: join(src, 'evil2.yaml') });
  assert.equal(new TemplateStore(dir).has('evil'), false);
});

test('a failing run step fails the build with its exit status, keeps the log, and leaves the old template', async (t) => {
  const dir = tmpTemplates(t, 'fail');
  const good = await buildTemplate(dir, 'app', { recipe: { bootstrap: 'busybox', run: ['echo ok'] } });
  const lines: string[] = [];
  await assert.rejects(
    buildTemplate(dir, 'app', { recipe: { bootstrap: 'busybox', run: ['echo ok', 'echo about to fail; exit 3'] }, log: (l) => lines.push(l) }),
    /step failed with exit status 3/,
  );
  assert.ok(lines.some((l) => l.includes('about to fail')), 'step output is part of the progress');
  assert.equal(new TemplateStore(dir).info('app')?.digest, good.digest, 'the previous template still stands');
  const logs = readdirSync(join(dir, '_logs')).filter((f) => f.startsWith('app-'));
  assert.equal(logs.length, 2);
  const failedLog = readFileSync(join(dir, '_logs', logs.sort()[1]!), 'utf8');
  assert.match(failedLog, /about to fail/);
  assert.match(failedLog, /build of app failed/);
  assert.deepEqual(readdirSync(join(dir, '_tmp')), []);
  // Steps run with the hardened sandbox config (user namespace) but the host network.
  await buildTemplate(dir, 'probe', {
    recipe: { bootstrap: 'busybox', run: ['cat /proc/self/uid_map > /uidmap'] },
  });
  const probe = new TemplateStore(dir).require('probe').layers[1]!;
  assert.match(readFileSync(join(probe, 'uidmap'), 'utf8'), new RegExp(`^\\s*0\\s+${SANDBOX_ID_BASE}\\s+65536`));
});
