/**
 * `airlock audit verify | tail | export` against a served daemon: a real `tiny` sandbox's story
 * (create, exec, file write, kill), the SSE follower cut mid-stream (resumes with Last-Event-ID,
 * no loss, no repeats), an evidence bundle verified offline, then tampered with.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket, connect } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { followEvents } from '../src/audit-follow.js';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

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

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A TCP relay in front of the daemon whose connections the test can cut. */
function relay(target: URL): Promise<{ url: string; cut: () => number; close: () => Promise<void>; server: Server }> {
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    open.add(client); open.add(upstream);
    const drop = () => { client.destroy(); upstream.destroy(); open.delete(client); open.delete(upstream); };
    client.on('error', drop); upstream.on('error', drop); client.on('close', drop); upstream.on('close', drop);
    client.pipe(upstream); upstream.pipe(client);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const port = (server.address() as { port: number }).port;
    resolve({
      url: `http://127.0.0.1:${port}`, server,
      cut: () => { const n = open.size; for (const s of open) s.destroy(); open.clear(); return n; },
      close: () => new Promise<void>((r) => { for (const s of open) s.destroy(); server.close(() => r()); }),
    });
  }));
}

describe('airlock audit against airlock serve', () => {
  let dir = '';
  let dataDir = '';
  let server: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  let url = '';
  let key = '';
  let admin: NodeJS.ProcessEnv = {};
  let sandbox = '';

  const api = async (method: string, path: string, body?: unknown, raw?: Buffer): Promise<Response> => fetch(new URL(path, url), {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(raw ? { 'content-type': 'application/octet-stream' } : {}) },
    body: raw ? new Uint8Array(raw) : (body !== undefined ? JSON.stringify(body) : undefined),
  });

  before(async () => {
    assert.ok(existsSync(join(TEMPLATES_DIR, 'tiny')), 'the tiny template is missing (npm run quickstart)');
    // The data dir itself must be the temp dir: sandboxes traverse it (its parent stays 0700).
    dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-cli-'));
    dir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-cli-files-'));
    const child = spawn(process.execPath, [MAIN, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--audit-key', join(dir, 'keys', 'audit.key')], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
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
    key = readFileSync(join(dataDir, 'admin.key'), 'utf8').trim();
    admin = { AIRLOCK_URL: url, AIRLOCK_API_KEY: key };
  });

  after(async () => {
    if (sandbox) await api('DELETE', `/v1/sandboxes/${sandbox}`).catch(() => undefined);
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('follows a sandbox story through cut connections without loss or repeats, exports and verifies it', async () => {
    const created = await api('POST', '/v1/sandboxes', { template: 'tiny', timeoutSeconds: 120 });
    assert.equal(created.status, 201, await created.clone().text());
    sandbox = ((await created.json()) as { id: string }).id;

    const cuttable = await relay(new URL(url));
    const seen: number[] = [];
    let reconnects = 0;
    let cuts = 0;
    const ac = new AbortController();
    const following = followEvents({
      url: cuttable.url, apiKey: key, filter: { sandbox }, after: 0, signal: ac.signal, reconnectDelayMs: 50,
      onEvent: (e) => seen.push(e.seq), onReconnect: () => { reconnects++; },
    });
    try {
      const ex = await api('POST', `/v1/sandboxes/${sandbox}/exec`, { cmd: ['/bin/sh', '-c', 'echo story-out'] });
      assert.equal(ex.status, 200, await ex.clone().text());
      for (let i = 0; i < 40; i++) {
        const w = await api('PUT', `/v1/sandboxes/${sandbox}/files?path=/tmp/f${i}`, undefined, Buffer.from(`file ${i}\n`));
        assert.equal(w.status, 200, await w.clone().text());
        if (i % 10 === 5) {
          // Mid-stream, while events keep coming: the writes go on while it reconnects.
          if (cuttable.cut() > 0) cuts++;
        }
      }
      const killed = await api('DELETE', `/v1/sandboxes/${sandbox}`);
      assert.ok(killed.status < 300, await killed.clone().text());
      const listed = ((await (await api('GET', `/v1/events?sandbox=${sandbox}&limit=10000`)).json()) as { events: Array<{ seq: number; type: string }> }).events;
      const deadline = Date.now() + 15_000;
      while (seen.length < listed.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await waitFor(() => reconnects === cuts);
      assert.ok(cuts >= 2 && reconnects === cuts, `cut ${cuts} times, reconnected ${reconnects} times`);
      assert.deepEqual(seen, listed.map((e) => e.seq), 'every event once, in order');
      const types = listed.map((e) => e.type);
      for (const t of ['sandbox.created', 'exec.started', 'exec.exited', 'file.written']) assert.ok(types.includes(t), `${t} in ${types.join(',')}`);
      assert.ok(types.some((t) => t === 'sandbox.killed' || t === 'sandbox.stopped'), types.join(','));
    } finally {
      ac.abort();
      await following;
      await cuttable.close();
    }

    // Filters: by type and by tenant.
    const execOnly = ((await (await api('GET', `/v1/events?sandbox=${sandbox}&type=exec.exited`)).json()) as { events: unknown[] }).events;
    assert.equal(execOnly.length, 1);
    const otherTenant = ((await (await api('GET', '/v1/events?tenant=nobody')).json()) as { events: unknown[] }).events;
    assert.equal(otherTenant.length, 0);

    // The whole log, against the daemon and offline on the data dir.
    const v = airlock(['audit', 'verify', '--json'], admin);
    assert.equal(v.code, 0, v.stderr + v.stdout);
    assert.equal((JSON.parse(v.stdout) as { ok: boolean }).ok, true);
    const pub = ((await (await api('GET', '/v1/audit/public-key')).json()) as { publicKey: string }).publicKey;
    writeFileSync(join(dir, 'audit.pub'), pub);
    const offline = airlock(['audit', 'verify', '--data-dir', dataDir, '--public-key', join(dir, 'audit.pub')], {});
    assert.equal(offline.code, 0, offline.stderr + offline.stdout);
    assert.match(offline.stdout, /intact/);

    // Evidence bundle: exported, verified offline with the reviewer's own copy of the key.
    const bundle = join(dir, 'evidence.tar.gz');
    const ex = airlock(['audit', 'export', '--sandbox', sandbox, '-o', bundle], admin);
    assert.equal(ex.code, 0, ex.stderr);
    const ok = airlock(['audit', 'verify', '--bundle', bundle, '--public-key', join(dir, 'audit.pub'), '--json'], {});
    assert.equal(ok.code, 0, ok.stderr + ok.stdout);
    const okResult = JSON.parse(ok.stdout) as { ok: boolean; selectedEvents: number };
    assert.ok(okResult.ok && okResult.selectedEvents >= 44, ok.stdout);

    // The story is all in the bundle: exec output, files, policy, verification.
    const { readBundleTar, writeBundleTar } = await import('@airlock/engine');
    const files = readBundleTar(readFileSync(bundle));
    const execs = files.get('exec-outputs.ndjson')!.toString().trim().split('\n').map((l) => JSON.parse(l) as { cmd: string[]; exitCode: number; stdout: string | null; stdoutSha256?: string });
    assert.deepEqual(execs.map((e) => [e.cmd, e.exitCode, e.stdout]), [[['/bin/sh', '-c', 'echo story-out'], 0, 'story-out\n']]);

    // An exec output file swapped for another text: reported (its hash is in the chained exec.exited).
    const outName = `output-${execs[0]!.stdoutSha256}`;
    assert.ok(files.has(outName), [...files.keys()].join(','));
    const swapped = new Map(files);
    swapped.set(outName, Buffer.from('nothing to see\n'));
    writeFileSync(join(dir, 'swapped.tar.gz'), writeBundleTar(swapped));
    const badOut = airlock(['audit', 'verify', '--bundle', join(dir, 'swapped.tar.gz'), '--json'], {});
    assert.equal(badOut.code, 1, badOut.stdout + badOut.stderr);
    assert.equal((JSON.parse(badOut.stdout) as { firstBroken: { reason: string } }).firstBroken.reason, 'output-mismatch');
    const manifest = JSON.parse(files.get('file-manifest.json')!.toString()) as Array<{ path: string; state: string }>;
    assert.equal(manifest.filter((f) => f.state === 'written').length, 40);
    assert.ok(files.has('policy.json') && files.has('verification.json') && files.has('public-key.pem'));

    // Tampered: an edited event fails, with its position; exit 1.
    const lines = files.get('events.ndjson')!.toString().trimEnd().split('\n');
    const i = lines.findIndex((l) => l.includes('"type":"file.written"'));
    lines[i] = lines[i]!.replace('"size":7', '"size":8');
    files.set('events.ndjson', Buffer.from(lines.join('\n') + '\n'));
    writeFileSync(join(dir, 'tampered.tar.gz'), writeBundleTar(files));
    const bad = airlock(['audit', 'verify', '--bundle', join(dir, 'tampered.tar.gz')], {});
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, new RegExp(`BROKEN at seq ${(JSON.parse(lines[i]!) as { seq: number }).seq}: hash-mismatch`));
  });

  it('verify and export are admin-only (a tenant key gets 403)', async () => {
    const made = await api('POST', '/v1/keys', { tenant: 'default', scope: 'tenant' });
    assert.equal(made.status, 201, await made.clone().text());
    const tenantKey = ((await made.json()) as { key: string }).key;
    for (const path of ['/v1/audit/verify', '/v1/audit/public-key', `/v1/audit/export?sandbox=${sandbox || 'x'}`]) {
      const r = await fetch(new URL(path, url), { headers: { authorization: `Bearer ${tenantKey}` } });
      assert.equal(r.status, 403, path);
    }
  });
});
