/**
 * `airlock sandbox shell` under a real terminal (a pty made by python's pty module, the way a
 * user's terminal emulator runs it), in embedded mode and through a served daemon; and with
 * piped input. Real sandboxes (runc, the `tiny` template).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

/**
 * Runs argv on a new pty of size rows × cols, follows `steps` ({send}, {expect: regex},
 * {resize: [rows, cols]}, {sleep: ms}), reads to the end, and reports the exit status, the
 * output, and whether the terminal's modes were restored.
 */
const DRIVER = String.raw`
import json, os, re, select, signal, struct, sys, termios, time, fcntl
argv, env, rows, cols, steps = json.loads(sys.argv[1])
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
before = termios.tcgetattr(slave)
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(master)
    os.execvpe(argv[0], argv, env)
out = b''
def read(timeout):
    global out
    r, _, _ = select.select([master], [], [], timeout)
    if not r:
        return 'timeout'
    try:
        chunk = os.read(master, 65536)
    except OSError:
        return 'eof'
    if not chunk:
        return 'eof'
    out += chunk
    return 'data'
failure = None
for step in steps:
    if 'send' in step:
        os.write(master, step['send'].encode())
    elif 'sleep' in step:
        time.sleep(step['sleep'] / 1000)
    elif 'resize' in step:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack('HHHH', step['resize'][0], step['resize'][1], 0, 0))
    elif 'expect' in step:
        deadline = time.time() + 20
        while not re.search(step['expect'].encode(), out) and time.time() < deadline:
            if read(0.1) == 'eof':
                break
        if not re.search(step['expect'].encode(), out):
            failure = 'no match for ' + step['expect']
            os.kill(pid, signal.SIGTERM)
            break
status = None
deadline = time.time() + 30
while time.time() < deadline:
    read(0.1)
    wpid, st = os.waitpid(pid, os.WNOHANG)
    if wpid:
        status = st
        break
if status is None:
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    failure = failure or 'did not exit'
while read(0.1) == 'data':
    pass
after = termios.tcgetattr(slave)
print(json.dumps({'code': os.waitstatus_to_exitcode(status), 'output': out.decode('utf8', 'replace'),
                  'restored': before == after, 'failure': failure}))
`;

let dataDir = '';
let scratch = '';
let driver = '';

function env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR, ...extra };
}

function airlock(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    env: env(opts.env), input: opts.input, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], timeout: 90_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

type Step = { send: string } | { expect: string } | { resize: [number, number] } | { sleep: number };

function onTerminal(args: string[], steps: Step[], opts: { env?: NodeJS.ProcessEnv; rows?: number; cols?: number } = {}) {
  const spec = [[process.execPath, MAIN, ...args], env(opts.env), opts.rows ?? 33, opts.cols ?? 101, steps];
  const r = spawnSync('python3', [driver, JSON.stringify(spec)], { timeout: 120_000 });
  if (r.error) throw r.error;
  assert.equal(r.status, 0, r.stderr.toString());
  return JSON.parse(r.stdout.toString()) as { code: number; output: string; restored: boolean; failure: string | null };
}

/** The interactive session both modes must pass. */
function interactiveSession(id: string, extraArgs: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  const r = onTerminal(['sandbox', 'shell', id, ...extraArgs], [
    { send: 'stty size; tty\r' },
    { expect: '33 101\\r\\n/dev/pts/\\d+' },
    { resize: [40, 120] },
    { sleep: 300 },
    { send: 'stty size\r' },
    { expect: '40 120' },
    { send: 'sleep 100\r' },
    { sleep: 500 },
    { send: '\x03' },
    { send: 'echo "after=$?"\r' },
    { expect: 'after=130' },
    { send: 'exit 7\r' },
  ], { env: extraEnv });
  assert.equal(r.failure, null, `${r.failure}: ${JSON.stringify(r.output)}`);
  assert.equal(r.code, 7, r.output);
  assert.ok(r.restored, 'the terminal\'s modes are restored');
}

