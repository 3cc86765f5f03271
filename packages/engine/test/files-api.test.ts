/**
 * The engine's files API on real sandboxes: streamed reads and writes, mkdir, rename, watch,
 * and outputs (tar and list), plus the safe extraction the CLI uses for outputs.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import tar from 'tar-stream';
import type { Engine } from '../src/engine.js';
import { AirlockError } from '../src/errors.js';
import { extractTarSafely, UnsafeArchiveError } from '../src/files/tar-extract.js';
import type { FileWatchEvent } from '../src/files/types.js';
import { closeAndClean, openTestEngine } from './support.js';
import { sleep, waitFor } from './agent-harness.js';

const admin = { tenant: null };
let engine: Engine;
let dataDir: string;
let scratch: string;
const created: string[] = [];

async function sandbox(input: Parameters<Engine['createSandbox']>[1] = {}) {
  const s = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 300, ...input });
  created.push(s.id);
  return s;
}

async function sh(id: string, script: string) {
  const r = await engine.exec(admin, id, { cmd: ['/bin/sh', '-c', script] });
  assert.equal(r.exitCode, 0, `${script}: ${r.stderr}`);
  return r.stdout;
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** Every entry of a tar stream with its content. */
interface TarItem { type: string; linkname: string; mode: number; data: Buffer }

async function readTar(stream: AsyncIterable<Uint8Array>): Promise<Map<string, TarItem>> {
  const ex = tar.extract();
  const feeding = pipeline(Readable.from(stream, { objectMode: false }), ex as unknown as NodeJS.WritableStream);
  const out = new Map<string, TarItem>();
  for await (const entry of ex) {
    const data = await collect(entry as unknown as AsyncIterable<Uint8Array>);
    out.set(entry.header.name, { type: String(entry.header.type), linkname: entry.header.linkname, mode: entry.header.mode, data });
  }
  await feeding;
  return out;
}

type TarHeader = Parameters<ReturnType<typeof tar.pack>['entry']>[0];

const status = (code: number) => (e: unknown) => e instanceof AirlockError && e.status === code;

before(async () => {
  ({ engine, dataDir } = await openTestEngine('files-api'));
  scratch = mkdtempSync(join(tmpdir(), 'airlock-files-api-'));
});

after(async () => {
  rmSync(scratch, { recursive: true, force: true });
  await closeAndClean(engine, dataDir, created);
});

