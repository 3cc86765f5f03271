/**
 * `airlock` end to end in embedded mode: real sandboxes (runc, the `tiny` template), one CLI
 * process per command, as a user would run them. Needs root, the built agent and the templates
 * in $AIRLOCK_TEMPLATES_DIR (default /var/lib/airlock/templates).
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

let dataDir = '';
let scratch = '';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

function env(): NodeJS.ProcessEnv {
  // AIRLOCK_URL unset: --data-dir selects the embedded engine anyway, but a caller's daemon must not leak in.
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Result {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    env: { ...env(), ...opts.env },
    input: opts.input,
    stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    timeout: 90_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString(), stdoutBytes: r.stdout };
}

/** `airlock run --data-dir D --template tiny ARGS`. */
const run = (args: string[], opts: { input?: string } = {}) => airlock(['run', '--data-dir', dataDir, '--template', 'tiny', ...args], opts);

function listSandboxes(): Array<{ id: string; state: string; reason: string | null }> {
  const r = airlock(['sandbox', 'ls', '--data-dir', dataDir, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((mp) => mp.startsWith(dir + '/'));
}

before(() => {
  for (const need of [join(TEMPLATES_DIR, 'tiny'), MAIN]) {
    assert.ok(existsSync(need), `${need} is missing: build first (npm run build) and prepare templates (npm run quickstart)`);
  }
  dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-'));
  scratch = mkdtempSync(join(tmpdir(), 'airlock-test-cli-files-'));
});

after(async () => {
  if (!dataDir) return;
  // Whatever a failed test left running: a fresh engine adopts it, then we kill it.
  const { Engine } = await import('@airlock/engine');
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  const admin = { tenant: null };
  const leaked = engine.listSandboxes(admin).filter((s) => s.state === 'running' || s.state === 'creating' || s.state === 'paused');
  for (const s of leaked) await engine.killSandbox(admin, s.id).catch(() => undefined);
  await engine.close();
  const mounts = mountsUnder(dataDir);
  rmSync(scratch, { recursive: true, force: true });
  // Never rm -r through a live mount: it would delete inside it.
  if (mounts.length === 0) rmSync(dataDir, { recursive: true, force: true });
  assert.deepEqual(mounts, [], 'mounts left under the data dir');
  assert.deepEqual(leaked.map((s) => s.id), [], 'sandboxes left running');
});

describe('airlock run (embedded)', () => {
  it('streams the output and exits 0', () => {
    const r = run(['--', 'echo', 'hi']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi\n');
    assert.equal(r.stderr, '');
  });

  it('exits with the command\'s own status, stderr passed through', () => {
    const r = run(['--', 'sh', '-c', 'echo oops >&2; exit 3']);
    assert.equal(r.code, 3);
    assert.equal(r.stderr, 'oops\n');
  });

  it('passes output through as raw bytes', () => {
    const r = run(['--', 'printf', '\\377\\376\\000a']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual([...r.stdoutBytes], [0xff, 0xfe, 0x00, 0x61]);
  });

  it('takes options after the command as the command\'s own, without --', () => {
    const r = run(['ls', '-d', '/work']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '/work\n');
  });

  it('pipes its stdin to the command', () => {
    const r = run(['--', 'tr', 'a-z', 'A-Z'], { input: 'hello sandbox\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'HELLO SANDBOX\n');
  });

  it('applies --env and --workdir', () => {
    const r = run(['--env', 'GREETING=hi there', '--workdir', '/tmp', '--', 'sh', '-c', 'echo "$GREETING"; pwd']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi there\n/tmp\n');
  });

  it('binds --mount read-only unless :rw', () => {
    // Root in the sandbox is an unprivileged id on the host: it reads what "others" may read.
    chmodSync(scratch, 0o755);
    writeFileSync(join(scratch, 'in.txt'), 'from the host\n', { mode: 0o644 });
    const ro = run(['--mount', `${scratch}:/in`, '--', 'sh', '-c', 'cat /in/in.txt; echo x > /in/new.txt']);
    assert.equal(ro.stdout, 'from the host\n');
    assert.notEqual(ro.code, 0, 'writing into a read-only mount fails');
    assert.equal(existsSync(join(scratch, 'new.txt')), false);
  });

  it('--json prints one object and keeps the exit status', () => {
    const r = run(['--json', '--', 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    const o = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(o).sort(), ['durationMs', 'exitCode', 'reason', 'sandboxId', 'stderr', 'stdout']);
    assert.equal(o.exitCode, 3);
    assert.equal(o.stdout, 'out\n');
    assert.equal(o.stderr, 'err\n');
    assert.equal(o.reason, 'exited');
    assert.match(String(o.sandboxId), /\S/);
    assert.equal(typeof o.durationMs, 'number');
    assert.equal(r.stderr, '');
  });

  it('exits 124 with one line when the sandbox times out', () => {
    const r = run(['--timeout', '1s', '--', 'sleep', '30']);
    assert.equal(r.code, 124, r.stderr);
    assert.equal(r.stderr, 'airlock: sandbox timed out after 1s\n');
  });

  it('exits 124 naming the command timeout with --exec-timeout', () => {
    const r = run(['--exec-timeout', '500ms', '--', 'sleep', '30']);
    assert.equal(r.code, 124, r.stderr);
    assert.equal(r.stderr, 'airlock: command timed out after 0.5s\n');
  });

  it('exits 137 with one line when the command runs out of memory', () => {
    // dd fills a 128 MiB buffer in a 32 MiB sandbox: bounded, and the kernel kills it.
    const r = run(['--memory', '32m', '--', 'dd', 'if=/dev/zero', 'of=/dev/null', 'bs=128M', 'count=1']);
    assert.equal(r.code, 137, r.stderr);
    assert.match(r.stderr, /^airlock: command killed: out of memory \(limit 32 MiB\)\n$/);
  });

  it('--json reports the timeout too', () => {
    const r = run(['--json', '--timeout', '1s', '--', 'sh', '-c', 'echo started; sleep 30']);
    assert.equal(r.code, 124, r.stderr);
    const o = JSON.parse(r.stdout) as { exitCode: number; reason: string; stdout: string };
    assert.equal(o.exitCode, 124);
    assert.equal(o.reason, 'timeout');
    assert.equal(o.stdout, 'started\n');
    assert.equal(r.stderr, 'airlock: sandbox timed out after 1s\n');
  });

  it('reports a command that cannot start with a shell-like status', () => {
    const r = run(['--', '/no/such/program']);
    assert.ok(r.code === 126 || r.code === 127, `status ${r.code}: ${r.stderr}`);
  });

  it('refuses a bad request from the engine with one line and exit 2', () => {
    const r = run(['--memory', '1m', '--', 'true']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^airlock: .*memoryMiB/);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
  });

  it('fails with one line and exit 125 when there is no such template', () => {
    const r = run(['--template', 'no-such-template', '--', 'true']);
    assert.ok(r.code === 125 || r.code === 2, `status ${r.code}`);
    assert.match(r.stderr, /^airlock: .*no-such-template/);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
  });

  it('Ctrl-C kills the sandbox and exits 130', async () => {
    const child = spawn(process.execPath, [MAIN, 'run', '--data-dir', dataDir, '--template', 'tiny', '--', 'sh', '-c', 'echo ready; sleep 60'], {
      env: env(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no output; stderr: ${stderr}`)), 60_000);
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          if (stdout.includes('ready')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      child.kill('SIGINT');
      const code = await exited;
      assert.equal(code, 130, stderr);
      const m = /^airlock: interrupted: sandbox (\S+) destroyed\n$/.exec(stderr);
      assert.ok(m, stderr);
      const s = listSandboxes().find((x) => x.id === m[1]);
      assert.equal(s?.state, 'killed');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('leaves no sandbox running behind it', () => {
    assert.deepEqual(listSandboxes().filter((s) => s.state === 'running' || s.state === 'creating'), []);
  });
});

describe('airlock sandbox and files (embedded, one process per command)', () => {
  it('create, exec, files, background processes, kill', () => {
    const dd = ['--data-dir', dataDir];
    const created = airlock(['sandbox', 'create', ...dd, '--template', 'tiny', '--timeout', '2m', '--label', 'test=cli']);
    assert.equal(created.code, 0, created.stderr);
    const id = created.stdout.trim();
    assert.match(id, /^\S+$/);
    try {
      const listed = airlock(['sandbox', 'ls', ...dd, '--label', 'test=cli']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, /^ID +STATE +RUNTIME +TEMPLATE +CREATED +EXPIRES\n/);
      assert.match(listed.stdout, new RegExp(`\\n${id} +running +container +tiny `));

      const exec = airlock(['sandbox', 'exec', id, ...dd, '--env', 'X=1', '--cwd', '/tmp', '--', 'sh', '-c', 'echo "$X $(pwd)"; exit 4']);
      assert.equal(exec.code, 4, exec.stderr);
      assert.equal(exec.stdout, '1 /tmp\n');

      const json = airlock(['sandbox', 'exec', id, ...dd, '--json', '--', 'echo', 'hi']);
      assert.equal(json.code, 0, json.stderr);
      assert.equal((JSON.parse(json.stdout) as { stdout: string }).stdout, 'hi\n');

      const timedOut = airlock(['sandbox', 'exec', id, ...dd, '--timeout', '300ms', '--', 'sleep', '30']);
      assert.equal(timedOut.code, 124);
      assert.equal(timedOut.stderr, 'airlock: command timed out after 0.3s\n');

      const local = join(scratch, 'script.sh');
      writeFileSync(local, '#!/bin/sh\necho script ran\n', { mode: 0o755 });
      assert.equal(airlock(['files', 'put', id, local, '/work/bin/script.sh', ...dd]).code, 0);
      const ran = airlock(['sandbox', 'exec', id, ...dd, '--', '/work/bin/script.sh']);
      assert.equal(ran.stdout, 'script ran\n', ran.stderr);
      const ls = airlock(['files', 'ls', id, '/work/bin', ...dd]);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /\n-rwxr-xr-x +26 +\S+ \S+ +script\.sh\n/);
      const back = join(scratch, 'back.sh');
      assert.equal(airlock(['files', 'get', id, '/work/bin/script.sh', back, ...dd]).code, 0);
      assert.equal(readFileSync(back, 'utf8'), '#!/bin/sh\necho script ran\n');
      const toStdout = airlock(['files', 'get', id, '/work/bin/script.sh', '-', ...dd]);
      assert.equal(toStdout.stdout, '#!/bin/sh\necho script ran\n');
      const missing = airlock(['files', 'get', id, '/work/nope', '-', ...dd]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /^airlock: .*\/work\/nope/);

      const bg = airlock(['sandbox', 'exec', id, ...dd, '--background', '--', 'sleep', '300']);
      assert.equal(bg.code, 0, bg.stderr);
      const pid = Number(bg.stdout.trim());
      assert.ok(pid > 1, bg.stdout);
      const ps = airlock(['sandbox', 'ps', id, ...dd, '--json']);
      assert.equal(ps.code, 0, ps.stderr);
      const procs = JSON.parse(ps.stdout) as Array<{ pid: number; cmdline: string[] }>;
      assert.deepEqual(procs.find((p) => p.pid === pid)?.cmdline, ['sleep', '300']);
      assert.equal(airlock(['sandbox', 'kill-process', id, String(pid), ...dd, '--signal', 'KILL']).code, 0);
      const after = JSON.parse(airlock(['sandbox', 'ps', id, ...dd, '--json']).stdout) as Array<{ pid: number }>;
      assert.equal(after.some((p) => p.pid === pid), false, 'the killed process is gone');

      const got = airlock(['sandbox', 'get', id, ...dd]);
      assert.equal((JSON.parse(got.stdout) as { state: string }).state, 'running');

      // pause → exec refused → resume → exec works (each a separate CLI process adopting the sandbox)
      const paused = airlock(['sandbox', 'pause', id, ...dd]);
      assert.equal(paused.code, 0, paused.stderr);
      assert.equal(paused.stdout, `${id} paused\n`);
      const refused = airlock(['sandbox', 'exec', id, ...dd, '--', 'true']);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^airlock: .*paused/);
      const resumed = airlock(['sandbox', 'resume', id, ...dd, '--json']);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal((JSON.parse(resumed.stdout) as { state: string }).state, 'running');
      assert.equal(airlock(['sandbox', 'exec', id, ...dd, '--', 'echo', 'awake']).stdout, 'awake\n');
    } finally {
      const killed = airlock(['sandbox', 'kill', id, ...dd]);
      assert.equal(killed.code, 0, killed.stderr);
      assert.equal(killed.stdout, `${id}\n`);
    }
    const got = airlock(['sandbox', 'get', id, ...dd]);
    assert.equal((JSON.parse(got.stdout) as { state: string }).state, 'killed');
    const again = airlock(['sandbox', 'kill', id, ...dd]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^airlock: .*already ended/);
    const gone = airlock(['sandbox', 'exec', id, ...dd, '--', 'true']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^airlock: /);
    const unknown = airlock(['sandbox', 'get', 'zzzzzzzzzzzz', ...dd]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /^airlock: .*not found/);
  });

  it('template ls lists the templates', () => {
    const r = airlock(['template', 'ls', '--data-dir', dataDir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^NAME +DIGEST +LAYERS +SIZE +IN USE +CREATED\n/);
    assert.match(r.stdout, /\ntiny +/);
  });
});

describe('remote mode: airlock serve, then the CLI over AIRLOCK_URL', () => {
  it('serves, saves the admin key, and runs commands through the API', async () => {
    const serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-serve-'));
    const server = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0'], {
      env: env(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    server.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`serve did not start: ${out} ${err}`)), 60_000);
        server.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /airlockd listening on (http:\/\/\S+)/.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(m[1] as string);
          }
        });
        server.on('exit', () => reject(new Error(`serve exited: ${out} ${err}`)));
      });
      const keyFile = join(serveDir, 'admin.key');
      const key = readFileSync(keyFile, 'utf8').trim();
      assert.equal(statMode(keyFile), 0o600);
      assert.ok(out.includes(key), 'the key is printed once');
      assert.ok(out.includes(keyFile), 'with where it was saved');
      const remote = { AIRLOCK_URL: url, AIRLOCK_API_KEY: key };

      const hi = airlock(['run', '--template', 'tiny', '--', 'sh', '-c', 'echo hi; echo there >&2; exit 5'], { env: remote });
      assert.equal(hi.code, 5, hi.stderr);
      assert.equal(hi.stdout, 'hi\n');
      assert.equal(hi.stderr, 'there\n');

      const json = airlock(['run', '--json', '--template', 'tiny', '--timeout', '1s', '--', 'sleep', '30'], { env: remote });
      assert.equal(json.code, 124, json.stderr);
      assert.equal((JSON.parse(json.stdout) as { reason: string }).reason, 'timeout');
      assert.equal(json.stderr, 'airlock: sandbox timed out after 1s\n');

      const piped = airlock(['run', '--template', 'tiny', '--', 'cat'], { env: remote, input: 'through the API\n' });
      assert.equal(piped.stdout, 'through the API\n', piped.stderr);

      const created = airlock(['sandbox', 'create', '--template', 'tiny', '--json'], { env: remote });
      assert.equal(created.code, 0, created.stderr);
      const id = (JSON.parse(created.stdout) as { id: string }).id;
      const exec = airlock(['sandbox', 'exec', id, '--', 'echo', 'remote'], { env: remote });
      assert.equal(exec.stdout, 'remote\n', exec.stderr);
      const put = airlock(['files', 'put', id, '-', '/work/x.txt'], { env: remote, input: 'data' });
      assert.equal(put.code, 0, put.stderr);
      assert.equal(airlock(['files', 'get', id, '/work/x.txt', '-'], { env: remote }).stdout, 'data');
      assert.equal(airlock(['sandbox', 'kill', id], { env: remote }).code, 0);

      const badKey = airlock(['sandbox', 'ls'], { env: { ...remote, AIRLOCK_API_KEY: 'wrong' } });
      assert.equal(badKey.code, 1);
      assert.match(badKey.stderr, /^airlock: .*AIRLOCK_API_KEY/);

      server.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    } finally {
      if (server.exitCode === null) {
        server.kill('SIGKILL');
        await exited;
      }
      const { Engine } = await import('@airlock/engine');
      const engine = await Engine.open({ dataDir: serveDir, templatesDir: TEMPLATES_DIR });
      for (const s of engine.listSandboxes({ tenant: null })) {
        if (s.state === 'running' || s.state === 'creating') await engine.killSandbox({ tenant: null }, s.id).catch(() => undefined);
      }
      await engine.close();
      if (mountsUnder(serveDir).length === 0) rmSync(serveDir, { recursive: true, force: true });
    }
  });
});

function statMode(path: string): number {
  return statSync(path).mode & 0o777;
}