before(() => {
  for (const need of [join(TEMPLATES_DIR, 'tiny'), MAIN]) assert.ok(existsSync(need), `${need} is missing`);
  assert.equal(spawnSync('python3', ['-c', 'import pty']).status, 0, 'python3 is needed to make a terminal');
  dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-shell-'));
  scratch = mkdtempSync(join(tmpdir(), 'airlock-test-cli-shell-driver-'));
  driver = join(scratch, 'pty-driver.py');
  writeFileSync(driver, DRIVER);
});

after(async () => {
  rmSync(scratch, { recursive: true, force: true });
  if (dataDir) await killAllIn(dataDir);
});

async function killAllIn(dir: string): Promise<void> {
  const { Engine } = await import('@airlock/engine');
  const engine = await Engine.open({ dataDir: dir, templatesDir: TEMPLATES_DIR });
  for (const s of engine.listSandboxes({ tenant: null })) {
    if (s.state === 'running' || s.state === 'creating' || s.state === 'paused') await engine.killSandbox({ tenant: null }, s.id).catch(() => undefined);
  }
  await engine.close();
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => (l.split(' ')[4] ?? '').startsWith(dir + '/'));
  if (!mounted) rmSync(dir, { recursive: true, force: true });
}

describe('airlock sandbox shell (embedded)', () => {
  let id = '';
  before(() => {
    const r = airlock(['sandbox', 'create', '--data-dir', dataDir, '--template', 'tiny', '--timeout', '5m']);
    assert.equal(r.code, 0, r.stderr);
    id = r.stdout.trim();
  });

  it('is a terminal: size, resize, ^C, exit status; the terminal is restored', () => {
    interactiveSession(id, ['--data-dir', dataDir]);
  });

  it('runs a given command with --cwd and --env', () => {
    const r = onTerminal(['sandbox', 'shell', id, '--data-dir', dataDir, '--cwd', '/tmp', '--env', 'X=42', '--', 'sh', '-c', 'pwd; echo "x=$X"; [ -t 0 ] && echo tty; exit 5'], []);
    assert.equal(r.code, 5, r.output);
    assert.match(r.output, /\/tmp\r\nx=42\r\ntty\r\n/);
    assert.ok(r.restored);
  });

  it('works with piped input: lines typed in, end of input is ^D', () => {
    const r = airlock(['sandbox', 'shell', id, '--data-dir', dataDir], { input: 'echo "piped $((6*7))"\nexit 3\n' });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /piped 42\r\n/);
    const eof = airlock(['sandbox', 'shell', id, '--data-dir', dataDir, '--', 'sh', '-c', 'cat >/dev/null; echo eof-seen'], { input: 'no newline at the end' });
    assert.equal(eof.code, 0, eof.stderr);
    assert.match(eof.stdout, /eof-seen/);
  });

  it('reports a missing or ended sandbox in one line, with the terminal untouched', () => {
    const r = onTerminal(['sandbox', 'shell', 'zzzzzzzzzzzz', '--data-dir', dataDir], []);
    assert.equal(r.code, 1);
    assert.match(r.output, /^airlock: .*not found/m);
    assert.ok(r.restored);
  });
});

describe('airlock sandbox shell (through airlockd)', () => {
  it('works the same over AIRLOCK_URL', async () => {
    const serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-shell-serve-'));
    const server = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0'], {
      env: env(), stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    server.stderr.on('data', (d: Buffer) => { err += d.toString(); });
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
      const remote = { AIRLOCK_URL: url, AIRLOCK_API_KEY: readFileSync(join(serveDir, 'admin.key'), 'utf8').trim() };
      const created = airlock(['sandbox', 'create', '--template', 'tiny'], { env: remote });
      assert.equal(created.code, 0, created.stderr);
      const id = created.stdout.trim();

      interactiveSession(id, [], remote);
      const piped = airlock(['sandbox', 'shell', id], { env: remote, input: 'echo "remote $((6*7))"\nexit 4\n' });
      assert.equal(piped.code, 4, piped.stderr);
      assert.match(piped.stdout, /remote 42\r\n/);
      const bad = airlock(['sandbox', 'shell', id], { env: { ...remote, AIRLOCK_API_KEY: 'wrong' } });
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /^airlock: /);

      server.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    } finally {
      if (server.exitCode === null) {
        server.kill('SIGKILL');
        await exited;
      }
      await killAllIn(serveDir);
    }
  });
});