describe('streamed reads and writes, mkdir, rename', () => {
  test('a stream goes in and comes out intact; errors come before any byte', async () => {
    const s = await sandbox();
    const parts = Array.from({ length: 40 }, () => randomBytes(100_000 + Math.floor(Math.random() * 1000)));
    async function* gen() { for (const p of parts) yield p; }
    const st = await engine.writeFile(admin, s.id, '/work/in/stream.bin', gen(), { mode: 0o600 });
    const whole = Buffer.concat(parts);
    assert.deepEqual([st.type, st.size, st.mode], ['file', whole.length, 0o600]);
    assert.ok((await collect(await engine.readFileStream(admin, s.id, '/work/in/stream.bin'))).equals(whole));
    assert.equal(await sh(s.id, 'md5sum /work/in/stream.bin | cut -d" " -f1'), `${createHash('md5').update(whole).digest('hex')}\n`);

    // Leaving a download early cancels it; the sandbox keeps serving.
    for await (const _ of await engine.readFileStream(admin, s.id, '/work/in/stream.bin')) break;
    assert.equal((await collect(await engine.readFileStream(admin, s.id, '/work/in/stream.bin'))).length, whole.length);

    await sh(s.id, 'ln -s /etc/passwd /work/link && : > /work/empty');
    await assert.rejects(engine.readFileStream(admin, s.id, '/work/missing'), status(404));
    await assert.rejects(engine.readFileStream(admin, s.id, '/work/link'), status(400));
    await assert.rejects(engine.readFileStream(admin, s.id, '/work/in'), status(400));
    assert.equal((await collect(await engine.readFileStream(admin, s.id, '/work/empty'))).length, 0);

    // A source that fails mid-way leaves no file and no temp file behind.
    async function* broken() { yield Buffer.from('partial'); throw new Error('source broke'); }
    await assert.rejects(engine.writeFile(admin, s.id, '/work/in/broken', broken()), /source broke/);
    assert.equal(await sh(s.id, 'ls -a /work/in'), '.\n..\nstream.bin\n');
    const events = engine.listEvents(admin, { sandbox: s.id }).map((e) => e.type);
    assert.ok(events.includes('file.written') && events.includes('file.read'));
  });

  test('mkdir and rename', async () => {
    const s = await sandbox();
    const d = await engine.makeDir(admin, s.id, '/work/a/b/c', { parents: true, mode: 0o750 });
    assert.deepEqual([d.type, d.mode], ['dir', 0o750]);
    await engine.makeDir(admin, s.id, '/work/a/b/c', { parents: true });
    await assert.rejects(engine.makeDir(admin, s.id, '/work/a/b/c'), status(409));
    await assert.rejects(engine.makeDir(admin, s.id, '/work/x/y'), status(404));

    await engine.writeFile(admin, s.id, '/work/a/f', Buffer.from('one'));
    await engine.writeFile(admin, s.id, '/work/a/g', Buffer.from('two'));
    const moved = await engine.renamePath(admin, s.id, '/work/a/f', '/work/a/b/c/f');
    assert.equal(moved.size, 3);
    await assert.rejects(engine.renamePath(admin, s.id, '/work/a/g', '/work/a/b/c/f'), status(409));
    await engine.renamePath(admin, s.id, '/work/a/g', '/work/a/b/c/f', { overwrite: true });
    assert.equal((await engine.readFile(admin, s.id, '/work/a/b/c/f')).toString(), 'two');
    await assert.rejects(engine.renamePath(admin, s.id, '/work/nope', '/work/x'), status(404));
    await assert.rejects(engine.renamePath(admin, s.id, '/', '/work/x'), status(400));
    await assert.rejects(engine.renamePath(admin, s.id, '/work/a', '/work/..'), status(400));
    await assert.rejects(engine.renamePath(admin, s.id, '/work/a', '/work/a/b/inside'), status(400));
    await engine.renamePath(admin, s.id, '/work/a', '/work/z');
    assert.equal(await sh(s.id, 'cat /work/z/b/c/f'), 'two');
  });
});

describe('watch', () => {
  test('nested create, modify, delete and move arrive; stop, removal and the sandbox\'s end end it', async () => {
    const s = await sandbox();
    await sh(s.id, 'mkdir -p /work/w/pre');
    const events: FileWatchEvent[] = [];
    const ctl = new AbortController();
    const w = await engine.watchFiles(admin, s.id, '/work/w', { recursive: true }, (e) => events.push(e), ctl.signal);
    const has = (type: string, path: string) => events.some((e) => e.type === type && e.path === path);
    // Directories made faster than the agent can watch them: what is in them by then is reported
    // as created by the scan of each new directory (a write before its watch exists is not seen
    // as a modification: inotify has no history). So the writes wait for the watch on b.
    await sh(s.id, 'mkdir -p /work/w/pre/a/b');
    await waitFor('created deep dir', () => has('created', '/work/w/pre/a/b'));
    await sh(s.id, 'echo 1 > /work/w/pre/a/b/f && echo 2 >> /work/w/pre/a/b/f');
    await waitFor('created deep', () => has('created', '/work/w/pre/a/b/f'));
    await waitFor('modified deep', () => has('modified', '/work/w/pre/a/b/f'));
    // And a file created together with its directories still arrives, from the scan.
    await sh(s.id, 'mkdir -p /work/w/pre/x/y && echo 3 > /work/w/pre/x/y/h');
    await waitFor('created with its directories', () => has('created', '/work/w/pre/x/y/h'));
    await sh(s.id, 'rm -r /work/w/pre/x');
    await waitFor('deleted with its directories', () => has('deleted', '/work/w/pre/x'));
    await sh(s.id, 'mv /work/w/pre/a/b/f /work/w/g && rm /work/w/g && rmdir /work/w/pre/a/b');
    await waitFor('moved', () => events.some((e) => e.type === 'moved' && e.path === '/work/w/g' && e.from === '/work/w/pre/a/b/f'));
    await waitFor('deleted', () => has('deleted', '/work/w/g') && has('deleted', '/work/w/pre/a/b'));
    assert.ok(events.find((e) => e.path === '/work/w/pre/a')?.isDir);
    ctl.abort();
    assert.equal(await w.done, 'stopped');

    const removed = await engine.watchFiles(admin, s.id, '/work/w/pre', {}, () => {});
    await sh(s.id, 'rm -rf /work/w/pre');
    assert.equal(await removed.done, 'removed');

    const ended = await engine.watchFiles(admin, s.id, '/work', { recursive: true }, () => {});
    await engine.killSandbox(admin, s.id);
    assert.equal(await ended.done, 'sandbox_ended');
    await assert.rejects(engine.watchFiles(admin, s.id, '/work', {}, () => {}), status(409));
  });

  test('a missing path is 404, a file or a link 400', async () => {
    const s = await sandbox();
    await sh(s.id, 'mkdir -p /work && : > /work/f && ln -s /work /work/l');
    await assert.rejects(engine.watchFiles(admin, s.id, '/work/nope', {}, () => {}), status(404));
    await assert.rejects(engine.watchFiles(admin, s.id, '/work/f', {}, () => {}), status(400));
    await assert.rejects(engine.watchFiles(admin, s.id, '/work/l', {}, () => {}), status(400));
    const many = await Promise.all(Array.from({ length: 16 }, () => engine.watchFiles(admin, s.id, '/work', {}, () => {})));
    await assert.rejects(engine.watchFiles(admin, s.id, '/work', {}, () => {}), status(429));
    for (const w of many) w.stop();
    await sleep(50);
    (await engine.watchFiles(admin, s.id, '/work', {}, () => {})).stop();
  });
});

