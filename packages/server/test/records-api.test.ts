/**
 * GET /v1/sandboxes/:id/history, GET /v1/blobs/:sha256 and POST …/snapshots/processes over
 * HTTP, through the SDK, and `airlock sandbox history` against the daemon (docs/records.md).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '@airlock/sdk';
import { startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const CLI = join(fileURLToPath(new URL('.', import.meta.url)), '../../../cli/dist/src/main.js');

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

describe('records API', () => {
  let srv: TestServer;
  let tenantKey: string;
  let otherKey: string;
  before(async () => {
    srv = await startTestServer();
    const admin = { tenant: null };
    srv.engine.createTenant(admin, 'hist');
    srv.engine.createTenant(admin, 'histother');
    tenantKey = srv.engine.createKey(admin, { tenant: 'hist' }).key;
    otherKey = srv.engine.createKey(admin, { tenant: 'histother' }).key;
  });
  after(async () => { await srv?.close(); });

  test('history, blobs and process snapshots; another tenant sees none of it', async () => {
    const client = new ApiClient({ url: srv.url, apiKey: tenantKey });
    const created = await client.createSandbox({ template: TEMPLATE, timeoutSeconds: 60 });
    const id = created.id;
    await client.exec(id, { cmd: ['sh', '-c', 'echo recorded-line; printf "\\033[2J" >&2'] });
    const snap = await client.snapshotProcesses(id);
    assert.ok(snap.seq > 0);

    const history = await client.history(id);
    const exec = history.find((e) => e.kind === 'exec');
    assert.ok(exec && exec.kind === 'exec');
    assert.deepEqual(exec.exec.cmd.slice(0, 2), ['sh', '-c']);
    assert.equal(new TextDecoder().decode(await client.readBlob(exec.exec.stdout.sha256!)), 'recorded-line\n');
    assert.ok(history.some((e) => e.kind === 'event' && e.type === 'process.snapshot'));

    const other = { authorization: `Bearer ${otherKey}` };
    assert.equal((await srv.api(`/v1/sandboxes/${id}/history`, { headers: other })).status, 404);
    assert.equal((await srv.api(`/v1/blobs/${exec.exec.stdout.sha256}`, { headers: other })).status, 404);
    assert.equal((await srv.api('/v1/blobs/not-a-hash')).status, 400);

    const env = { AIRLOCK_URL: srv.url, AIRLOCK_API_KEY: tenantKey };
    const text = await runCli(['sandbox', 'history', id, '--output'], env);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /sandbox\.created/);
    assert.match(text.stdout, /exec .*"sh","-c".*→ 0 \(exited\)/);
    assert.match(text.stdout, /stdout \| recorded-line/);
    assert.match(text.stdout, /stderr \| \\x1b\[2J/, 'escape sequences are shown, not sent to the terminal');
    assert.ok(!text.stdout.includes('\x1b'));
    const json = await runCli(['sandbox', 'history', id, '--json'], env);
    assert.equal(json.code, 0, json.stderr);
    assert.equal((JSON.parse(json.stdout) as unknown[]).length, history.length);
    await client.killSandbox(id);
  });
});
