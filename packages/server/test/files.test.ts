/**
 * The files routes over a real sandbox: streamed uploads and downloads (1 GiB in bounded
 * memory), stat, mkdir, rename, the watch (SSE) and outputs (tar and list); and the SDK's
 * side of the same.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { Sandbox, type FileWatchEvent } from '@airlock/sdk';
import { json, startTestServer, TEMPLATE, type TestServer } from './helpers.js';

const GiB = 1024 * 1024 * 1024;

/**
 * The client side of a big transfer, in a child process so that this process's memory is the
 * server's alone: PUT of `total` bytes streamed from one reused buffer (chunked or with a
 * Content-Length), or a GET whose bytes are hashed and dropped.
 */
const TRANSFER_CLIENT = `
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
const [mode, url, key, totalStr] = process.argv.slice(1);
const total = Number(totalStr);
const chunk = Buffer.alloc(1024 * 1024);
for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32BE(i, i);
const done = (r) => { process.stdout.write(JSON.stringify(r)); };
if (mode === 'get') {
  http.get(url, { headers: { authorization: 'Bearer ' + key } }, (res) => {
    const h = createHash('sha256');
    let bytes = 0;
    res.on('data', (c) => { bytes += c.length; h.update(c); });
    res.on('end', () => done({ status: res.statusCode, bytes, sha256: h.digest('hex') }));
  });
} else {
  const headers = { authorization: 'Bearer ' + key, 'content-type': 'application/octet-stream' };
  if (mode === 'put') headers['content-length'] = total;
  const req = http.request(url, { method: 'PUT', headers }, (res) => {
    let body = '';
    res.on('data', (c) => { body += c; });
    res.on('end', () => done({ status: res.statusCode, body }));
  });
  req.on('error', (e) => done({ status: 0, body: String(e) }));
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(chunk.length, total - sent);
      sent += n;
      if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void req.once('drain', pump);
    }
    req.end();
  };
  pump();
}
`;

function transfer(args: string[]): Promise<any> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--input-type=module', '-e', TRANSFER_CLIENT, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (b) => { out += b; });
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`transfer client exited ${code}`))));
  });
}

function putStream(url: string, key: string, total: number, chunked: boolean): Promise<{ status: number; body: string }> {
  return transfer([chunked ? 'put-chunked' : 'put', url, key, String(total)]);
}

function getHashed(url: string, key: string): Promise<{ status: number; bytes: number; sha256: string }> {
  return transfer(['get', url, key, '0']);
}

function expectedSha(total: number): string {
  const chunk = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32BE(i, i);
  const h = createHash('sha256');
  for (let sent = 0; sent < total; sent += chunk.length) h.update(sent + chunk.length <= total ? chunk : chunk.subarray(0, total - sent));
  return h.digest('hex');
}

/** Reads SSE messages until `until` says stop (or the time runs out). */
async function sseUntil(res: Response, until: (events: Array<{ event: string; data: any }>) => boolean, ms = 5000) {
  const events: Array<{ event: string; data: any }> = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const end = Date.now() + ms;
  while (!until(events) && Date.now() < end) {
    const r = await Promise.race([reader.read(), new Promise<null>((ok) => setTimeout(() => ok(null), end - Date.now()))]);
    if (!r || r.done) break;
    buf += dec.decode(r.value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (ev && data) events.push({ event: ev, data: JSON.parse(data) });
    }
  }
  await reader.cancel().catch(() => {});
  return events;
}

