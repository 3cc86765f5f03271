/**
 * The agent's newer file operations (FRENAME, FWALK, FWATCH) against the real AgentLink, with
 * the agent as a plain child process working on a fresh tmp dir (no container: paths are the
 * host's here, which is what lets these tests look at the results directly).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AgentError, AgentLink, type AgentFileEvent, type AgentWalkEntry } from '../src/agent/agent-link.js';
import { ProtocolError, decodeFileEvent, decodeWalkEntry, isSafeRelativePath } from '../src/agent/protocol.js';
import {
  ensureAgentBuilt, makeTmpDir, memoryKb, removeTmpDir, sleep, startAgent, stopAgent, waitFor, type RunningAgent,
} from './agent-harness.js';

const ENOENT = 2, EEXIST = 17, ENOTDIR = 20, EBUSY = 16, ELOOP = 40;

async function rejectsWithErrno(p: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof AgentError, `expected AgentError, got ${String(e)}`);
    assert.equal(e.errno, errno, e.message);
    return true;
  });
}

/** Collects a walk: entries with their file contents. */
async function walkAll(link: AgentLink, path: string): Promise<Array<AgentWalkEntry & { data?: Buffer }>> {
  const out: Array<AgentWalkEntry & { data?: Buffer }> = [];
  let cur: (AgentWalkEntry & { data?: Buffer; parts?: Buffer[] }) | null = null;
  for await (const item of link.walk(path)) {
    if (Buffer.isBuffer(item)) {
      cur!.parts!.push(Buffer.from(item));
      continue;
    }
    if (cur?.parts) cur.data = Buffer.concat(cur.parts);
    cur = { ...item, ...(item.type === 'file' ? { parts: [] as Buffer[] } : {}) };
    out.push(cur);
  }
  if (cur?.parts) cur.data = Buffer.concat(cur.parts);
  for (const e of out) delete (e as { parts?: unknown }).parts;
  return out;
}

describe('protocol decoders for walk entries and events', () => {
  test('relative paths must stay below their directory', () => {
    for (const ok of ['a', 'a/b', 'a.b/.c', '...']) assert.ok(isSafeRelativePath(ok), ok);
    for (const bad of ['', '/a', 'a/../b', '..', '.', 'a//b', 'a/', './a']) assert.ok(!isSafeRelativePath(bad), bad);
  });

  test('a walk entry with .. or a misplaced link target is a protocol error', () => {
    const entry = (type: string, path: string, target: string) => {
      const st = Buffer.alloc(21);
      st[0] = type.charCodeAt(0);
      return Buffer.concat([st, Buffer.from(`${path}\0${target}\0`)]);
    };
    assert.equal(decodeWalkEntry(entry('l', 'x', '/etc')).linkTarget, '/etc');
    assert.throws(() => decodeWalkEntry(entry('f', '../x', '')), ProtocolError);
    assert.throws(() => decodeWalkEntry(entry('f', '/x', '')), ProtocolError);
    assert.throws(() => decodeWalkEntry(entry('f', 'x', '/etc')), ProtocolError);
    assert.throws(() => decodeWalkEntry(entry('l', 'x', '')), ProtocolError);
    assert.throws(() => decodeWalkEntry(entry('o', 'x', '')), ProtocolError);
  });

  test('events carry normalized absolute paths', () => {
    const ev = (kind: string, path: string, from = '') => Buffer.concat([Buffer.from([kind.charCodeAt(0), 0]), Buffer.from(`${path}\0${from}\0`)]);
    assert.deepEqual(decodeFileEvent(ev('v', '/a/b', '/a/c')), { kind: 'moved', path: '/a/b', isDir: false, from: '/a/c' });
    assert.throws(() => decodeFileEvent(ev('c', '/a/../b')), ProtocolError);
    assert.throws(() => decodeFileEvent(ev('c', 'a')), ProtocolError);
    assert.throws(() => decodeFileEvent(ev('v', '/a')), ProtocolError);
    assert.throws(() => decodeFileEvent(ev('c', '/a', '/b')), ProtocolError);
    assert.throws(() => decodeFileEvent(ev('z', '/a')), ProtocolError);
  });
});

