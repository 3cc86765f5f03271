/**
 * `airlock files …` beyond put/get/ls, and `airlock run --outputs`, in embedded mode with real
 * sandboxes (the `tiny` template): streamed transfers in bounded memory, stat, mkdir, mv,
 * watch, outputs extracted safely.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

let dataDir = '';
let scratch = '';
let id = '';

function env(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

/** ARGS with --data-dir added (before `--`, after which the words are the command's). */
function withDataDir(args: string[]): string[] {
  const i = args.indexOf('--');
  return i < 0 ? [...args, '--data-dir', dataDir] : [...args.slice(0, i), '--data-dir', dataDir, ...args.slice(i)];
}

function airlock(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...withDataDir(args)], { env: env(), stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** The CLI against an in-process daemon: asynchronously, or the daemon could not answer it. */
function airlockRemote(args: string[], remote: Remote): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [MAIN, ...args], { env: { ...env(), AIRLOCK_URL: remote.url, AIRLOCK_API_KEY: remote.key }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (b) => { stdout += b; });
    p.stderr.on('data', (b) => { stderr += b; });
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

interface Remote { url: string; key: string }

/** Runs the CLI and samples its peak RSS (VmHWM) while it runs. */
function airlockPeak(args: string[], remote?: Remote): Promise<{ code: number | null; stderr: string; peakMiB: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [MAIN, ...(remote ? args : withDataDir(args))], {
      env: remote ? { ...env(), AIRLOCK_URL: remote.url, AIRLOCK_API_KEY: remote.key } : env(), stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    let peak = 0;
    p.stderr.on('data', (b) => { stderr += b; });
    const t = setInterval(() => {
      try {
        const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'));
        if (m) peak = Math.max(peak, Number(m[1]));
      } catch { /* exited */ }
    }, 5);
    p.on('error', reject);
    p.on('exit', (code) => {
      clearInterval(t);
      resolve({ code, stderr, peakMiB: peak / 1024 });
    });
  });
}

