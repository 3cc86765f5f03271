/**
 * `airlock volume …`, `--volume` and the serve flags of the mount policy: flag parsing (pure),
 * then end to end in embedded mode and against `airlock serve`, with real sandboxes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../src/flags.js';
import { collectMountPrefix, parseVolume } from '../src/volume-flags.js';
import { specFromFlags } from '../src/spec.js';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

function env(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { env: { ...env(), ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 90_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** Kills what a failed test left, unmounts volumes, checks nothing is left, removes the dir. */
async function cleanDataDir(dir: string): Promise<void> {
  const { Engine } = await import('@airlock/engine');
  const engine = await Engine.open({ dataDir: dir, templatesDir: TEMPLATES_DIR });
  const admin = { tenant: null };
  for (const s of engine.listSandboxes(admin)) {
    if (s.state === 'running' || s.state === 'creating' || s.state === 'paused') await engine.killSandbox(admin, s.id).catch(() => undefined);
  }
  await engine.shutdownStorage();
  await engine.close();
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dir + '/'));
  if (mounts.length === 0) rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(mounts, [], 'mounts left under the data dir');
}

const usage = (fn: () => unknown, re: RegExp) => assert.throws(fn, (e: unknown) => e instanceof UsageError && re.test(e.message));

describe('--volume and --mount-allow flags', () => {
  it('NAME:PATH[:ro|rw], read-only by default', () => {
    assert.deepEqual(parseVolume('data:/in'), { name: 'data', target: '/in', readOnly: true });
    assert.deepEqual(parseVolume('data:/in:ro'), { name: 'data', target: '/in', readOnly: true });
    assert.deepEqual(parseVolume('out.v2:/work/out:rw'), { name: 'out.v2', target: '/work/out', readOnly: false });
    usage(() => parseVolume('data'), /NAME:PATH\[:ro\|rw\]/);
    usage(() => parseVolume('data:/in:rx'), /the mode is ro or rw/);
    usage(() => parseVolume('data:in'), /absolute path inside the sandbox/);
    usage(() => parseVolume('Data:/in'), /not a volume name/);
    usage(() => collectMountPrefix('relative', undefined), /absolute host path/);
    assert.deepEqual(specFromFlags({ volume: [parseVolume('a:/x:rw')] }), { volumes: [{ name: 'a', target: '/x', readOnly: false }] });
  });

  it('usage errors exit 2 with one line', () => {
    const r = airlock(['volume', 'create', 'x']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^airlock: .*--size/);
    const bad = airlock(['run', '--volume', 'v:rel', '--', 'true']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^airlock: --volume: /);
  });
});

describe('airlock volume (embedded)', () => {
  let dataDir = '';
  before(() => {
    assert.ok(existsSync(join(TEMPLATES_DIR, 'tiny')), 'templates missing: npm run quickstart');
    dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-vol-'));
  });
  after(async () => { if (dataDir) await cleanDataDir(dataDir); });

  it('create, use read-write then read-only, ls, rm', () => {
    const dd = ['--data-dir', dataDir];
    const created = airlock(['volume', 'create', 'results', '--size', '64m', ...dd]);
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.stdout, 'results\n');
    assert.equal(airlock(['volume', 'create', 'results', '--size', '64m', ...dd]).code, 1);

    const write = airlock(['run', ...dd, '--template', 'tiny', '--volume', 'results:/work/out:rw', '--', 'sh', '-c', 'echo 42 > /work/out/answer']);
    assert.equal(write.code, 0, write.stderr);
    const read = airlock(['run', ...dd, '--template', 'tiny', '--volume', 'results:/in', '--', 'sh', '-c', 'cat /in/answer; echo x > /in/y']);
    assert.equal(read.stdout, '42\n');
    assert.match(read.stderr, /Read-only file system/);

    const ls = airlock(['volume', 'ls', ...dd]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^NAME +SIZE +USED +ATTACHED +CREATED\nresults +64 MiB +\d+ MiB +- +/);
    const json = JSON.parse(airlock(['volume', 'ls', '--json', ...dd]).stdout) as Array<{ name: string; sizeMiB: number }>;
    assert.deepEqual(json.map((v) => [v.name, v.sizeMiB]), [['results', 64]]);
    assert.equal((JSON.parse(airlock(['volume', 'get', 'results', ...dd]).stdout) as { name: string }).name, 'results');

    // Held read-write by a live sandbox: a second user and rm are refused.
    const sbx = airlock(['sandbox', 'create', ...dd, '--template', 'tiny', '--volume', 'results:/v:rw']);
    assert.equal(sbx.code, 0, sbx.stderr);
    const id = sbx.stdout.trim();
    const clash = airlock(['run', ...dd, '--template', 'tiny', '--volume', 'results:/v', '--', 'true']);
    assert.equal(clash.code, 125);
    assert.match(clash.stderr, new RegExp(`^airlock: .*${id}`));
    const busy = airlock(['volume', 'rm', 'results', ...dd]);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /attached/);
    assert.equal(airlock(['sandbox', 'kill', id, ...dd]).code, 0);

    assert.equal(airlock(['volume', 'rm', 'results', ...dd]).code, 0);
    assert.equal(airlock(['volume', 'get', 'results', ...dd]).code, 1);
  });
});

describe('airlock serve --no-rw-mounts --mount-allow', () => {
  it('denies mounts outside the allowed prefixes and read-write ones with 422', async () => {
    const serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-serve-policy-'));
    const scratch = mkdtempSync(join(tmpdir(), 'airlock-test-cli-policy-src-'));
    mkdirSync(join(scratch, 'data'));
    mkdirSync(join(scratch, 'database'));
    const server = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0', '--no-rw-mounts', '--mount-allow', join(scratch, 'data')], {
      env: env(), stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
    let out = '';
    let err = '';
    server.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`serve did not start: ${out} ${err}`)), 60_000);
        server.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /airlockd listening on (http:\/\/\S+)/.exec(out);
          if (m) { clearTimeout(timer); resolve(m[1] as string); }
        });
        server.on('exit', () => reject(new Error(`serve exited: ${out} ${err}`)));
      });
      const remote = { AIRLOCK_URL: url, AIRLOCK_API_KEY: readFileSync(join(serveDir, 'admin.key'), 'utf8').trim() };
      const outside = airlock(['run', '--template', 'tiny', '--mount', `${join(scratch, 'database')}:/in`, '--', 'true'], remote);
      assert.equal(outside.code, 125);
      assert.match(outside.stderr, /^airlock: .*mounts\.0.*not under an allowed host path/);
      const rw = airlock(['run', '--template', 'tiny', '--mount', `${join(scratch, 'data')}:/in:rw`, '--', 'true'], remote);
      assert.equal(rw.code, 125);
      assert.match(rw.stderr, /read-write host mounts are not allowed/);
      const ok = airlock(['run', '--template', 'tiny', '--mount', `${join(scratch, 'data')}:/in`, '--', 'ls', '/in'], remote);
      assert.equal(ok.code, 0, ok.stderr);
      server.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    } finally {
      if (server.exitCode === null) {
        server.kill('SIGKILL');
        await exited;
      }
      await cleanDataDir(serveDir);
      rmSync(scratch, { recursive: true, force: true });
    }
  });
});
