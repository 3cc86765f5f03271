/**
 * `airlock approvals ls | approve | deny` against `airlock serve` (with --approval-timeout and a
 * signed --approval-webhook), and in embedded mode. Real sandboxes (`tiny`), real SQLite.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
const SECRET = 'cli-webhook-secret';

interface Result { code: number | null; stdout: string; stderr: string }

function baseEnv(): NodeJS.ProcessEnv {
  const { AIRLOCK_URL: _u, AIRLOCK_API_KEY: _k, ...rest } = process.env;
  return { ...rest, AIRLOCK_TEMPLATES_DIR: TEMPLATES_DIR };
}

function airlock(args: string[], env: NodeJS.ProcessEnv): Result {
  const r = spawnSync(process.execPath, [MAIN, ...args], { env: { ...baseEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 90_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A command that waits (a create held for approval), run in the background. */
function airlockAsync(args: string[], env: NodeJS.ProcessEnv): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...baseEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function pendingId(env: NodeJS.ProcessEnv): Promise<string> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = airlock(['approvals', 'ls', '--state', 'pending', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as Array<{ id: string }>;
    if (list[0]) return list[0].id;
    if (Date.now() > deadline) throw new Error('no pending approval appeared');
    await new Promise((res) => setTimeout(res, 100));
  }
}

describe('approvals commands against airlock serve', () => {
  let serveDir = '';
  let scratch = '';
  let server: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  let hook: http.Server | null = null;
  const hits: Array<{ signature: string | undefined; body: string }> = [];
  let admin: NodeJS.ProcessEnv = {};
  let tenant: NodeJS.ProcessEnv = {};

  before(async () => {
    assert.ok(existsSync(join(TEMPLATES_DIR, 'tiny')), 'the tiny template is missing (npm run quickstart)');
    hook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => { body += d.toString(); });
      req.on('end', () => { hits.push({ signature: req.headers['x-airlock-signature'] as string | undefined, body }); res.writeHead(200).end('ok'); });
    });
    await new Promise<void>((r) => hook!.listen(0, '127.0.0.1', () => r()));
    serveDir = mkdtempSync(join(tmpdir(), 'airlock-test-approvals-cli-'));
    scratch = mkdtempSync(join(tmpdir(), 'airlock-test-approvals-cli-files-'));
    const secretFile = join(scratch, 'secret');
    writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
    const child = spawn(process.execPath, [MAIN, 'serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0',
      '--approval-timeout', '30s', '--approval-webhook', `http://127.0.0.1:${(hook.address() as AddressInfo).port}/airlock`,
      '--approval-webhook-secret-file', secretFile], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
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
    assert.equal(airlock(['tenant', 'create', 'ops'], admin).code, 0);
    const policy = join(scratch, 'policy.yaml');
    writeFileSync(policy, 'approvals:\n  lifetimeAbove: { seconds: 600, action: ask }\n');
    assert.equal(airlock(['policy', 'set', policy, '--tenant', 'ops'], admin).code, 0);
    const key = airlock(['key', 'create', '--tenant', 'ops'], admin);
    assert.equal(key.code, 0, key.stderr);
    tenant = { AIRLOCK_URL: url, AIRLOCK_API_KEY: key.stdout.trimEnd().split('\n').at(-1)! };
  });

  after(async () => {
    try {
      const ls = airlock(['sandbox', 'ls', '--json'], admin);
      for (const s of ls.code === 0 ? JSON.parse(ls.stdout) as Array<{ id: string; state: string }> : []) {
        if (s.state === 'running') airlock(['sandbox', 'kill', s.id], admin);
      }
    } finally {
      server?.kill('SIGTERM');
      await exited;
      await new Promise((r) => hook?.close(r));
      rmSync(serveDir, { recursive: true, force: true });
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  it('approve: the held create finishes; the webhook got a signed body', async () => {
    const creating = airlockAsync(['sandbox', 'create', '--template', 'tiny', '--timeout', '1h'], tenant);
    const id = await pendingId(admin);
    const ls = airlock(['approvals', 'ls'], admin);
    assert.match(ls.stdout, new RegExp(`${id}\\s+pending\\s+ops\\s+-\\s+create`));
    assert.match(ls.stdout, /lifetime 3600 s/);
    const denied = airlock(['approvals', 'approve', id], tenant);
    assert.notEqual(denied.code, 0, 'a tenant key may not approve');
    assert.match(denied.stderr, /forbidden|may not/);
    const ok = airlock(['approvals', 'approve', id, '--reason', 'ticket 42'], admin);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`^${id} approved: lifetime 3600 s`));
    const created = await creating;
    assert.equal(created.code, 0, created.stderr);
    const sandboxId = created.stdout.trim();
    assert.match(sandboxId, /^[a-z0-9]{12}$/);
    assert.equal(airlock(['sandbox', 'kill', sandboxId], admin).code, 0);

    const hit = hits.find((h) => JSON.parse(h.body).id === id);
    assert.ok(hit, 'webhook called');
    assert.equal(hit.signature, `sha256=${createHmac('sha256', SECRET).update(hit.body).digest('hex')}`);
  });

  it('deny: the held create fails with the reason; ls --state denied --json shows it', async () => {
    const creating = airlockAsync(['sandbox', 'create', '--template', 'tiny', '--timeout', '1h'], tenant);
    const id = await pendingId(admin);
    assert.equal(airlock(['approvals', 'deny', id, '--reason', 'not today'], tenant).code, 0, 'a tenant key may deny its own');
    const r = await creating;
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /approval .* denied.*not today/);
    const list = JSON.parse(airlock(['approvals', 'ls', '--state', 'denied', '--json'], admin).stdout) as Array<{ id: string; reason: string }>;
    assert.equal(list.find((a) => a.id === id)?.reason, 'not today');
    const again = airlock(['approvals', 'approve', id], admin);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /already denied/);
  });

  it('embedded mode lists the same store (as admin)', () => {
    const r = airlock(['approvals', 'ls', '--json', '--data-dir', serveDir], {});
    assert.equal(r.code, 0, r.stderr);
    assert.ok((JSON.parse(r.stdout) as unknown[]).length >= 2);
  });

  it('serve refuses a bad webhook URL', () => {
    const r = airlock(['serve', '--data-dir', serveDir, '--listen', '127.0.0.1:0', '--approval-webhook', 'ftp://x'], {});
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--approval-webhook must be an http/);
  });
});