async function writeRandomFile(path: string, mib: number): Promise<string> {
  const h = createHash('sha256');
  const out = createWriteStream(path);
  for (let i = 0; i < mib; i++) {
    const b = randomBytes(1024 * 1024);
    h.update(b);
    if (!out.write(b)) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((r, j) => out.end((e?: Error | null) => (e ? j(e) : r())));
  return h.digest('hex');
}

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

before(() => {
  for (const need of [join(TEMPLATES_DIR, 'tiny'), MAIN]) assert.ok(existsSync(need), `${need} is missing`);
  dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-files-'));
  scratch = mkdtempSync(join(tmpdir(), 'airlock-test-cli-files-scratch-'));
  const created = airlock(['sandbox', 'create', '--template', 'tiny', '--timeout', '5m', '--disk', '2g']);
  assert.equal(created.code, 0, created.stderr);
  id = created.stdout.trim();
});

after(async () => {
  const { Engine } = await import('@airlock/engine');
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  const admin = { tenant: null };
  for (const s of engine.listSandboxes(admin)) {
    if (s.state === 'running' || s.state === 'creating' || s.state === 'paused') await engine.killSandbox(admin, s.id).catch(() => undefined);
  }
  await engine.close();
  rmSync(scratch, { recursive: true, force: true });
  rmSync(dataDir, { recursive: true, force: true });
});

describe('airlock files (embedded)', () => {
  it('put and get stream: a 384 MiB file in and out without the CLI holding it', async (t) => {
    const local = join(scratch, 'big.bin');
    const digest = await writeRandomFile(local, 384);
    const put = await airlockPeak(['files', 'put', id, local, '/work/big.bin']);
    assert.equal(put.code, 0, put.stderr);
    assert.ok(put.peakMiB < 300, `files put peaked at ${put.peakMiB.toFixed(0)} MiB`);
    const back = join(scratch, 'back.bin');
    const get = await airlockPeak(['files', 'get', id, '/work/big.bin', back]);
    assert.equal(get.code, 0, get.stderr);
    assert.ok(get.peakMiB < 300, `files get peaked at ${get.peakMiB.toFixed(0)} MiB`);
    t.diagnostic(`CLI peak RSS: put ${put.peakMiB.toFixed(0)} MiB, get ${get.peakMiB.toFixed(0)} MiB`);
    assert.equal(sha(back), digest);
    rmSync(local);
    rmSync(back);
    // A failed get leaves nothing under the local name (nor a partial file beside it).
    const missing = airlock(['files', 'get', id, '/work/nope', join(scratch, 'nope')]);
    assert.equal(missing.code, 1);
    assert.deepEqual(spawnSync('ls', ['-A', scratch]).stdout.toString(), '');
    assert.equal(airlock(['sandbox', 'exec', id, '--', 'rm', '/work/big.bin']).code, 0);
  });

  it('mkdir, mv, stat', () => {
    assert.equal(airlock(['files', 'mkdir', id, '/work/a/b', '-p', '--mode', '0750']).code, 0);
    const exists = airlock(['files', 'mkdir', id, '/work/a/b']);
    assert.equal(exists.code, 1);
    assert.match(exists.stderr, /already exists/);
    assert.equal(airlock(['sandbox', 'exec', id, '--', 'sh', '-c', 'echo 1 > /work/a/f; echo 2 > /work/a/g']).code, 0);
    assert.equal(airlock(['files', 'mv', id, '/work/a/f', '/work/a/b/f']).code, 0);
    const clash = airlock(['files', 'mv', id, '/work/a/g', '/work/a/b/f']);
    assert.equal(clash.code, 1);
    assert.equal(airlock(['files', 'mv', id, '/work/a/g', '/work/a/b/f', '--overwrite']).code, 0);
    const st = airlock(['files', 'stat', id, '/work/a/b', '--json']);
    assert.equal(st.code, 0, st.stderr);
    assert.deepEqual((({ type, mode }) => ({ type, mode }))(JSON.parse(st.stdout)), { type: 'dir', mode: 0o750 });
    assert.match(airlock(['files', 'stat', id, '/work/a/b/f']).stdout, /^-rw-r--r-- 2 \S+ \/work\/a\/b\/f\n$/);
  });

  it('outputs: list, and extraction that records links without following them', () => {
    assert.equal(airlock(['sandbox', 'exec', id, '--', 'sh', '-c', 'mkdir -p /work/out/r && echo 42 > /work/out/r/answer && ln -s /etc /work/out/etc']).code, 0);
    const list = airlock(['files', 'outputs', id, '--json']);
    assert.equal(list.code, 0, list.stderr);
    const entries = (JSON.parse(list.stdout) as { entries: Array<{ path: string; type: string; linkTarget?: string }> }).entries;
    assert.deepEqual(entries.map((e) => e.path).sort(), ['etc', 'r', 'r/answer']);
    const dest = join(scratch, 'outs');
    const x = airlock(['files', 'outputs', id, dest]);
    assert.equal(x.code, 0, x.stderr);
    assert.equal(readFileSync(join(dest, 'r/answer'), 'utf8'), '42\n');
    assert.ok(lstatSync(join(dest, 'etc')).isSymbolicLink());
    assert.equal(readlinkSync(join(dest, 'etc')), '/etc');
  });
});

describe('airlock files through a daemon (remote mode)', () => {
  let remote: Remote;
  let engine: import('@airlock/engine').Engine;
  let server: { close(): Promise<void> };
  let serveDir = '';
  let rid = '';
  const admin = { tenant: null };

  before(async () => {
    const { Engine } = await import('@airlock/engine');
    const { startServer } = await import('@airlock/server');
    serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-files-remote-'));
    engine = await Engine.open({ dataDir: serveDir, templatesDir: TEMPLATES_DIR });
    const key = engine.ensureAdminKey()!;
    const started = await startServer({ engine, listen: '127.0.0.1:0', logger: false });
    server = started;
    remote = { url: started.url, key };
    rid = (await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 300, resources: { diskMiB: 2048 } })).id;
  });

  after(async () => {
    for (const s of engine?.listSandboxes(admin) ?? []) if (s.state === 'running') await engine.killSandbox(admin, s.id).catch(() => undefined);
    await server?.close();
    await engine?.close();
    rmSync(serveDir, { recursive: true, force: true });
  });

  it('put and get stream through the SDK: 384 MiB without the CLI holding it', async (t) => {
    const local = join(scratch, 'remote-big.bin');
    const digest = await writeRandomFile(local, 384);
    const put = await airlockPeak(['files', 'put', rid, local, '/work/big.bin'], remote);
    assert.equal(put.code, 0, put.stderr);
    assert.ok(put.peakMiB < 300, `files put peaked at ${put.peakMiB.toFixed(0)} MiB`);
    const back = join(scratch, 'remote-back.bin');
    const get = await airlockPeak(['files', 'get', rid, '/work/big.bin', back], remote);
    assert.equal(get.code, 0, get.stderr);
    assert.ok(get.peakMiB < 300, `files get peaked at ${get.peakMiB.toFixed(0)} MiB`);
    t.diagnostic(`CLI peak RSS: put ${put.peakMiB.toFixed(0)} MiB, get ${get.peakMiB.toFixed(0)} MiB`);
    assert.equal(sha(back), digest);
    rmSync(local);
    rmSync(back);
  });

  it('watch prints changes until interrupted', async () => {
    await engine.makeDir(admin, rid, '/work/w', { parents: true });
    const p = spawn(process.execPath, [MAIN, 'files', 'watch', rid, '/work/w', '-r', '--json'], {
      env: { ...env(), AIRLOCK_URL: remote.url, AIRLOCK_API_KEY: remote.key }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (b) => { out += b; });
    p.stderr.on('data', (b) => { err += b; });
    const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
    try {
      const t0 = Date.now();
      // The watch is in place a moment after the CLI starts; poke until the event shows.
      while (!out.includes('/work/w/d/new') && Date.now() - t0 < 20_000) {
        await engine.exec(admin, rid, { cmd: ['sh', '-c', 'mkdir -p /work/w/d && echo x >> /work/w/d/new'] });
        await new Promise((r) => setTimeout(r, 200));
      }
      const events = out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; path: string });
      assert.ok(events.some((e) => e.path === '/work/w/d/new' && (e.type === 'created' || e.type === 'modified')), out + err);
    } finally {
      p.kill('SIGINT');
    }
    assert.equal(await exited, 0, err);
  });

  it('outputs extracted through the API', async () => {
    const dest = join(scratch, 'remote-outs');
    const seeded = await airlockRemote(['sandbox', 'exec', rid, '--', 'sh', '-c', 'mkdir -p /work/out && echo via-api > /work/out/r && ln -s /etc/passwd /work/out/pw'], remote);
    assert.equal(seeded.code, 0, seeded.stderr);
    const x = await airlockRemote(['files', 'outputs', rid, dest], remote);
    assert.equal(x.code, 0, x.stderr);
    assert.equal(readFileSync(join(dest, 'r'), 'utf8'), 'via-api\n');
    assert.equal(readlinkSync(join(dest, 'pw')), '/etc/passwd');
  });
});

describe('airlock run --outputs', () => {
  it('extracts what the command left in /work/out (or --output-path) before the sandbox goes', () => {
    const dest = join(scratch, 'run-out');
    const r = spawnSync(process.execPath, [MAIN, 'run', '--data-dir', dataDir, '--template', 'tiny', '--outputs', dest, '--',
      'sh', '-c', 'mkdir -p /work/out/sub && echo result > /work/out/sub/r.txt && chmod 600 /work/out/sub/r.txt'], { env: env(), timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(readFileSync(join(dest, 'sub/r.txt'), 'utf8'), 'result\n');
    assert.equal(statSync(join(dest, 'sub/r.txt')).mode & 0o777, 0o600);

    const custom = join(scratch, 'run-custom');
    const c = spawnSync(process.execPath, [MAIN, 'run', '--data-dir', dataDir, '--template', 'tiny', '--output-path', '/results', '--outputs', custom, '--',
      'sh', '-c', 'mkdir -p /results && echo 7 > /results/seven; exit 3'], { env: env(), timeout: 60_000 });
    assert.equal(c.status, 3, c.stderr.toString());
    assert.equal(readFileSync(join(custom, 'seven'), 'utf8'), '7\n');
  });
});
