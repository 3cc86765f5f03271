/** The REST API over real sandboxes: the real engine, runc, the tiny busybox template. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { json, ndjsonLines, startTestServer, TEMPLATE, waitFor, type TestServer } from './helpers.js';

const JSON_HEADERS = { 'content-type': 'application/json' };

describe('airlockd over a running sandbox', () => {
  let s: TestServer;
  let id: string;

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    s.api(path, { method: 'POST', headers: { ...JSON_HEADERS, ...headers }, body: JSON.stringify(body) });
  const exec = (cmd: string[], extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
    post(`/v1/sandboxes/${id}/exec`, { cmd, ...extra }, headers);

  before(async () => {
    s = await startTestServer();
    const res = await post('/v1/sandboxes', { template: TEMPLATE, timeoutSeconds: 120, metadata: { suite: 'server' }, resources: { memoryMiB: 128 } });
    const body = await json(res);
    assert.equal(res.status, 201, JSON.stringify(body));
    id = body.id;
  });
  after(async () => { await s?.close(); });

  test('create answered a running SandboxInfo; get and list agree', async () => {
    const info = await json(await s.api(`/v1/sandboxes/${id}`));
    assert.equal(info.state, 'running');
    assert.equal(info.template, TEMPLATE);
    assert.equal(info.resources.memoryMiB, 128);
    assert.deepEqual(info.metadata, { suite: 'server' });
    const listed = await json(await s.api('/v1/sandboxes?state=running&metadata.suite=server'));
    assert.deepEqual(listed.sandboxes.map((x: { id: string }) => x.id), [id]);
    const none = await json(await s.api('/v1/sandboxes?metadata.suite=other'));
    assert.deepEqual(none.sandboxes, []);
  });

  test('exec answers JSON with output, exit code and reason', async () => {
    const res = await exec(['/bin/sh', '-c', 'echo out; echo err >&2; exit 3']);
    const r = await json(res);
    assert.equal(res.status, 200, JSON.stringify(r));
    assert.deepEqual([r.exitCode, r.stdout, r.stderr, r.reason], [3, 'out\n', 'err\n', 'exited']);
    assert.equal(typeof r.durationMs, 'number');
  });

  test('exec passes stdin, env and cwd', async () => {
    const r = await json(await exec(['/bin/sh', '-c', 'cat; echo "$GREETING"; pwd'], { stdin: 'from-stdin\n', env: { GREETING: 'hello' }, cwd: '/tmp' }));
    assert.equal(r.stdout, 'from-stdin\nhello\n/tmp\n');
  });

  test('exec with Accept: application/x-ndjson streams lines as they are produced', async () => {
    const started = Date.now();
    const res = await exec(['/bin/sh', '-c', 'echo one; sleep 1; echo two >&2; echo €'], {}, { accept: 'application/x-ndjson' });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /application\/x-ndjson/);
    assert.ok(res.headers.get('x-request-id'), 'streams carry the request id too');
    const reader = res.body!.getReader();
    const first = await reader.read();
    const firstAt = Date.now() - started;
    assert.ok(firstAt < 900, `first line came after ${firstAt} ms: not streamed`);
    let text = new TextDecoder().decode(first.value);
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const stdout = lines.filter((l) => l.type === 'stdout').map((l) => l.data).join('');
    const stderr = lines.filter((l) => l.type === 'stderr').map((l) => l.data).join('');
    assert.equal(stdout, 'one\n€\n');
    assert.equal(stderr, 'two\n');
    const last = lines.at(-1);
    assert.deepEqual([last.type, last.exitCode, last.reason], ['exit', 0, 'exited']);
  });

  test('NDJSON keeps multi-byte characters whole across chunks', async () => {
    // 4-byte emoji printed one byte at a time by printf's octal escapes.
    const res = await exec(['/bin/sh', '-c', "for b in '\\360' '\\237' '\\230' '\\200'; do printf \"$b\"; sleep 0.05; done"], {}, { accept: 'application/x-ndjson' });
    const lines = await ndjsonLines(res);
    const out = lines.filter((l) => l.type === 'stdout').map((l) => l.data).join('');
    assert.equal(out, '😀');
    assert.ok(!out.includes('\uFFFD'));
  });

  test('closing the connection kills the command', async () => {
    const res = await exec(['/bin/sh', '-c', 'echo started; exec sleep 60'], {}, { accept: 'application/x-ndjson' });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    await waitFor('sleep to be killed', async () => {
      const ps = await json(await s.api(`/v1/sandboxes/${id}/processes`));
      return !ps.processes.some((p: { cmdline: string[] }) => p.cmdline.includes('60'));
    }, 5000);
  });

  test('background exec, process list, process kill', async () => {
    const started = await exec(['/bin/sleep', '300'], { background: true });
    const bg = await json(started);
    assert.equal(started.status, 202, JSON.stringify(bg));
    assert.ok(bg.pid > 1);
    assert.equal(typeof bg.execId, 'string');
    const ps = await json(await s.api(`/v1/sandboxes/${id}/processes`));
    const mine = ps.processes.find((p: { pid: number }) => p.pid === bg.pid);
    assert.ok(mine, JSON.stringify(ps));
    assert.deepEqual(mine.cmdline, ['/bin/sleep', '300']);
    const killed = await s.api(`/v1/sandboxes/${id}/processes/${bg.pid}?signal=SIGTERM`, { method: 'DELETE' });
    assert.equal(killed.status, 204);
    await waitFor('the background process to go', async () => {
      const now = await json(await s.api(`/v1/sandboxes/${id}/processes`));
      return !now.processes.some((p: { pid: number }) => p.pid === bg.pid);
    });
    const badSignal = await s.api(`/v1/sandboxes/${id}/processes/${bg.pid}?signal=SIGNOPE`, { method: 'DELETE' });
    assert.equal(badSignal.status, 400);
  });

  test('files: write, read, list, delete round trip', async () => {
    const bytes = new Uint8Array(70_000).map((_, i) => (i * 7) % 256);
    const put = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub/data.bin&mode=0640`, {
      method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: bytes,
    });
    const stat = await json(put);
    assert.equal(put.status, 200, JSON.stringify(stat));
    assert.deepEqual([stat.path, stat.type, stat.size, stat.mode & 0o777], ['/work/sub/data.bin', 'file', 70_000, 0o640]);

    const got = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub/data.bin`);
    assert.equal(got.status, 200);
    assert.equal(got.headers.get('content-type'), 'application/octet-stream');
    assert.deepEqual(new Uint8Array(await got.arrayBuffer()), bytes);

    // curl's default form content type is still raw bytes.
    const form = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub/a.txt`, {
      method: 'PUT', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=1&b=2',
    });
    assert.equal(form.status, 200);
    assert.equal(await (await s.api(`/v1/sandboxes/${id}/files?path=/work/sub/a.txt`)).text(), 'a=1&b=2');

    const dir = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub`);
    assert.match(dir.headers.get('content-type') ?? '', /application\/json/);
    const listing = await json(dir);
    assert.deepEqual(listing.entries.map((e: { name: string }) => e.name).sort(), ['a.txt', 'data.bin']);

    const refused = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub`, { method: 'DELETE' });
    assert.equal(refused.status, 409);
    const del = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub&recursive=1`, { method: 'DELETE' });
    assert.equal(del.status, 204);
    const gone = await s.api(`/v1/sandboxes/${id}/files?path=/work/sub`);
    assert.equal(gone.status, 404);
    assert.equal((await json(gone)).error.code, 'not_found');
  });

  test('events: JSON list and a resumable SSE stream', async () => {
    const all = await json(await s.api(`/v1/events?sandbox=${id}`));
    const types = all.events.map((e: { type: string }) => e.type);
    assert.ok(types.includes('sandbox.created') && types.includes('sandbox.started'), types.join());
    const firstSeq = all.events[0].seq;

    const ac = new AbortController();
    const res = await s.api(`/v1/events?sandbox=${id}&follow=1`, { headers: { 'last-event-id': String(firstSeq) }, signal: ac.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const reader = res.body!.getReader();
    let text = '';
    const seen = async (pred: (t: string) => boolean) => {
      while (!pred(text)) {
        const r = await reader.read();
        if (r.done) throw new Error(`stream ended: ${text}`);
        text += new TextDecoder().decode(r.value);
      }
    };
    // Replay: stored events after firstSeq, not firstSeq itself.
    await seen((t) => t.includes('event: sandbox.started'));
    assert.ok(!text.includes(`id: ${firstSeq}\n`));
    // Live: an exec appears as it happens.
    await exec(['/bin/true']);
    await seen((t) => t.includes('event: exec.exited'));
    const data = text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));
    const seqs = data.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in order');
    assert.equal(new Set(seqs).size, seqs.length, 'no duplicates');
    ac.abort();
    await reader.cancel().catch(() => {});
  });

  test('timeout moves expiresAt', async () => {
    const before = Date.now();
    const r = await json(await post(`/v1/sandboxes/${id}/timeout`, { timeoutSeconds: 600 }));
    const expires = Date.parse(r.expiresAt);
    assert.ok(expires >= before + 599_000 && expires <= Date.now() + 601_000, r.expiresAt);
    const bad = await post(`/v1/sandboxes/${id}/timeout`, { timeoutSeconds: 0 });
    assert.equal((await json(bad)).error.field, 'timeoutSeconds');
  });

  test('kill: 200 killed, then exec, files and a second kill answer 409', async () => {
    const killed = await json(await s.api(`/v1/sandboxes/${id}`, { method: 'DELETE' }));
    assert.equal(killed.state, 'killed');
    const execRes = await exec(['/bin/true']);
    assert.equal(execRes.status, 409);
    assert.equal((await json(execRes)).error.code, 'conflict');
    const streamRes = await exec(['/bin/true'], {}, { accept: 'application/x-ndjson' });
    assert.equal(streamRes.status, 409);
    assert.equal((await s.api(`/v1/sandboxes/${id}/files?path=/work`)).status, 409);
    assert.equal((await s.api(`/v1/sandboxes/${id}`, { method: 'DELETE' })).status, 409);
  });
});