describe('rename, walk and watch through the agent', () => {
  let dir: string;
  let link: AgentLink;
  let agent: RunningAgent;
  const TOKEN = randomBytes(24).toString('hex');

  before(async () => {
    ensureAgentBuilt();
    dir = makeTmpDir();
    link = await AgentLink.listen(join(dir, 'host.sock'), TOKEN);
    agent = startAgent(join(dir, 'host.sock'), TOKEN);
    await link.waitConnected(5000);
  });

  after(async () => {
    await link?.close();
    if (agent) await stopAgent(agent);
    if (dir) removeTmpDir(dir);
  });

  test('rename: no-replace by default, overwrite on request, links moved not followed', async () => {
    const d = join(dir, 'ren');
    mkdirSync(join(d, 'sub'), { recursive: true });
    writeFileSync(join(d, 'a'), 'A');
    writeFileSync(join(d, 'b'), 'B');
    const st = await link.rename(join(d, 'a'), join(d, 'sub/a2'));
    assert.equal(st.type, 'file');
    assert.equal(readFileSync(join(d, 'sub/a2'), 'utf8'), 'A');
    assert.ok(!existsSync(join(d, 'a')));
    await rejectsWithErrno(link.rename(join(d, 'b'), join(d, 'sub/a2')), EEXIST);
    assert.equal(readFileSync(join(d, 'sub/a2'), 'utf8'), 'A');
    await link.rename(join(d, 'b'), join(d, 'sub/a2'), { overwrite: true });
    assert.equal(readFileSync(join(d, 'sub/a2'), 'utf8'), 'B');
    await rejectsWithErrno(link.rename(join(d, 'missing'), join(d, 'x')), ENOENT);
    await rejectsWithErrno(link.rename('/', join(d, 'x')), EBUSY);
    await rejectsWithErrno(link.rename(join(d, 'sub/a2'), '/'), EBUSY);

    // A link as source is moved itself; as target (overwrite) it is replaced, its target untouched.
    const victim = join(d, 'victim');
    writeFileSync(victim, 'keep');
    symlinkSync(victim, join(d, 'ln'));
    await link.rename(join(d, 'ln'), join(d, 'ln2'));
    assert.equal(readlinkSync(join(d, 'ln2')), victim);
    writeFileSync(join(d, 'new'), 'new');
    await link.rename(join(d, 'new'), join(d, 'ln2'), { overwrite: true });
    assert.ok(lstatSync(join(d, 'ln2')).isFile());
    assert.equal(readFileSync(victim, 'utf8'), 'keep');
    symlinkSync(victim, join(d, 'ln3'));
    await rejectsWithErrno(link.rename(join(d, 'ln2'), join(d, 'ln3')), EEXIST);
    assert.equal(readFileSync(victim, 'utf8'), 'keep');
  });

  test('walk: entries depth-first with contents; links recorded, never followed', async () => {
    const root = join(dir, 'out');
    mkdirSync(join(root, 'a/b'), { recursive: true });
    writeFileSync(join(root, 'a/b/c.txt'), 'deep');
    writeFileSync(join(root, 'empty'), '');
    const big = randomBytes(3 * 1024 * 1024 + 17);
    writeFileSync(join(root, 'big.bin'), big);
    symlinkSync('/etc', join(root, 'etc'));
    symlinkSync('../../outside', join(root, 'a/up'));
    writeFileSync(join(dir, 'outside'), 'never read');
    const entries = await walkAll(link, root);
    const byPath = new Map(entries.map((e) => [e.path, e]));
    assert.deepEqual([...byPath.keys()].sort(), ['a', 'a/b', 'a/b/c.txt', 'a/up', 'big.bin', 'empty', 'etc']);
    assert.equal(byPath.get('a/b/c.txt')!.data!.toString(), 'deep');
    assert.ok(byPath.get('big.bin')!.data!.equals(big));
    assert.equal(byPath.get('empty')!.data!.length, 0);
    assert.equal(byPath.get('etc')!.type, 'symlink');
    assert.equal(byPath.get('etc')!.linkTarget, '/etc');
    assert.equal(byPath.get('a/up')!.linkTarget, '../../outside');
    // Parents come before their children.
    const order = entries.map((e) => e.path);
    assert.ok(order.indexOf('a') < order.indexOf('a/b') && order.indexOf('a/b') < order.indexOf('a/b/c.txt'));

    await rejectsWithErrno(walkAll(link, join(root, 'etc')), ELOOP);
    await rejectsWithErrno(walkAll(link, join(root, 'empty')), ENOTDIR);
    await rejectsWithErrno(walkAll(link, join(root, 'nope')), ENOENT);
  });

  test('walk: breaking out early cancels it and the link keeps working', async () => {
    const root = join(dir, 'many');
    mkdirSync(root);
    for (let i = 0; i < 200; i++) writeFileSync(join(root, `f${i}`), randomBytes(64 * 1024));
    let n = 0;
    for await (const item of link.walk(root)) {
      if (!Buffer.isBuffer(item) && ++n === 3) break;
    }
    await link.ping();
    assert.equal((await walkAll(link, root)).length, 200);
  });

  test('watch: created, modified, deleted and moved in nested directories, also new ones', async () => {
    const root = join(dir, 'w');
    mkdirSync(join(root, 'pre/deep'), { recursive: true });
    const events: AgentFileEvent[] = [];
    const w = link.watch(root, { recursive: true }, (e) => events.push(e));
    assert.equal(await w.ready, root);
    const has = (kind: string, path: string) => events.some((e) => e.kind === kind && e.path === path);

    writeFileSync(join(root, 'pre/deep/f'), 'x');
    await waitFor('created in a pre-existing nested dir', () => has('created', join(root, 'pre/deep/f')));
    await waitFor('modified', () => has('modified', join(root, 'pre/deep/f')));

    // A tree created at once: its parts appear before their parents' watches do.
    mkdirSync(join(root, 'n1/n2/n3'), { recursive: true });
    writeFileSync(join(root, 'n1/n2/n3/g'), 'y');
    await waitFor('created deep in a new tree', () => has('created', join(root, 'n1/n2/n3/g')));
    assert.ok(has('created', join(root, 'n1')) && events.find((e) => e.path === join(root, 'n1'))!.isDir);
    // The new directories are watched too.
    writeFileSync(join(root, 'n1/n2/n3/h'), 'z');
    await waitFor('created in a directory made after the watch began', () => has('created', join(root, 'n1/n2/n3/h')));

    renameSync(join(root, 'n1/n2/n3/h'), join(root, 'pre/h2'));
    await waitFor('moved', () => events.some((e) => e.kind === 'moved' && e.path === join(root, 'pre/h2') && e.from === join(root, 'n1/n2/n3/h')));
    // A directory moved inside the tree keeps being watched at its new path.
    renameSync(join(root, 'n1'), join(root, 'm1'));
    await waitFor('dir moved', () => has('moved', join(root, 'm1')));
    writeFileSync(join(root, 'm1/n2/after-move'), '1');
    await waitFor('created under the moved dir, with its new path', () => has('created', join(root, 'm1/n2/after-move')));

    rmSync(join(root, 'pre/deep/f'));
    await waitFor('deleted', () => has('deleted', join(root, 'pre/deep/f')));
    renameSync(join(root, 'pre/h2'), join(dir, 'gone-out'));
    await waitFor('moved out of the tree is deleted', () => has('deleted', join(root, 'pre/h2')));

    assert.ok(events.every((e) => e.path.startsWith(`${root}/`)), JSON.stringify(events));
    w.stop();
    await w.done;
    const count = events.length;
    writeFileSync(join(root, 'after-stop'), '1');
    await sleep(200);
    assert.equal(events.length, count, 'no events after stop');
    await link.ping();
  });

  test('watch: non-recursive sees only its own directory; coalesces a burst', async () => {
    const root = join(dir, 'flat');
    mkdirSync(join(root, 'sub'), { recursive: true });
    const events: AgentFileEvent[] = [];
    const w = link.watch(root, {}, (e) => events.push(e));
    await w.ready;
    writeFileSync(join(root, 'sub/hidden'), 'x');
    for (let i = 0; i < 500; i++) writeFileSync(join(root, 'hot'), String(i));
    await waitFor('hot file', () => events.some((e) => e.path === join(root, 'hot') && e.kind === 'modified'));
    await sleep(150);
    assert.ok(!events.some((e) => e.path.includes('hidden')), 'non-recursive watch saw a subdirectory');
    const mods = events.filter((e) => e.kind === 'modified' && e.path === join(root, 'hot')).length;
    assert.ok(mods < 100, `500 writes in one burst should coalesce, got ${mods} events`);
    w.stop();
    await w.done;
  });

  test('watch: an upload shows as its real name being created, never as the agent\'s temp file', async () => {
    const root = join(dir, 'uploads');
    mkdirSync(root);
    const events: AgentFileEvent[] = [];
    const w = link.watch(root, {}, (e) => events.push(e));
    await w.ready;
    await link.writeFile(join(root, 'up.bin'), randomBytes(300_000));
    await waitFor('created', () => events.some((e) => e.kind === 'created' && e.path === join(root, 'up.bin')));
    await link.writeFile(join(root, 'up.bin'), Buffer.from('again'));
    await waitFor('created again', () => events.filter((e) => e.path === join(root, 'up.bin')).length >= 2);
    await sleep(100);
    assert.ok(!events.some((e) => e.path.includes('.airlock-') || e.from?.includes('.airlock-')), JSON.stringify(events));
    w.stop();
    await w.done;
  });

  test('watch: removing the watched directory ends the watch', async () => {
    const root = join(dir, 'doomed');
    mkdirSync(root);
    const w = link.watch(root, { recursive: true }, () => {});
    await w.ready;
    rmSync(root, { recursive: true });
    await w.done;
  });

  test('watch: errors for missing paths, files and links', async () => {
    writeFileSync(join(dir, 'plain'), '');
    symlinkSync(dir, join(dir, 'dirlink'));
    await rejectsWithErrno(link.watch(join(dir, 'nope'), {}, () => {}).ready, ENOENT);
    await rejectsWithErrno(link.watch(join(dir, 'plain'), {}, () => {}).ready, ENOTDIR);
    await rejectsWithErrno(link.watch(join(dir, 'dirlink'), {}, () => {}).ready, ELOOP);
  });

  test('watch: a flood is delivered or reported as overflow, never grows the agent', async () => {
    const root = join(dir, 'flood');
    mkdirSync(root);
    const events: AgentFileEvent[] = [];
    const w = link.watch(root, { recursive: true }, (e) => events.push(e));
    await w.ready;
    const before = memoryKb(agent.pid).rss;
    // One process creating 20 000 files: ~40 000 events, as fast as the machine goes.
    const names = Array.from({ length: 20_000 }, (_, i) => `f${i}`);
    execFileSync('touch', names, { cwd: root });
    const created = new Set<string>();
    const complete = () => {
      for (const e of events) if (e.kind === 'created') created.add(e.path);
      return events.some((e) => e.kind === 'overflow') || created.size === names.length;
    };
    await waitFor('every event or an overflow', complete, 20_000);
    const grown = memoryKb(agent.pid).rss - before;
    assert.ok(grown < 8 * 1024, `agent grew ${grown} kB`);
    w.stop();
    await w.done;
    await link.ping();
  });

  test('watch: a tree past 8192 directories is watched up to the bound, with an overflow', async () => {
    const root = join(dir, 'wide');
    mkdirSync(root);
    execFileSync('mkdir', Array.from({ length: 8300 }, (_, i) => `d${i}`), { cwd: root });
    const events: AgentFileEvent[] = [];
    const before = memoryKb(agent.pid).rss;
    const w = link.watch(root, { recursive: true }, (e) => events.push(e));
    await w.ready;
    await waitFor('overflow', () => events.some((e) => e.kind === 'overflow' && e.path === root));
    assert.ok(memoryKb(agent.pid).rss - before < 8 * 1024);
    // What is watched still reports.
    writeFileSync(join(root, 'top'), '');
    await waitFor('created at the top', () => events.some((e) => e.path === join(root, 'top')));
    w.stop();
    await w.done;
    rmSync(root, { recursive: true });
  });
});