describe('outputs', () => {
  test('tar and list: contents, modes, sha256; a link to /etc is recorded, not followed', async () => {
    const s = await sandbox();
    const big = randomBytes(2 * 1024 * 1024 + 3);
    await engine.writeFile(admin, s.id, '/work/out/data/big.bin', big);
    await sh(s.id, [
      'mkdir -p /work/out/data/deep/er', 'echo hello > /work/out/hello.txt', 'chmod 0751 /work/out/hello.txt',
      ': > /work/out/data/deep/er/empty', 'ln -s /etc /work/out/etc', 'ln -s ../../../etc/passwd /work/out/data/up',
      'mkfifo /work/out/fifo', 'echo never > /work/secret',
    ].join(' && '));

    const listing = await engine.outputsList(admin, s.id);
    assert.equal(listing.root, '/work/out');
    const byPath = new Map(listing.entries.map((e) => [e.path, e]));
    assert.deepEqual([...byPath.keys()].sort(), ['data', 'data/big.bin', 'data/deep', 'data/deep/er', 'data/deep/er/empty', 'data/up', 'etc', 'hello.txt']);
    assert.equal(byPath.get('data/big.bin')!.sha256, createHash('sha256').update(big).digest('hex'));
    assert.equal(byPath.get('hello.txt')!.sha256, createHash('sha256').update('hello\n').digest('hex'));
    assert.equal(byPath.get('hello.txt')!.mode, 0o751);
    assert.deepEqual([byPath.get('etc')!.type, byPath.get('etc')!.linkTarget, byPath.get('etc')!.sha256], ['symlink', '/etc', undefined]);
    assert.equal(byPath.get('data/up')!.linkTarget, '../../../etc/passwd');

    const files = await readTar(await engine.outputsTar(admin, s.id));
    assert.ok(files.get('data/big.bin')!.data.equals(big));
    assert.equal(files.get('hello.txt')!.data.toString(), 'hello\n');
    assert.equal(files.get('hello.txt')!.mode, 0o751);
    assert.deepEqual([files.get('etc')!.type, files.get('etc')!.linkname], ['symlink', '/etc']);
    assert.equal(files.get('data/deep/er/')?.type ?? files.get('data/deep/er')?.type, 'directory');
    assert.ok(![...files.keys()].some((k) => k.startsWith('etc/') || k.includes('passwd') || k === 'fifo'), [...files.keys()].join(' '));

    // The CLI's extraction of the same stream: files, modes and the link (as a link).
    const dest = join(scratch, 'extracted');
    const summary = await extractTarSafely(await engine.outputsTar(admin, s.id), dest);
    assert.deepEqual(summary, { files: 3, dirs: 3, symlinks: 2, bytes: big.length + 6 });
    assert.ok(readFileSync(join(dest, 'data/big.bin')).equals(big));
    assert.equal(statSync(join(dest, 'hello.txt')).mode & 0o777, 0o751);
    assert.ok(lstatSync(join(dest, 'etc')).isSymbolicLink());
    assert.equal(readlinkSync(join(dest, 'etc')), '/etc');
    const kinds = engine.listEvents(admin, { sandbox: s.id, type: 'outputs.read' }).map((e) => e.data.format);
    assert.deepEqual(kinds.sort(), ['list', 'tar', 'tar']);
  });

  test('a custom outputPath; a missing one is empty; a link there is refused', async () => {
    const s = await sandbox({ outputPath: '/results' });
    assert.equal(s.outputPath, '/results');
    assert.deepEqual((await engine.outputsList(admin, s.id)).entries, []);
    assert.equal((await readTar(await engine.outputsTar(admin, s.id))).size, 0);
    await sh(s.id, 'mkdir -p /results/r && echo 1 > /results/r/one');
    assert.deepEqual((await engine.outputsList(admin, s.id)).entries.map((e) => e.path), ['r', 'r/one']);
    await sh(s.id, 'rm -rf /results && ln -s /etc /results');
    await assert.rejects(engine.outputsList(admin, s.id), status(400));
    await assert.rejects(engine.outputsTar(admin, s.id), status(400));
    await assert.rejects(engine.createSandbox(admin, { template: 'tiny', outputPath: 'relative' }), status(400));
    await engine.killSandbox(admin, s.id);
    await assert.rejects(engine.outputsList(admin, s.id), status(409));
  });

  test('a client that stops reading a tar midway cancels the walk', async () => {
    const s = await sandbox();
    await sh(s.id, 'mkdir -p /work/out && for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=/work/out/f$i bs=1M count=4 2>/dev/null; done');
    const stream = await engine.outputsTar(admin, s.id);
    for await (const _ of stream) break;
    assert.ok(stream.destroyed);
    assert.equal((await engine.outputsList(admin, s.id)).entries.length, 8);
  });
});

