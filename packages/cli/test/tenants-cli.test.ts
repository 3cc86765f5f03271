/**
 * `airlock tenant | key | policy` against a served daemon (airlock serve in a child process,
 * commands over AIRLOCK_URL), and in embedded mode. Real sandboxes (`tiny`), real SQLite.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
const KEY_RE = /^alk_[0-9a-f]{12}_[A-Za-z0-9_-]{32}$/;

interface Result { code: number | null; stdout: string; stderr: string }

function baseEnv(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], env: NodeJS.ProcessEnv, input?: string): Result {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    env: { ...baseEnv(), ...env }, input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], timeout: 90_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const lastLine = (s: string) => s.trimEnd().split('\n').at(-1) ?? '';

describe('tenant, key and policy commands against airlock serve', () => {
  let serveDir = '';
  let scratch = '';
  let server: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  let admin: NodeJS.ProcessEnv = {};
  let url = '';

  before(async () => {
    assert.ok(existsSync(join(TEMPLATES_DIR, 'tiny')), 'the tiny template is missing (npm run quickstart)');
    serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-tenants-cli-'));
    scratch = mkdtempSync(join(tmpdir(), 'airlock-test-tenants-cli-files-'));
    const child = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0'], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    server = child;
    exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    let out = '';
    url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not start: ${out}`)), 60_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /airlockd listening on (http:\/\/\S+)/.exec(out);
        if (m) { clearTimeout(timer); resolve(m[1]!); }
      });
      child.on('exit', () => reject(new Error(`serve exited: ${out}`)));
    });
    admin = { AIRLOCK_URL: url, AIRLOCK_API_KEY: readFileSync(join(serveDir, 'admin.key'), 'utf8').trim() };
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await exited;
    }
    if (!serveDir) return;
    const { Engine } = await import('@airlock/engine');
    const engine = await Engine.open({ dataDir: serveDir, templatesDir: TEMPLATES_DIR });
    for (const s of engine.listSandboxes({ tenant: null })) {
      if (s.state === 'running' || s.state === 'creating' || s.state === 'paused') await engine.killSandbox({ tenant: null }, s.id).catch(() => undefined);
    }
    await engine.close();
    rmSync(serveDir, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });

  it('tenants, scoped keys (the key on the last line), policies, quotas and revocation', () => {
    const created = airlock(['tenant', 'create', 'team-a'], admin);
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.stdout, 'team-a\n');
    assert.match(airlock(['tenant', 'ls'], admin).stdout, /^NAME +LIVE SANDBOXES +KEYS +CREATED\ndefault .*\nteam-a +0 +0 /);

    const k = airlock(['key', 'create', '--tenant', 'team-a'], admin);
    assert.equal(k.code, 0, k.stderr);
    const tenantKey = lastLine(k.stdout);
    assert.match(tenantKey, KEY_RE);
    assert.match(k.stdout, /shown this once/);
    const team = { AIRLOCK_URL: url, AIRLOCK_API_KEY: tenantKey };

    // A tenant key may not administer.
    const denied = airlock(['tenant', 'ls'], team);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^airlock: only an admin key|^airlock: a tenant key may not/);

    const policyFile = join(scratch, 'team-a.yaml');
    writeFileSync(policyFile, 'resources:\n  maxMemoryMiB: 256\nquotas:\n  maxSandboxes: 1\n');
    const set = airlock(['policy', 'set', '--tenant', 'team-a', policyFile], admin);
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, 'tenant team-a: policy version 1\n');
    const got = airlock(['policy', 'get', '--tenant', 'team-a'], admin);
    assert.match(got.stdout, /^# policy of tenant team-a: version 1/);
    assert.match(got.stdout, /quotas:\n {2}maxSandboxes: 1\n/);

    // A typo is refused before anything is sent, naming the field.
    writeFileSync(join(scratch, 'bad.yaml'), 'resources:\n  maxMemoryMib: 256\n');
    const bad = airlock(['policy', 'set', '--tenant', 'team-a', join(scratch, 'bad.yaml')], admin);
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr, 'airlock: policy.resources.maxMemoryMib: unknown field maxMemoryMib\n');

    const test = airlock(['policy', 'test', '--tenant', 'team-a', '-'], admin, JSON.stringify({ template: 'tiny', resources: { memoryMiB: 512 } }));
    assert.equal(test.code, 1, test.stderr);
    assert.match(test.stdout, /\nresources\.maxMemoryMiB +deny +512 MiB of memory asked, at most 256 allowed\n/);
    assert.match(test.stdout, /\nquotas\.maxSandboxes +pass /);
    assert.match(lastLine(test.stdout), /^denied \(against server default v0, tenant team-a v1\)$/);
    const ok = airlock(['policy', 'test', '--tenant', 'team-a', '--json', '-'], admin, JSON.stringify({ template: 'tiny' }));
    assert.equal(ok.code, 0, ok.stdout);
    assert.equal(JSON.parse(ok.stdout).allowed, true);

    // The tenant creates within its quota; the next create answers the quota.
    const sbx = airlock(['sandbox', 'create', '--template', 'tiny', '--timeout', '2m', '--json'], team);
    assert.equal(sbx.code, 0, sbx.stderr);
    const info = JSON.parse(sbx.stdout) as { id: string; tenant: string; resources: { memoryMiB: number } };
    assert.equal(info.tenant, 'team-a');
    assert.equal(info.resources.memoryMiB, 256, 'the default memory is clamped to the policy');
    const over = airlock(['sandbox', 'create', '--template', 'tiny'], team);
    assert.equal(over.code, 1);
    assert.match(over.stderr, /quota maxSandboxes exceeded: 1 live sandboxes in use/);

    // An exec key for that sandbox: exec works, listing is refused.
    const xk = airlock(['key', 'create', '--tenant', 'team-a', '--scope', 'exec', '--sandbox', info.id], admin);
    assert.equal(xk.code, 0, xk.stderr);
    const execEnv = { AIRLOCK_URL: url, AIRLOCK_API_KEY: lastLine(xk.stdout) };
    assert.equal(airlock(['sandbox', 'exec', info.id, '--', 'echo', 'hi'], execEnv).stdout, 'hi\n');
    assert.equal(airlock(['sandbox', 'ls'], execEnv).code, 1);

    const keys = airlock(['key', 'ls', '--tenant', 'team-a', '--json'], admin);
    const listed = JSON.parse(keys.stdout) as Array<{ id: string; scope: string }>;
    assert.deepEqual(listed.map((x) => x.scope).sort(), ['exec', 'tenant']);
    assert.ok(!keys.stdout.includes(tenantKey), 'never the key itself');

    // Removing the tenant is refused while it has a live sandbox.
    const rm = airlock(['tenant', 'rm', 'team-a'], admin);
    assert.equal(rm.code, 1);
    assert.match(rm.stderr, /live sandbox/);
    assert.equal(airlock(['sandbox', 'kill', info.id], team).code, 0);

    const tenantKeyId = listed.find((x) => x.scope === 'tenant')!.id;
    assert.equal(airlock(['key', 'revoke', tenantKeyId], admin).code, 0);
    const revoked = airlock(['sandbox', 'ls'], team);
    assert.equal(revoked.code, 1);
    assert.match(revoked.stderr, /API key is not valid/);

    assert.equal(airlock(['tenant', 'rm', 'team-a'], admin).code, 0);
    assert.doesNotMatch(airlock(['tenant', 'ls'], admin).stdout, /team-a/);
  });

  it('works in embedded mode too (--data-dir)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-test-tenants-embedded-'));
    try {
      assert.equal(airlock(['tenant', 'create', 'solo', '--data-dir', dir], {}).code, 0);
      const k = airlock(['key', 'create', '--tenant', 'solo', '--scope', 'read', '--data-dir', dir], {});
      assert.equal(k.code, 0, k.stderr);
      assert.match(lastLine(k.stdout), KEY_RE);
      const p = airlock(['policy', 'set', '--tenant', 'solo', '-', '--data-dir', dir], {}, '{"lifetime": {"maxSeconds": 60}}');
      assert.equal(p.code, 0, p.stderr);
      assert.match(airlock(['policy', 'get', '--tenant', 'solo', '--data-dir', dir], {}).stdout, /lifetime:\n {2}maxSeconds: 60/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--help explains the commands', () => {
    const h = airlock(['key', 'create', '--help'], {});
    assert.match(h.stdout, /last line/);
    assert.match(h.stdout, /--scope <scope>/);
    for (const c of [['tenant'], ['policy', 'test'], ['policy', 'set']]) assert.equal(airlock([...c, '--help'], {}).code, 0);
    assert.match(airlock(['--help'], {}).stdout, /\n {2}tenant\b[\s\S]*\n {2}key\b[\s\S]*\n {2}policy\b/);
  });
});
