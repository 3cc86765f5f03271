/**
 * The machine's `base` template (packages/engine/templates/base.yaml) under real sandboxes,
 * and a recipe extending it: its debootstrap and packages layers are reused, so the build
 * takes seconds instead of minutes. The extension is removed again; base is never rebuilt here
 * unless its recipe changed (ensureTemplate is a no-op on a current base).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { buildTemplate, ensureTemplate } from '../src/template/build-template.js';
import { builtinRecipesDir } from '../src/template/recipe.js';
import { TemplateStore } from '../src/template/template-store.js';
import { TEMPLATES_DIR } from './support.js';
import { ADMIN, engineOn } from './templates-support.js';

test('base runs python3, node, npm, git, curl and jq in a sandbox', { timeout: 20 * 60_000 }, async (t) => {
  await ensureTemplate(TEMPLATES_DIR, 'base', { log: (l) => console.log(`# base: ${l}`) });
  const engine = await engineOn(t, TEMPLATES_DIR, 'base');
  const s = await engine.createSandbox(ADMIN, { template: 'base', timeoutSeconds: 120, resources: { memoryMiB: 512 } });
  const r = await engine.exec(ADMIN, s.id, {
    cmd: ['sh', '-c', [
      'python3 -c "import json, ssl, venv; print(json.dumps({\\"py\\": 6 * 7}))"',
      'node -e "console.log(JSON.stringify({node: 6 * 7}))"',
      'npm --version >/dev/null && echo npm-ok',
      'git --version | cut -d" " -f1-2',
      'curl --version >/dev/null && echo curl-ok',
      'echo \'{"jq": 42}\' | jq -c .',
      'command -v gcc || echo no-gcc',
      'pwd',
    ].join('; ')],
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, '{"py": 42}\n{"node":42}\nnpm-ok\ngit version\ncurl-ok\n{"jq":42}\nno-gcc\n/work\n');
});

test('a recipe extending base reuses its debootstrap and packages layers', { timeout: 20 * 60_000 }, async (t) => {
  const base = await ensureTemplate(TEMPLATES_DIR, 'base');
  const recipe = parse(readFileSync(join(builtinRecipesDir(), 'base.yaml'), 'utf8')) as Record<string, unknown>;
  const name = `airlock-test-ext-${process.pid}`;
  const engine = await engineOn(t, TEMPLATES_DIR, 'ext');
  t.after(() => engine.removeTemplate(name).catch(() => {}));
  const lines: string[] = [];
  const started = Date.now();
  await buildTemplate(TEMPLATES_DIR, name, {
    recipe: { ...recipe, run: ['python3 -c "print(\'built on base\')" > /etc/extended'] },
    log: (l) => lines.push(l),
  });
  const ms = Date.now() - started;
  const reused = lines.filter((l) => l.includes('reusing layer'));
  assert.ok(reused.some((l) => /\] debootstrap /.test(l)) && reused.some((l) => /\] apt-get install /.test(l)), lines.join('\n'));
  assert.ok(ms < 60_000, `the extension took ${ms} ms; without reuse it takes minutes`);
  const store = new TemplateStore(TEMPLATES_DIR);
  const ext = store.manifest(name)!.layers!;
  const baseLayers = store.manifest('base')!.layers!;
  assert.deepEqual(ext.slice(-2), baseLayers.slice(-2), 'the same debootstrap and packages layers on disk');

  const s = await engine.createSandbox(ADMIN, { template: name, timeoutSeconds: 60 });
  assert.equal((await engine.exec(ADMIN, s.id, { cmd: ['cat', '/etc/extended'] })).stdout, 'built on base\n');
  await engine.killSandbox(ADMIN, s.id);
  await engine.removeTemplate(name);
  // Removing the extension leaves base whole.
  assert.equal(store.info('base')?.digest, base.digest);
  assert.deepEqual(store.manifest('base')!.layers, baseLayers);
});
