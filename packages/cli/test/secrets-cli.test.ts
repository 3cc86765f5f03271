/**
 * `airlock secret set | ls | rm` and `--secret`: in embedded mode and against `airlock serve
 * --secrets-key`. The value goes in on stdin; no command prints it back.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
const VALUE = 'cli-secret-value-8f7e6d5c4b3a';

interface Result { code: number | null; stdout: string; stderr: string }

function baseEnv(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, AIRLOCK_SECRETS_KEY: _s, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Result {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    env: { ...baseEnv(), ...env }, input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], timeout: 90_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

function dbHoldsValue(dataDir: string): boolean {
  return readdirSync(dataDir).filter((f) => f.startsWith('airlock.db')).some((f) => readFileSync(join(dataDir, f)).includes(VALUE));
}

describe('airlock secret, embedded', () => {
  let dataDir = '';
  before(() => { dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-secrets-cli-')); });
  after(() => { if (dataDir) rmSync(dataDir, { recursive: true, force: true }); });

  it('set reads the value from stdin; ls shows no value; --secret gives a sandbox only a placeholder', () => {
    const set = airlock(['secret', 'set', 'API_TOKEN', '--data-dir', dataDir, '--host', 'api.example.com', '--header', 'Authorization: Bearer {value}'], {}, `${VALUE}\n`);
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, 'API_TOKEN\n');
    const key = statSync(join(dataDir, 'secrets.key'));
    assert.equal(key.mode & 0o777, 0o600);
    assert.ok(!dbHoldsValue(dataDir), 'the database holds no value in clear');

    const ls = airlock(['secret', 'ls', '--data-dir', dataDir, '--json']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.ok(!ls.stdout.includes(VALUE));
    const listed = JSON.parse(ls.stdout) as Array<{ tenant: string; name: string; hosts: string[]; header: string }>;
    assert.deepEqual(listed.map((s) => [s.tenant, s.name, s.hosts, s.header]), [['default', 'API_TOKEN', ['api.example.com'], 'Authorization: Bearer {value}']]);
    const table = airlock(['secret', 'ls', '--data-dir', dataDir]);
    assert.match(table.stdout, /API_TOKEN\s+api\.example\.com\s+Authorization: Bearer \{value\}/);

    const run = airlock(['run', '--data-dir', dataDir, '--template', 'tiny', '--secret', 'API_TOKEN', '--', 'sh', '-c', 'printf %s "$API_TOKEN"']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^airlock-secret-API_TOKEN-[0-9a-f]{32}$/);

    const unknown = airlock(['run', '--data-dir', dataDir, '--template', 'tiny', '--secret', 'NOPE', '--', 'true']);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /secret NOPE not found/);
  });

  it('refuses a missing or short value, a bad name and no host', () => {
    const empty = airlock(['secret', 'set', 'X_TOKEN', '--data-dir', dataDir, '--host', 'a.example'], {}, '');
    assert.notEqual(empty.code, 0);
    assert.match(empty.stderr, /value/);
    const badName = airlock(['secret', 'set', 'bad-name', '--data-dir', dataDir, '--host', 'a.example', '--value', VALUE]);
    assert.notEqual(badName.code, 0);
    assert.match(badName.stderr, /environment variable name/);
    const noHost = airlock(['secret', 'set', 'X_TOKEN', '--data-dir', dataDir, '--value', VALUE]);
    assert.notEqual(noHost.code, 0);
    assert.match(noHost.stderr, /--host/);
  });

  it('rm removes it; a second rm fails', () => {
    assert.equal(airlock(['secret', 'rm', 'API_TOKEN', '--data-dir', dataDir]).code, 0);
    assert.equal(JSON.parse(airlock(['secret', 'ls', '--data-dir', dataDir, '--json']).stdout).length, 0);
    assert.notEqual(airlock(['secret', 'rm', 'API_TOKEN', '--data-dir', dataDir]).code, 0);
  });
});

describe('airlock secret against airlock serve --secrets-key', () => {
  let serveDir = '';
  let keyDir = '';
  let server: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  let admin: NodeJS.ProcessEnv = {};

  before(async () => {
    serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-secrets-serve-'));
    keyDir = mkdtempSync(join(tmpdir(), 'airlock-test-secrets-keydir-'));
    const child = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0', '--secrets-key', join(keyDir, 'k')], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    server = child;
    exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    let out = '';
    const url = await new Promise<string>((resolve, reject) => {
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
    if (serveDir) rmSync(serveDir, { recursive: true, force: true });
    if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  });

  it('the key goes where --secrets-key says, never into the data dir', () => {
    const set = airlock(['secret', 'set', 'SVC_TOKEN', '--host', 'svc.example.com'], admin, VALUE);
    assert.equal(set.code, 0, set.stderr);
    assert.equal(statSync(join(keyDir, 'k')).mode & 0o777, 0o600);
    assert.ok(!existsSync(join(serveDir, 'secrets.key')));
    assert.ok(!dbHoldsValue(serveDir));
    const ls = airlock(['secret', 'ls', '--json'], admin);
    assert.deepEqual((JSON.parse(ls.stdout) as Array<{ name: string }>).map((s) => s.name), ['SVC_TOKEN']);
    assert.ok(!ls.stdout.includes(VALUE));
    assert.equal(airlock(['secret', 'rm', 'SVC_TOKEN'], admin).code, 0);
  });
});
