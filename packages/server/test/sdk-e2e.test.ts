/**
 * @airlock/sdk against a real airlockd and engine. Lives in the server package because the
 * SDK itself depends on nothing (its own tests are the pure ones).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { ApiClient, ApiError, Sandbox } from '@airlock/sdk';
import { startTestServer, TEMPLATE, type TestServer } from './helpers.js';

describe('@airlock/sdk end to end', () => {
  let s: TestServer;
  let opts: { url: string; apiKey: string };
  before(async () => {
    s = await startTestServer();
    opts = { url: s.url, apiKey: s.key };
  });
  after(async () => { await s?.close(); });

  test('Sandbox.create → commands.run → files → setTimeout → kill', async () => {
    const sbx = await Sandbox.create({ ...opts, template: TEMPLATE, timeoutMs: 60_000, metadata: { suite: 'sdk' } });
    try {
      assert.match(sbx.sandboxId, /^[a-z0-9]+$/);

      const chunks: string[] = [];
      const r = await sbx.commands.run('echo hello; echo oops >&2; exit 7', { onStdout: (d) => chunks.push(d) });
      assert.deepEqual([r.exitCode, r.stdout, r.stderr, r.reason], [7, 'hello\n', 'oops\n', 'exited']);
      assert.equal(chunks.join(''), 'hello\n');

      const withOpts = await sbx.commands.run('cat; echo $X; pwd', { stdin: 'in\n', envs: { X: 'y' }, cwd: '/tmp' });
      assert.equal(withOpts.stdout, 'in\ny\n/tmp\n');
      const argv = await sbx.commands.run(['/bin/echo', 'a b', '$HOME']);
      assert.equal(argv.stdout, 'a b $HOME\n');

      const timedOut = await sbx.commands.run('sleep 30', { timeoutMs: 500 });
      assert.equal(timedOut.reason, 'timeout');
      assert.notEqual(timedOut.exitCode, 0);

      const bg = await sbx.commands.run('sleep 300', { background: true });
      assert.ok(bg.pid > 1);
      assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid));
      assert.equal(await sbx.commands.kill(bg.pid), true);

      const stat = await sbx.files.write('/work/a.py', 'print(2)\n');
      assert.deepEqual([stat.path, stat.type, stat.size], ['/work/a.py', 'file', 9]);
      assert.equal(await sbx.files.read('/work/a.py'), 'print(2)\n');
      const raw = new Uint8Array([0, 255, 1, 254]);
      await sbx.files.write('/work/raw.bin', raw);
      assert.deepEqual(await sbx.files.read('/work/raw.bin', { format: 'bytes' }), raw);
      const names = (await sbx.files.list('/work')).map((e) => e.name).sort();
      assert.deepEqual(names, ['a.py', 'raw.bin']);
      await assert.rejects(sbx.files.read('/work'), (e: unknown) => e instanceof ApiError && e.status === 400);
      await sbx.files.remove('/work/a.py');
      await assert.rejects(sbx.files.read('/work/a.py'), (e: unknown) => e instanceof ApiError && e.code === 'not_found');

      const before = Date.parse((await sbx.getInfo()).expiresAt);
      await sbx.setTimeout(3_600_000);
      const afterInfo = await sbx.getInfo();
      assert.ok(Date.parse(afterInfo.expiresAt) > before + 3_000_000);
      assert.equal(await sbx.isRunning(), true);

      const listed = await Sandbox.list({ ...opts, metadata: { suite: 'sdk' } });
      assert.deepEqual(listed.map((x) => x.id), [sbx.sandboxId]);
      const again = await Sandbox.connect(sbx.sandboxId, opts);
      assert.equal((await again.commands.run('echo again')).stdout, 'again\n');
    } finally {
      await sbx.kill().catch(() => {});
    }
    assert.equal((await sbx.getInfo()).state, 'killed');
    await assert.rejects(sbx.commands.run('true'), (e: unknown) => e instanceof ApiError && e.status === 409 && e.code === 'conflict');
    assert.equal(await Sandbox.kill(sbx.sandboxId, opts), false);
  });

  test('aborting a streamed command kills it', async () => {
    const sbx = await Sandbox.create({ ...opts, template: TEMPLATE });
    try {
      const ac = new AbortController();
      const run = sbx.commands.run('echo go; sleep 60', { signal: ac.signal, onStdout: () => ac.abort() });
      await assert.rejects(run, (e: unknown) => (e as Error).name === 'AbortError');
      const deadline = Date.now() + 5000;
      for (;;) {
        const ps = await sbx.commands.list();
        if (!ps.some((p) => p.cmdline.join(' ').includes('sleep 60'))) break;
        assert.ok(Date.now() < deadline, 'sleep still running');
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await sbx.kill().catch(() => {});
    }
  });

  test('API errors map to ApiError with status, code and field', async () => {
    const api = new ApiClient(opts);
    await assert.rejects(api.getSandbox('nosuchsandbox1'), (e: unknown) =>
      e instanceof ApiError && e.status === 404 && e.code === 'not_found');
    await assert.rejects(api.createSandbox({ template: TEMPLATE, resources: { memoryMiB: 1 } }), (e: unknown) =>
      e instanceof ApiError && e.status === 400 && e.code === 'bad_request' && e.field === 'resources.memoryMiB');
    await assert.rejects(new ApiClient({ url: s.url, apiKey: 'wrong' }).listSandboxes(), (e: unknown) =>
      e instanceof ApiError && e.status === 401 && e.code === 'unauthorized');
    await assert.rejects(api.createSandbox({ template: 'nosuchtemplate' }), (e: unknown) =>
      e instanceof ApiError && e.status === 404);
    assert.deepEqual(await api.health(), { ok: true, version: (await api.health()).version });
    assert.ok((await api.listTemplates()).some((t) => t.name === TEMPLATE));
    assert.ok((await api.listEvents({ limit: 2 })).length <= 2);
  });

  test('an unreachable server is ApiError unreachable', async () => {
    const port = await freePort();
    await assert.rejects(new ApiClient({ url: `http://127.0.0.1:${port}`, apiKey: 'x' }).health(), (e: unknown) =>
      e instanceof ApiError && e.status === 0 && e.code === 'unreachable');
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}