describe('safe extraction of a hostile tar', () => {
  async function hostileTar(entries: Array<{ header: TarHeader; body?: string }>): Promise<Buffer> {
    const pack = tar.pack();
    for (const e of entries) pack.entry(e.header, e.body ?? '');
    pack.finalize();
    return collect(pack as unknown as AsyncIterable<Uint8Array>);
  }

  const cases: Array<[string, Array<{ header: TarHeader; body?: string }>, RegExp]> = [
    ['..', [{ header: { name: '../escape', type: 'file' }, body: 'x' }], /\.\./],
    ['.. in the middle', [{ header: { name: 'a/../../escape', type: 'file' }, body: 'x' }], /\.\./],
    ['an absolute path', [{ header: { name: '/tmp/escape', type: 'file' }, body: 'x' }], /absolute/],
    ['a file through a link it made', [
      { header: { name: 'l', type: 'symlink', linkname: '/tmp' } },
      { header: { name: 'l/escape', type: 'file' }, body: 'x' },
    ], /link/],
    ['a directory through a link', [
      { header: { name: 'l', type: 'symlink', linkname: '..' } },
      { header: { name: 'l/d', type: 'directory' } },
    ], /link/],
    ['a hard link', [{ header: { name: 'h', type: 'link', linkname: '/etc/passwd' } }], /type link/],
    ['a device', [{ header: { name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 } }], /character-device/],
  ];
  for (const [what, entries, message] of cases) {
    test(`refuses ${what}`, async () => {
      const dest = mkdtempSync(join(scratch, 'x-'));
      const buf = await hostileTar(entries);
      await assert.rejects(extractTarSafely(Readable.from([buf]), join(dest, 'out')), (e: unknown) => e instanceof UnsafeArchiveError && message.test(e.message));
      assert.ok(!existsSync(join(scratch, 'escape')) && !existsSync('/tmp/escape') && !existsSync(join(dest, 'escape')));
    });
  }

  test('a file replacing a planted link replaces the link, never its target', async () => {
    const dest = mkdtempSync(join(scratch, 'y-'));
    const victim = join(scratch, 'victim');
    const buf = await hostileTar([
      { header: { name: 'f', type: 'symlink', linkname: victim } },
      { header: { name: 'f', type: 'file', mode: 0o4755 }, body: 'new' },
    ]);
    await extractTarSafely(Readable.from([buf]), dest);
    assert.ok(!existsSync(victim));
    assert.equal(readFileSync(join(dest, 'f'), 'utf8'), 'new');
    assert.equal(statSync(join(dest, 'f')).mode & 0o7777, 0o755, 'setuid is dropped');
  });
});
