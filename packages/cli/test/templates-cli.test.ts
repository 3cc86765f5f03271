/**
 * `airlock template build | import | ls | rm` in embedded mode, one CLI process per command,
 * on a private templates directory (AIRLOCK_TEMPLATES_DIR) so the machine's stay untouched.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
type Entry = { name: string; type?: string; content?: string | Buffer; linkname?: string; mode?: number };
const fixtures = await import(new URL('../../../engine/dist/test/image-fixtures.js', import.meta.url).href) as {
  ociImage(layers: Entry[][], config?: Record<string, unknown>): Promise<Buffer>;
};

let scratch = '';
let templatesDir = '';
let dataDir = '';

function airlock(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  const r = spawnSync(process.execPath, [MAIN, ...args, '--data-dir', dataDir], {
    env: { ...rest, AIRLOCK_TEMPLATES_DIR: templatesDir }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

before(() => {
  scratch = mkdtempSync(join(tmpdir(), 'airlock-test-cli-tpl-'));
  // Sandbox ids must traverse to the data dir and the layers below it.
  chmodSync(scratch, 0o711);
  templatesDir = join(scratch, 'templates');
  dataDir = join(scratch, 'data');
  mkdirSync(templatesDir);
});

after(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe('airlock template', () => {
  it('builds from a recipe file with progress, and reuses layers on the second build', () => {
    const dir = join(scratch, 'recipe');
    mkdirSync(dir);
    writeFileSync(join(dir, 'hello.sh'), '#!/bin/sh\necho "hello $WHO"\n');
    writeFileSync(join(dir, 'app.yaml'), 'bootstrap: busybox\nfiles: [{src: hello.sh, dest: /usr/local/bin/hello, mode: 0755}]\nenv: {WHO: cli}\nworkdir: /srv\n');
    const r = airlock(['template', 'build', 'app', '--file', join(dir, 'app.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\[1\/3\] busybox: building layer/);
    assert.match(r.stdout, /^template app built: sha256:[a-f0-9]{64}, 3 layers, /m);
    const again = airlock(['template', 'build', 'app', '--file', join(dir, 'app.yaml'), '--force', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /reusing layer/);
    assert.equal(JSON.parse(again.stdout).name, 'app');

    const run = spawnSync(process.execPath, [MAIN, 'run', '--data-dir', dataDir, '--template', 'app', '--', 'sh', '-c', 'hello; pwd'], {
      env: { ...process.env, AIRLOCK_TEMPLATES_DIR: templatesDir }, encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, 'hello cli\n/srv\n');
  });

  it('refuses a bad recipe with one line naming the field', () => {
    const bad = join(scratch, 'bad.yaml');
    writeFileSync(bad, 'packages: ["ok", "no way"]\n');
    const r = airlock(['template', 'build', 'bad', '--file', bad]);
    assert.equal(r.code, 2, 'an input mistake');
    assert.match(r.stderr, /^airlock: recipe packages\.1: must be a Debian package name/);
    const missing = airlock(['template', 'build', 'nope']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /no built-in recipe/);
  });

  it('imports an image tarball, lists, and removes', async () => {
    const tar = join(scratch, 'image.tar');
    writeFileSync(tar, await fixtures.ociImage([[
      { name: 'bin/', type: 'directory' },
      { name: 'bin/busybox', content: readFileSync('/bin/busybox'), mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
    ]], { Env: ['GREETING=from-image'] }));
    const r = airlock(['template', 'import', 'img', tar]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^template img imported: sha256:/);

    const ls = airlock(['template', 'ls']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^NAME +DIGEST +LAYERS +SIZE +IN USE +CREATED\n/);
    assert.match(ls.stdout, /\napp +[a-f0-9]{12} +3 +/);
    assert.match(ls.stdout, /\nimg +[a-f0-9]{12} +2 +[0-9.]+ [KMG]?i?B +0 +/);
    const json = JSON.parse(airlock(['template', 'ls', '--json']).stdout) as Array<{ name: string; inUse: number }>;
    assert.deepEqual(json.map((t) => t.name), ['app', 'img']);

    const evil = join(scratch, 'evil.tar');
    writeFileSync(evil, await fixtures.ociImage([[{ name: '../../x', content: 'x' }]]));
    const refused = airlock(['template', 'import', 'evil', evil]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /^airlock: image rejected: .*path traversal/);

    assert.equal(airlock(['template', 'rm', 'img']).stdout, 'template img removed\n');
    const gone = airlock(['template', 'rm', 'img']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^airlock: template img not found/);
  });
});
