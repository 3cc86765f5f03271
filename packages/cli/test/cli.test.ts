/**
 * The CLI without sandboxes: flag parsers, exit-status mapping, usage errors and help text.
 * Runs anywhere; the end-to-end runs are in e2e.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { lstatSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  UsageError, collectEnv, collectMount, formatDuration, parseAllowHost, parseCpus, parseDnsUpstream,
  parseDurationSeconds, parseEnvPair, parseFileMode, parseListen, parseMount, parsePositiveInt, parseSignal,
  parseSizeMiB,
} from '../src/flags.js';
import { outcomeOf } from '../src/outcome.js';
import { explainError, formatTable } from '../src/output.js';
import { specFromFlags } from '../src/spec.js';
import { healthy, readAdminKey } from '../src/select-backend.js';
import { saveAdminKey } from '../src/commands/serve.js';
import type { SandboxInfo } from '../src/backend.js';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AIRLOCK_URL: '', ...env },
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const usage = (f: () => unknown, pattern: RegExp) =>
  assert.throws(f, (e: unknown) => e instanceof UsageError && pattern.test(e.message));

describe('sizes (--memory, --disk)', () => {
  it('reads k/m/g/t suffixes as binary units, rounding up to whole MiB', () => {
    assert.equal(parseSizeMiB('256m', '--memory'), 256);
    assert.equal(parseSizeMiB('256M', '--memory'), 256);
    assert.equal(parseSizeMiB('256MiB', '--memory'), 256);
    assert.equal(parseSizeMiB('256mb', '--memory'), 256);
    assert.equal(parseSizeMiB('1g', '--memory'), 1024);
    assert.equal(parseSizeMiB('1.5g', '--memory'), 1536);
    assert.equal(parseSizeMiB('2048k', '--memory'), 2);
    assert.equal(parseSizeMiB('1500k', '--memory'), 2);
    assert.equal(parseSizeMiB('1t', '--disk'), 1024 * 1024);
    assert.equal(parseSizeMiB(String(64 * 1024 * 1024) + 'b', '--memory'), 64);
  });
  it('takes a plain number as MiB, like the API', () => {
    assert.equal(parseSizeMiB('512', '--memory'), 512);
  });
  it('refuses what is not a size, naming the flag', () => {
    usage(() => parseSizeMiB('12x', '--memory'), /^--memory: '12x' is not a size/);
    usage(() => parseSizeMiB('', '--memory'), /not a size/);
    usage(() => parseSizeMiB('-1m', '--memory'), /not a size/);
    usage(() => parseSizeMiB('m', '--disk'), /^--disk:/);
    usage(() => parseSizeMiB('0', '--memory'), /less than 1 MiB/);
    usage(() => parseSizeMiB('100b', '--memory'), /less than 1 MiB/);
    usage(() => parseSizeMiB('99999t', '--memory'), /more than 16 TiB/);
  });
});

describe('durations (--timeout)', () => {
  it('reads ms/s/m/h, a plain number being seconds', () => {
    assert.equal(parseDurationSeconds('30s', '--timeout'), 30);
    assert.equal(parseDurationSeconds('30', '--timeout'), 30);
    assert.equal(parseDurationSeconds('5m', '--timeout'), 300);
    assert.equal(parseDurationSeconds('1h', '--timeout'), 3600);
    assert.equal(parseDurationSeconds('1.5s', '--timeout'), 1.5);
    assert.equal(parseDurationSeconds('500ms', '--timeout'), 0.5);
    assert.equal(parseDurationSeconds('0.1s', '--timeout'), 0.1);
  });
  it('refuses zero, garbage, and fractions where whole seconds are needed', () => {
    usage(() => parseDurationSeconds('0s', '--timeout'), /more than zero/);
    usage(() => parseDurationSeconds('10d', '--timeout'), /^--timeout: '10d' is not a duration/);
    usage(() => parseDurationSeconds('soon', '--timeout'), /not a duration/);
    usage(() => parseDurationSeconds('1.5s', '--timeout', { wholeSeconds: true }), /whole seconds/);
    usage(() => parseDurationSeconds('9000h', '--timeout'), /more than a year/);
  });
  it('formats durations back for messages', () => {
    assert.equal(formatDuration(30), '30s');
    assert.equal(formatDuration(90), '90s');
    assert.equal(formatDuration(300), '5m');
    assert.equal(formatDuration(7200), '2h');
    assert.equal(formatDuration(1.5), '1.5s');
  });
});

describe('--mount', () => {
  it('defaults to read-only and resolves a relative host path', () => {
    assert.deepEqual(parseMount('/data:/in', '--mount', '/x'), { source: '/data', target: '/in', readOnly: true });
    assert.deepEqual(parseMount('data:/in:ro', '--mount', '/x'), { source: '/x/data', target: '/in', readOnly: true });
    assert.deepEqual(parseMount('./a/../b:/out:rw', '--mount', '/x'), { source: '/x/b', target: '/out', readOnly: false });
  });
  it('refuses other shapes and modes', () => {
    usage(() => parseMount('/data', '--mount'), /HOSTPATH:PATH\[:ro\|rw\]/);
    usage(() => parseMount('/data:/in:rx', '--mount'), /the mode is ro or rw/);
    usage(() => parseMount('/data:in', '--mount'), /absolute path inside the sandbox/);
    usage(() => parseMount(':/in', '--mount'), /HOSTPATH:PATH/);
    usage(() => parseMount('/a:/b:ro:x', '--mount'), /HOSTPATH:PATH/);
  });
  it('accumulates when repeated', () => {
    const m = collectMount('/b:/y:rw', collectMount('/a:/x', undefined));
    assert.deepEqual(m.map((x) => [x.source, x.target, x.readOnly]), [['/a', '/x', true], ['/b', '/y', false]]);
  });
});

describe('--env', () => {
  it('splits at the first =, keeping = and empty values', () => {
    assert.deepEqual(parseEnvPair('A=b=c'), ['A', 'b=c']);
    assert.deepEqual(parseEnvPair('EMPTY='), ['EMPTY', '']);
  });
  it('copies a bare name from the environment, and refuses an unset one', () => {
    assert.deepEqual(parseEnvPair('TOKEN', '--env', { TOKEN: 's3cret' }), ['TOKEN', 's3cret']);
    usage(() => parseEnvPair('NOPE', '--env', {}), /'NOPE' has no '=' and is not set/);
  });
  it('refuses names a shell could not hold', () => {
    usage(() => parseEnvPair('1A=b'), /NAME=VALUE/);
    usage(() => parseEnvPair('A-B=c'), /NAME=VALUE/);
    usage(() => parseEnvPair('=x'), /NAME=VALUE/);
  });
  it('accumulates, the later value winning', () => {
    assert.deepEqual(collectEnv('A=2', collectEnv('A=1', collectEnv('B=x', undefined))), { B: 'x', A: '2' });
  });
});

describe('other flags', () => {
  it('--cpus and --pids', () => {
    assert.equal(parseCpus('0.5'), 0.5);
    assert.equal(parseCpus('2'), 2);
    usage(() => parseCpus('0'), /above zero/);
    usage(() => parseCpus('half'), /above zero/);
    assert.equal(parsePositiveInt('128', '--pids'), 128);
    usage(() => parsePositiveInt('0', '--pids'), /^--pids: '0' must be a whole number/);
    usage(() => parsePositiveInt('1.5', '--pids'), /whole number/);
  });
  it('--allow-host takes names, wildcards, IPs, CIDRs and ports, not URLs', () => {
    assert.equal(parseAllowHost('PyPI.org'), 'pypi.org');
    assert.equal(parseAllowHost('*.github.com'), '*.github.com');
    assert.equal(parseAllowHost('192.0.2.10'), '192.0.2.10');
    usage(() => parseAllowHost('https://pypi.org/simple'), /not a URL/);
    assert.equal(parseAllowHost('pypi.org:443'), 'pypi.org:443');
    assert.equal(parseAllowHost('203.0.113.0/24:5432'), '203.0.113.0/24:5432');
    usage(() => parseAllowHost('bad host'), /must be a host name/);
    usage(() => parseAllowHost('-x.com'), /must be a host name/);
    usage(() => parseAllowHost('2001:db8::1'), /IPv6 egress is not supported/);
    usage(() => parseAllowHost('a.test:0'), /port must be/);
  });
  it('--listen keeps a bare port on loopback', () => {
    assert.equal(parseListen('7070'), '127.0.0.1:7070');
    assert.equal(parseListen('0.0.0.0:80'), '0.0.0.0:80');
    assert.equal(parseListen('[::1]:7070'), '[::1]:7070');
    assert.equal(parseListen(':7070'), ':7070');
    usage(() => parseListen('localhost'), /HOST:PORT/);
    usage(() => parseListen('1.2.3.4:99999'), /valid port/);
    usage(() => parseListen('[nope]:1'), /HOST:PORT/);
    usage(() => parseListen('[1.2.3.4]:1'), /IPv6/);
  });
  it('--dns-upstream wants an IP and a port (53 by default)', () => {
    assert.equal(parseDnsUpstream('192.0.2.53:5353'), '192.0.2.53:5353');
    assert.equal(parseDnsUpstream('192.0.2.53'), '192.0.2.53:53');
    assert.equal(parseDnsUpstream('[2001:db8::1]:53'), '[2001:db8::1]:53');
    assert.equal(parseDnsUpstream('2001:db8::1'), '[2001:db8::1]:53');
    usage(() => parseDnsUpstream('dns.example:53'), /IP:PORT/);
    usage(() => parseDnsUpstream('192.0.2.53:0'), /IP:PORT/);
  });
  it('--signal takes names with or without SIG, and numbers', () => {
    assert.equal(parseSignal('SIGTERM'), 15);
    assert.equal(parseSignal('term'), 15);
    assert.equal(parseSignal('KILL'), 9);
    assert.equal(parseSignal('2'), 2);
    usage(() => parseSignal('SIGNOPE'), /not a signal/);
    usage(() => parseSignal('99'), /not a signal/);
  });
  it('--mode is octal', () => {
    assert.equal(parseFileMode('755'), 0o755);
    assert.equal(parseFileMode('0644'), 0o644);
    usage(() => parseFileMode('rwx'), /octal/);
    usage(() => parseFileMode('888'), /octal/);
  });
});

describe('spec from flags', () => {
  it('sends only what was given', () => {
    assert.deepEqual(specFromFlags({ template: 'base' }), { template: 'base' });
    assert.deepEqual(
      specFromFlags({
        template: 'tiny', runtime: 'gvisor', memory: 64, cpus: 0.5, pids: 32, disk: 100, timeout: 30,
        allowHost: ['a.com', 'a.com', 'b.com'], mount: [{ source: '/a', target: '/b', readOnly: true }],
        env: { A: '1' }, workdir: '/w', label: { team: 'x' },
      }),
      {
        template: 'tiny', runtime: 'gvisor', resources: { memoryMiB: 64, cpus: 0.5, pids: 32, diskMiB: 100 },
        timeoutSeconds: 30, network: { allow: ['a.com', 'b.com'] }, mounts: [{ source: '/a', target: '/b', readOnly: true }],
        env: { A: '1' }, workdir: '/w', metadata: { team: 'x' },
      },
    );
  });
});

describe('exit status of a command', () => {
  const sandbox = (over: Partial<SandboxInfo>): SandboxInfo => ({
    id: 'sbx', tenant: 'default', state: 'running', runtime: 'container', template: 'tiny',
    resources: { cpus: 1, memoryMiB: 64, diskMiB: 1024, pids: 256 }, network: { allow: [], deny: [] }, mounts: [], volumes: [],
    workdir: '/work', outputPath: '/work/out', metadata: {}, createdAt: '2025-01-01T00:00:00.000Z', startedAt: null, endedAt: null,
    expiresAt: '2025-01-01T00:00:30.000Z', reason: null, ...over,
  });
  it('passes the command\'s own status through', () => {
    assert.deepEqual(outcomeOf({ exitCode: 3, reason: 'exited' }), { exitCode: 3, reason: 'exited', message: null });
    assert.deepEqual(outcomeOf({ exitCode: 143, reason: 'signaled' }), { exitCode: 143, reason: 'signaled', message: null });
  });
  it('124 with the sandbox lifetime when no command timeout was set', () => {
    assert.deepEqual(outcomeOf({ exitCode: 124, reason: 'timeout' }, { sandboxTimeoutSeconds: 30 }), {
      exitCode: 124, reason: 'timeout', message: 'sandbox timed out after 30s',
    });
    const o = outcomeOf({ exitCode: 137, reason: 'sandbox_ended' }, { sandbox: sandbox({ state: 'expired', reason: 'timeout: lifetime of 30s reached' }) });
    assert.deepEqual(o, { exitCode: 124, reason: 'timeout', message: 'sandbox timed out after 30s' });
  });
  it('124 naming the command timeout when that one fired', () => {
    assert.deepEqual(outcomeOf({ exitCode: 124, reason: 'timeout' }, { execTimeoutSeconds: 10, sandbox: sandbox({}) }), {
      exitCode: 124, reason: 'timeout', message: 'command timed out after 10s',
    });
  });
  it('137 with the memory limit on OOM', () => {
    assert.deepEqual(outcomeOf({ exitCode: 137, reason: 'oom' }, { memoryMiB: 64 }), {
      exitCode: 137, reason: 'oom', message: 'command killed: out of memory (limit 64 MiB)',
    });
    const o = outcomeOf({ exitCode: 137, reason: 'sandbox_ended' }, { sandbox: sandbox({ state: 'failed', reason: 'sandbox ran out of memory' }) });
    assert.equal(o.exitCode, 137);
    assert.equal(o.message, 'command killed: out of memory (limit 64 MiB)');
  });
  it('137 saying why when the sandbox ended under the command', () => {
    const o = outcomeOf({ exitCode: 137, reason: 'sandbox_ended' }, { sandbox: sandbox({ state: 'killed', reason: 'killed by request' }) });
    assert.deepEqual(o, { exitCode: 137, reason: 'sandbox_ended', message: 'sandbox sbx ended (killed: killed by request)' });
  });
});

describe('error lines', () => {
  it('engine and API errors: bad input exits 2, the rest the fallback', () => {
    assert.deepEqual(explainError({ code: 'bad_request', message: 'resources.memoryMiB: too small', field: 'resources.memoryMiB' }), {
      message: 'resources.memoryMiB: too small', exitCode: 2,
    });
    assert.deepEqual(explainError({ code: 'not_found', message: 'sandbox x not found' }, 125), { message: 'sandbox x not found', exitCode: 125 });
    assert.equal(explainError(Object.assign(new Error('fetch failed'), { cause: { code: 'ECONNREFUSED', message: 'connect ECONNREFUSED 127.0.0.1:1' } })).message,
      'cannot reach the Airlock daemon: connect ECONNREFUSED 127.0.0.1:1 (check AIRLOCK_URL)');
  });
  it('tables pad every column but the last', () => {
    assert.equal(formatTable(['A', 'BB'], [['xxx', 'y'], ['z', '']]), 'A    BB\nxxx  y\nz\n');
  });
});

describe('the airlock command', () => {
  it('answers bad flag values with one airlock: line and exit 2, before touching any sandbox', () => {
    const cases: Array<[string[], RegExp]> = [
      [['run', '--memory', '12x', '--', 'true'], /^airlock: --memory: '12x' is not a size/],
      [['run', '--timeout', 'soon', '--', 'true'], /^airlock: --timeout: 'soon' is not a duration/],
      [['run', '--timeout', '1.5s', '--', 'true'], /^airlock: --timeout: '1.5s' must be whole seconds/],
      [['run', '--runtime', 'vm', '--', 'true'], /^airlock: .*'vm' is invalid\. Allowed choices are container, gvisor, microvm/],
      [['run', '--mount', '/a:/b:x', '--', 'true'], /^airlock: --mount: /],
      [['run', '--env', 'A-B=1', '--', 'true'], /^airlock: --env: /],
      [['run', '--cpus', '0', '--', 'true'], /^airlock: --cpus: /],
      [['run', '--pids', 'many', '--', 'true'], /^airlock: --pids: /],
      [['run', '--allow-host', 'http://x.org', '--', 'true'], /^airlock: --allow-host: .*not a URL/],
      [['run', '--nope', '--', 'true'], /^airlock: unknown option '--nope'/],
      [['run'], /^airlock: missing required argument 'cmd'/],
      [['sandbox', 'create', '--disk', 'big'], /^airlock: --disk: /],
      [['sandbox', 'exec', 'sbx', '--timeout', '-1', '--', 'true'], /^airlock: /],
      [['sandbox', 'kill-process', 'sbx', '12', '--signal', 'SIGFOO'], /^airlock: --signal: /],
      [['sandbox', 'ls', '--state', 'dead'], /^airlock: .*'dead' is invalid/],
      [['serve', '--listen', 'nowhere'], /^airlock: --listen: /],
      [['serve', '--dns-upstream', 'x'], /^airlock: --dns-upstream: /],
      [['serve', '--min-runtime', 'vm'], /^airlock: --min-runtime: 'vm' must be one of container, gvisor, microvm/],
      [['serve', '--tenant-min-runtime', 'gvisor'], /^airlock: --tenant-min-runtime: 'gvisor' must be TENANT=TIER/],
      [['serve', '--tenant-min-runtime', 'x=vm'], /^airlock: --tenant-min-runtime: /],
    ];
    for (const [args, pattern] of cases) {
      const r = cli(args);
      assert.equal(r.code, 2, `airlock ${args.join(' ')} → ${r.code}: ${r.stderr}`);
      assert.match(r.stderr, pattern, `airlock ${args.join(' ')}`);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line for airlock ${args.join(' ')}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      assert.equal(r.stdout, '');
    }
  });

  it('--help describes every command and flag, with examples', () => {
    const top = cli(['--help']);
    assert.equal(top.code, 0);
    for (const c of ['serve', 'run', 'sandbox', 'files', 'template', 'doctor']) assert.match(top.stdout, new RegExp(`\\n  ${c}\\b`));
    assert.match(top.stdout, /Examples:\n  \$ airlock run -- /);
    assert.match(top.stdout, /AIRLOCK_URL/);
    const run = cli(['run', '--help']);
    assert.equal(run.code, 0);
    for (const f of ['--runtime', '--template', '--memory', '--cpus', '--pids', '--disk', '--timeout', '--allow-host', '--mount', '--env', '--workdir', '--json', '--data-dir', '--dns-upstream']) {
      assert.match(run.stdout, new RegExp(`\\n  ${f} <?\\S*>? +\\S`), `run --help describes ${f}`);
    }
    assert.match(run.stdout, /124/);
    for (const sub of [['sandbox', 'pause'], ['sandbox', 'resume'], ['sandbox', 'create'], ['sandbox', 'ls'], ['sandbox', 'exec'], ['sandbox', 'ps'], ['sandbox', 'kill-process'], ['files', 'put'], ['files', 'get'], ['files', 'ls'], ['template', 'ls'], ['doctor'], ['serve']]) {
      const r = cli([...sub, '--help']);
      assert.equal(r.code, 0, sub.join(' '));
      assert.match(r.stdout, /^Usage: airlock /, sub.join(' '));
    }
  });

  it('states the engine\'s defaults in its help truthfully', async () => {
    const { DEFAULT_RESOURCES, DEFAULT_TIMEOUT_SECONDS } = await import('@airlock/engine');
    const run = cli(['run', '--help']).stdout.replace(/\s+/g, ' ');
    assert.ok(run.includes(`(default ${DEFAULT_RESOURCES.memoryMiB}m)`), 'memory default');
    assert.ok(run.includes(`(default ${DEFAULT_RESOURCES.cpus})`), 'cpus default');
    assert.ok(run.includes(`(default ${DEFAULT_RESOURCES.pids})`), 'pids default');
    assert.ok(run.includes(`(default ${DEFAULT_RESOURCES.diskMiB / 1024}g)`), 'disk default');
    assert.ok(run.includes(`(default ${formatDuration(DEFAULT_TIMEOUT_SECONDS)})`), 'timeout default');
  });

  it('--version prints the package version', () => {
    const r = cli(['--version']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
  });

  it('reports an unreachable AIRLOCK_URL in one line', () => {
    const r = cli(['sandbox', 'ls'], { AIRLOCK_URL: 'http://127.0.0.1:9' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^airlock: /);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
  });

  it('doctor prints one ✓/✗ line per check and exits 1 when any failed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-cli-doctor-'));
    try {
      const r = cli(['doctor', '--data-dir', dir]);
      const lines = r.stdout.trimEnd().split('\n');
      assert.ok(lines.length > 5, r.stdout);
      for (const l of lines.slice(0, -1)) assert.match(l, /^[✓✗] \S+/);
      assert.equal(r.code, /^✗/m.test(r.stdout) ? 1 : 0);
      const j = cli(['doctor', '--data-dir', dir, '--json']);
      const parsed = JSON.parse(j.stdout) as { ok: boolean; checks: Array<{ name: string; ok: boolean; detail: string }> };
      assert.equal(parsed.checks.length, lines.length - 1);
      assert.equal(j.code, parsed.ok ? 0 : 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('finding the local daemon', () => {
  it('healthy() is true for a 200 /healthz and false, within its deadline, for silence or refusal', async (t) => {
    const sockets = new Set<import('node:net').Socket>();
    const server = createServer((req, res) => {
      if (req.url === '/healthz') res.end('{"ok":true}');
      // anything else: never answer
    });
    server.on('connection', (s) => sockets.add(s));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      for (const s of sockets) s.destroy();
      server.close();
    });
    const port = (server.address() as { port: number }).port;
    assert.equal(await healthy(`http://127.0.0.1:${port}`, 300), true);

    const silent = createServer(() => undefined);
    const silentSockets = new Set<import('node:net').Socket>();
    silent.on('connection', (s) => silentSockets.add(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      for (const s of silentSockets) s.destroy();
      silent.close();
    });
    const started = Date.now();
    assert.equal(await healthy(`http://127.0.0.1:${(silent.address() as { port: number }).port}`, 300), false);
    const waited = Date.now() - started;
    assert.ok(waited >= 250 && waited < 1500, `gave up after ${waited} ms`);

    // A port nobody listens on: the one the silent server had, once closed, would race; port 9 (discard) is never served here.
    assert.equal(await healthy('http://127.0.0.1:9', 300), false);
  });

  it('reads the admin key only when present and readable', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-key-'));
    try {
      assert.equal(readAdminKey(dir), null);
      writeFileSync(join(dir, 'admin.key'), 'ak_123\n');
      assert.equal(readAdminKey(dir), 'ak_123');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve saves the admin key 0600, replacing a stale file and never writing through a link', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-test-cli-key-'));
    try {
      const path = saveAdminKey(dir, 'first');
      assert.equal(readFileSync(path, 'utf8'), 'first\n');
      assert.equal(statSync(path).mode & 0o777, 0o600);
      saveAdminKey(dir, 'second');
      assert.equal(readFileSync(path, 'utf8'), 'second\n');
      const victim = join(dir, 'victim');
      writeFileSync(victim, 'untouched');
      rmSync(path);
      symlinkSync(victim, path);
      saveAdminKey(dir, 'third');
      assert.equal(readFileSync(victim, 'utf8'), 'untouched');
      assert.equal(lstatSync(path).isSymbolicLink(), false);
      assert.equal(readFileSync(path, 'utf8'), 'third\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
