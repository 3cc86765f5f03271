/**
 * Template administration over HTTP (and through @airlock/sdk): build with NDJSON progress,
 * import as a streamed body, remove with 409 while in use, admins only. The engine runs on
 * a private templates directory so nothing here touches the machine's templates.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiClient, ApiError } from '@airlock/sdk';
import { Engine, type AirlockEngine } from '@airlock/engine';

// Image tarballs are made by the engine's own test fixtures (tar-stream lives in the engine package).
type Entry = { name: string; type?: string; content?: string | Buffer; linkname?: string; mode?: number };
const fixtures = await import(new URL('../../../engine/dist/test/image-fixtures.js', import.meta.url).href) as {
  ociImage(layers: Entry[][], config?: Record<string, unknown>): Promise<Buffer>;
};
const ociImage = async (layers: Entry[][], config?: Record<string, unknown>) => new Uint8Array(await fixtures.ociImage(layers, config));
import { startServer } from '../src/index.js';

const TENANT_KEY = 'tenant-key-for-templates-test';

describe('template routes', () => {
  let dataDir: string;
  let templatesDir: string;
  let engine: Engine;
  let server: { url: string; close(): Promise<void> };
  let adminKey: string;
  const api = (path: string, init: RequestInit = {}, key = adminKey) => fetch(server.url + path, {
    ...init, headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string> | undefined) },
  });

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'airlock-test-tplapi-'));
    templatesDir = mkdtempSync(join(tmpdir(), 'airlock-test-tplapi-templates-'));
    engine = await Engine.open({ dataDir, templatesDir });
    adminKey = engine.ensureAdminKey()!;
    // A tenant caller, without a second key store: the engine answers for one more key.
    const withTenant = new Proxy(engine, {
      get(target, prop, receiver) {
        if (prop === 'authenticate') return (key: string) => (key === TENANT_KEY ? { tenant: 't1' } : target.authenticate(key));
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    }) as AirlockEngine;
    server = await startServer({ engine: withTenant, logger: false, listen: '127.0.0.1:0' });
  });

  after(async () => {
    await server?.close();
    for (const s of engine?.listSandboxes({ tenant: null }) ?? []) {
      if (s.state === 'running') await engine.killSandbox({ tenant: null }, s.id).catch(() => {});
    }
    await engine?.close();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(templatesDir, { recursive: true, force: true });
  });

  test('build: JSON answer, NDJSON progress, YAML body, errors that name the field', async () => {
    const res = await api('/v1/templates/app/build', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ recipe: { bootstrap: 'busybox', run: ['echo v1 > /v'] } }),
    });
    assert.equal(res.status, 200);
    const t = await res.json() as { name: string; digest: string; layers: number; inUse: number; path: string };
    assert.equal(t.name, 'app');
    assert.match(t.digest, /^sha256:/);
    assert.equal(t.layers, 3);
    assert.equal(t.inUse, 0);

    const streamed = await api('/v1/templates/app2/build', {
      method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' },
      body: JSON.stringify({ recipe: 'bootstrap: busybox\nrun: ["echo streamed-output"]\n' }),
    });
    assert.equal(streamed.status, 200);
    assert.match(streamed.headers.get('content-type') ?? '', /ndjson/);
    const lines = (await streamed.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; line?: string; template?: { name: string } });
    assert.ok(lines.some((l) => l.type === 'log' && l.line?.includes('streamed-output')), JSON.stringify(lines));
    assert.equal(lines.at(-1)!.type, 'done');
    assert.equal(lines.at(-1)!.template!.name, 'app2');

    const yaml = await api('/v1/templates/app3/build', { method: 'POST', headers: { 'content-type': 'application/yaml' }, body: 'bootstrap: busybox\nenv: {A: b}\n' });
    assert.equal(yaml.status, 200, await yaml.clone().text());

    const bad = await api('/v1/templates/bad/build', {
      method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' },
      body: JSON.stringify({ recipe: { packages: ['ok', 'not ok!'] } }),
    });
    assert.equal(bad.status, 400, 'a refused recipe gets its status even when streaming was asked for');
    const body = await bad.json() as { error: { code: string; field: string } };
    assert.equal(body.error.field, 'packages.1');

    const files = await api('/v1/templates/bad/build', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ recipe: { bootstrap: 'busybox', files: [{ src: 'a', dest: '/a' }] } }),
    });
    assert.equal(files.status, 400);
    assert.match(((await files.json()) as { error: { message: string } }).error.message, /needs the recipe's directory/);
    const both = await api('/v1/templates/bad/build', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ builtin: true, recipe: 'x' }) });
    assert.equal(both.status, 400);
    const noRecipe = await api('/v1/templates/nope/build', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ builtin: true }) });
    assert.equal(noRecipe.status, 400);
  });

  test('import streams the tarball body; a refused image is a 400 and leaves nothing', async () => {
    const img = await ociImage([[{ name: 'bin/', type: 'directory' }, { name: 'bin/hello', content: 'hi', mode: 0o755 }]], { Env: ['X=1'], WorkingDir: '/srv' });
    const res = await api('/v1/templates/imported/import', { method: 'POST', headers: { 'content-type': 'application/x-tar' }, body: img });
    assert.equal(res.status, 200, await res.clone().text());
    const t = await res.json() as { name: string; layers: number };
    assert.deepEqual([t.name, t.layers], ['imported', 2]);

    const before = readdirSync(join(templatesDir, '_layers')).sort();
    const evil = await ociImage([[{ name: 'x', type: 'symlink', linkname: '/../../etc/shadow' }]]);
    const refused = await api('/v1/templates/evil/import', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: evil });
    assert.equal(refused.status, 400);
    assert.match(((await refused.json()) as { error: { message: string } }).error.message, /^image rejected: .*symlink points outside the image/);
    assert.deepEqual(readdirSync(join(templatesDir, '_layers')).sort(), before);
    assert.ok(!readdirSync(templatesDir).includes('evil'));

    // An absolute symlink is refused by default; ?relativizeLinks=1 stores the relative equivalent.
    const abs = await ociImage([[{ name: 'etc/', type: 'directory' }, { name: 'etc/zone', content: 'UTC' }, { name: 'etc/localtime', type: 'symlink', linkname: '/etc/zone' }]]);
    const strict = await api('/v1/templates/abs/import', { method: 'POST', headers: { 'content-type': 'application/x-tar' }, body: abs });
    assert.equal(strict.status, 400);
    assert.match(((await strict.json()) as { error: { message: string } }).error.message, /absolute symlink/);
    const relaxed = await api('/v1/templates/abs/import?relativizeLinks=1', { method: 'POST', headers: { 'content-type': 'application/x-tar' }, body: abs });
    assert.equal(relaxed.status, 200, await relaxed.clone().text());
  });

  test('the SDK builds with progress, imports a stream, lists and removes; 409 while in use', async () => {
    const client = new ApiClient({ url: server.url, apiKey: adminKey });
    const logs: string[] = [];
    const built = await client.buildTemplate('sdk', { recipe: { bootstrap: 'busybox', run: ['echo from-sdk'] } }, { onLog: (l) => logs.push(l) });
    assert.equal(built.name, 'sdk');
    assert.ok(logs.some((l) => l.includes('from-sdk')), logs.join('\n'));
    const img = await ociImage([[{ name: 'bin/', type: 'directory' }, { name: 'bin/x', content: 'x' }]]);
    const stream = new ReadableStream<Uint8Array>({ start(c) { c.enqueue(img.subarray(0, 1000)); c.enqueue(img.subarray(1000)); c.close(); } });
    const imported = await client.importTemplate('sdk-img', stream);
    assert.equal(imported.name, 'sdk-img');

    const sbx = await engine.createSandbox({ tenant: null }, { template: 'sdk', timeoutSeconds: 60 });
    const listed = await client.listTemplates();
    assert.equal(listed.find((x) => x.name === 'sdk')?.inUse, 1);
    await assert.rejects(client.removeTemplate('sdk'), (e: unknown) => e instanceof ApiError && e.status === 409);
    await engine.killSandbox({ tenant: null }, sbx.id);
    await client.removeTemplate('sdk');
    await assert.rejects(client.removeTemplate('sdk'), (e: unknown) => e instanceof ApiError && e.status === 404);
    assert.equal((await client.listTemplates()).some((x) => x.name === 'sdk'), false);
  });

  test('tenants may list templates (without host paths) but not build, import or remove them', async () => {
    const list = await api('/v1/templates', {}, TENANT_KEY);
    assert.equal(list.status, 200);
    const body = await list.json() as { templates: Array<{ name: string; path?: string; inUse: number }> };
    assert.ok(body.templates.length > 0);
    assert.ok(body.templates.every((t) => t.path === undefined && typeof t.inUse === 'number'));
    const tries: Array<[string, RequestInit]> = [
      ['/v1/templates/t/build', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ builtin: true }) }],
      ['/v1/templates/t/import', { method: 'POST', headers: { 'content-type': 'application/x-tar' }, body: 'x' }],
      ['/v1/templates/app/delete', { method: 'DELETE' }],
      ['/v1/templates/app', { method: 'DELETE' }],
    ];
    for (const [path, init] of tries) {
      const res = await api(path, init, TENANT_KEY);
      if (path.endsWith('/delete')) continue; // no such route; just must not crash
      assert.equal(res.status, 403, path);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'forbidden');
    }
    assert.ok(readdirSync(templatesDir).includes('app'), 'still there');
    const doc = await (await fetch(`${server.url}/openapi.json`)).json() as { paths: Record<string, Record<string, unknown>> };
    assert.ok(doc.paths['/v1/templates/{name}/build']?.post);
    assert.ok(doc.paths['/v1/templates/{name}/import']?.post);
    assert.ok(doc.paths['/v1/templates/{name}']?.delete);
  });
});