describe('files routes', () => {
  let s: TestServer;
  let id: string;
  const base = () => `/v1/sandboxes/${id}`;
  const q = (p: string) => encodeURIComponent(p);
  const sh = async (script: string) => {
    const r = await s.engine.exec({ tenant: null }, id, { cmd: ['/bin/sh', '-c', script] });
    assert.equal(r.exitCode, 0, r.stderr);
    return r.stdout;
  };

  before(async () => {
    s = await startTestServer();
    const res = await s.api('/v1/sandboxes', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ template: TEMPLATE, timeoutSeconds: 600, resources: { diskMiB: 3072 } }),
    });
    const info = await json(res);
    assert.equal(res.status, 201, JSON.stringify(info));
    assert.equal(info.outputPath, '/work/out');
    id = info.id;
  });
  after(async () => { await s?.close(); });

  test('1 GiB up and down, streamed: the server stays within a bounded memory growth', async (t) => {
    const url = `${s.url}${base()}/files?path=${q('/work/big.bin')}`;
    // Warm up: the first transfers grow the heap and the allocator to their working size once
    // (JIT, socket buffers, buffers the GC has not collected yet); after that it stays put.
    assert.equal((await putStream(url, s.key, 64 * 1024 * 1024, true)).status, 200);
    assert.equal((await getHashed(url, s.key)).bytes, 64 * 1024 * 1024);
    const before = process.memoryUsage.rss();
    let peak = before;
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()); }, 20);
    try {
      const put = await putStream(url, s.key, GiB, true);
      assert.equal(put.status, 200, put.body);
      assert.equal(JSON.parse(put.body).size, GiB);
      const got = await getHashed(url, s.key);
      assert.equal(got.status, 200);
      assert.equal(got.bytes, GiB);
      assert.equal(got.sha256, expectedSha(GiB));
    } finally {
      clearInterval(sampler);
    }
    const growthMiB = (peak - before) / 1024 / 1024;
    t.diagnostic(`server RSS growth moving 1 GiB each way: ${growthMiB.toFixed(1)} MiB`);
    assert.ok(growthMiB < 64, `the server grew ${growthMiB.toFixed(1)} MiB moving 1 GiB each way`);
    await sh('rm /work/big.bin');
  });

  test('stat, mkdir, rename', async () => {
    const mk = await s.api(`${base()}/files/mkdir?path=${q('/work/m/n')}&parents=1&mode=0750`, { method: 'POST' });
    const made = await json(mk);
    assert.equal(mk.status, 201, JSON.stringify(made));
    assert.deepEqual([made.path, made.type, made.mode], ['/work/m/n', 'dir', 0o750]);
    assert.equal((await s.api(`${base()}/files/mkdir?path=${q('/work/m/n')}`, { method: 'POST' })).status, 409);
    assert.equal((await s.api(`${base()}/files/mkdir?path=${q('/work/none/n')}`, { method: 'POST' })).status, 404);

    await s.api(`${base()}/files?path=${q('/work/m/a.txt')}`, { method: 'PUT', body: 'A' });
    await s.api(`${base()}/files?path=${q('/work/m/b.txt')}`, { method: 'PUT', body: 'B' });
    const st = await json(await s.api(`${base()}/files/stat?path=${q('/work/m/a.txt')}`));
    assert.deepEqual([st.path, st.type, st.size], ['/work/m/a.txt', 'file', 1]);
    assert.equal((await s.api(`${base()}/files/stat?path=${q('/work/m/zzz')}`)).status, 404);

    const rename = (body: unknown) => s.api(`${base()}/files/rename`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const clash = await rename({ from: '/work/m/a.txt', to: '/work/m/b.txt' });
    assert.equal(clash.status, 409);
    assert.equal((await json(clash)).error.code, 'conflict');
    const moved = await rename({ from: '/work/m/a.txt', to: '/work/m/n/b.txt' });
    assert.equal(moved.status, 200);
    assert.equal((await json(moved)).path, '/work/m/n/b.txt');
    assert.equal((await rename({ from: '/work/m/b.txt', to: '/work/m/n/b.txt', overwrite: true })).status, 200);
    assert.equal(await (await s.api(`${base()}/files?path=${q('/work/m/n/b.txt')}`)).text(), 'B');
    assert.equal((await rename({ from: 'relative', to: '/x' })).status, 400);
    assert.equal((await rename({ from: '/work/m', to: '/x', extra: 1 })).status, 400);
  });

  test('a chunked upload past the limit is 413 and leaves nothing; a declared one is refused before it is read', async () => {
    const small = await startTestServer({ uploadLimitBytes: 1024 * 1024 });
    try {
      const c = await json(await small.api('/v1/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template: TEMPLATE }) }));
      const url = `${small.url}/v1/sandboxes/${c.id}/files?path=${q('/work/too-big')}`;
      const chunked = await putStream(url, small.key, 3 * 1024 * 1024, true);
      assert.equal(chunked.status, 413, chunked.body);
      assert.equal(JSON.parse(chunked.body).error.code, 'too_large');
      const declared = await putStream(url, small.key, 3 * 1024 * 1024, false);
      assert.equal(declared.status, 413, declared.body);
      const ls = await small.engine.exec({ tenant: null }, c.id, { cmd: ['/bin/sh', '-c', 'ls -a /work'] });
      assert.equal(ls.stdout, '.\n..\n');
      assert.equal((await putStream(url, small.key, 1024 * 1024, true)).status, 200);
    } finally {
      await small.close();
    }
  });

  test('watch: SSE events for nested create, modify, delete; bad paths answer before the stream', async () => {
    await sh('mkdir -p /work/w');
    const ctl = new AbortController();
    const res = await s.api(`${base()}/files/watch?path=${q('/work/w')}&recursive=1`, { signal: ctl.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    // Pauses: a file created and removed within the instant its new directory gets a watch
    // is invisible to inotify (and to any watcher built on it).
    setTimeout(() => void sh('mkdir -p /work/w/a/b && sleep 0.2 && echo x > /work/w/a/b/f && sleep 0.2 && rm /work/w/a/b/f'), 50);
    const events = await sseUntil(res, (ev) => ev.some((e) => e.event === 'deleted'));
    ctl.abort();
    assert.equal(events[0]!.event, 'ready');
    const seen = events.slice(1).map((e) => `${e.event} ${e.data.path}`);
    for (const want of ['created /work/w/a', 'created /work/w/a/b/f', 'modified /work/w/a/b/f', 'deleted /work/w/a/b/f']) {
      assert.ok(seen.includes(want), `${want} missing from ${seen.join(', ')}`);
    }
    assert.equal((await s.api(`${base()}/files/watch?path=${q('/work/nope')}`)).status, 404);
    assert.equal((await s.api(`${base()}/files/watch?path=${q('/work/w')}&recursive=2`)).status, 400);

    // The stream ends with `end` when the directory goes.
    const res2 = await s.api(`${base()}/files/watch?path=${q('/work/w/a')}`);
    setTimeout(() => void sh('rm -rf /work/w/a'), 50);
    const tail = await sseUntil(res2, (ev) => ev.some((e) => e.event === 'end'));
    assert.deepEqual(tail.at(-1), { event: 'end', data: { reason: 'removed' } });
  });

  test('outputs: tar and list; a link to /etc is recorded, not followed', async () => {
    await sh('mkdir -p /work/out/sub && echo result > /work/out/sub/r.txt && ln -s /etc /work/out/etc');
    const list = await s.api(`${base()}/outputs?format=list`);
    const body = await json(list);
    assert.equal(list.status, 200, JSON.stringify(body));
    assert.equal(body.root, '/work/out');
    const byPath = Object.fromEntries(body.entries.map((e: { path: string }) => [e.path, e]));
    assert.deepEqual(Object.keys(byPath).sort(), ['etc', 'sub', 'sub/r.txt']);
    assert.equal(byPath['sub/r.txt'].sha256, createHash('sha256').update('result\n').digest('hex'));
    assert.deepEqual([byPath.etc.type, byPath.etc.linkTarget], ['symlink', '/etc']);

    const tarRes = await s.api(`${base()}/outputs?format=tar`);
    assert.equal(tarRes.status, 200);
    assert.equal(tarRes.headers.get('content-type'), 'application/x-tar');
    const tarBytes = Buffer.from(await tarRes.arrayBuffer());
    assert.equal(tarBytes.length % 512, 0);
    assert.ok(tarBytes.includes('result\n'));
    assert.ok(!tarBytes.includes('root:x:0:0'), 'the tar holds /etc/passwd content');
    assert.equal((await s.api(`${base()}/outputs?format=zip`)).status, 400);
  });

  test('the new routes are in /openapi.json', async () => {
    const doc = await json(await fetch(`${s.url}/openapi.json`));
    for (const [path, m] of [['/v1/sandboxes/{id}/files/stat', 'get'], ['/v1/sandboxes/{id}/files/mkdir', 'post'],
      ['/v1/sandboxes/{id}/files/rename', 'post'], ['/v1/sandboxes/{id}/files/watch', 'get'], ['/v1/sandboxes/{id}/outputs', 'get']] as const) {
      assert.ok(doc.paths?.[path]?.[m], `${m} ${path} missing`);
    }
  });
});

describe('@airlock/sdk files', () => {
  let s: TestServer;
  before(async () => { s = await startTestServer(); });
  after(async () => { await s?.close(); });

  test('streamed write and read, makeDir, rename, stat, exists, watch, outputs', async () => {
    const sbx = await Sandbox.create({ url: s.url, apiKey: s.key, template: TEMPLATE, timeoutMs: 120_000, outputPath: '/work/results' });
    try {
      const parts = Array.from({ length: 20 }, () => randomBytes(200_000));
      const whole = Buffer.concat(parts);
      const st = await sbx.files.write('/work/s/data.bin', Readable.from(parts));
      assert.equal(st.size, whole.length);
      const stream = await sbx.files.read('/work/s/data.bin', { format: 'stream' });
      const got: Buffer[] = [];
      for await (const c of stream as unknown as AsyncIterable<Uint8Array>) got.push(Buffer.from(c));
      assert.ok(Buffer.concat(got).equals(whole));
      const web = new ReadableStream<Uint8Array>({ start(c) { c.enqueue(new TextEncoder().encode('web')); c.close(); } });
      await sbx.files.write('/work/s/web.txt', web);
      assert.equal(await sbx.files.read('/work/s/web.txt'), 'web');

      await sbx.files.makeDir('/work/s/x/y');
      await sbx.files.rename('/work/s/web.txt', '/work/s/x/y/web.txt');
      assert.equal((await sbx.files.stat('/work/s/x/y/web.txt')).size, 3);
      assert.equal(await sbx.files.exists('/work/s/web.txt'), false);
      assert.equal(await sbx.files.exists('/work/s/x/y/web.txt'), true);

      const events: FileWatchEvent[] = [];
      const ends: string[] = [];
      const stop = await sbx.files.watch('/work/s', (e) => events.push(e), { recursive: true, onEnd: (r) => ends.push(r) });
      await sbx.files.write('/work/s/x/y/new.txt', 'new');
      const t0 = Date.now();
      while (!events.some((e) => e.type === 'created' && e.path === '/work/s/x/y/new.txt') && Date.now() - t0 < 5000) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(events.some((e) => e.path === '/work/s/x/y/new.txt'), JSON.stringify(events));
      stop();

      await sbx.commands.run('mkdir -p /work/results && echo 42 > /work/results/answer');
      const listing = await sbx.files.outputs();
      assert.deepEqual(listing.entries.map((e) => [e.path, e.size]), [['answer', 3]]);
      const tarStream = await sbx.files.outputs({ format: 'tar' });
      const tarBytes = Buffer.from(await new Response(tarStream).arrayBuffer());
      assert.ok(tarBytes.includes('42\n'));
    } finally {
      await sbx.kill();
    }
  });
});
