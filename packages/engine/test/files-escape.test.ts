/**
 * No file operation may leave the sandbox's root: not through links (to the host's paths, to
 * /proc/1/root), not through `..`, not through a bind mount, and not through a race that swaps
 * a directory for a link while the operation runs. The agent does every operation from inside
 * the sandbox, so all of these resolve inside it; these tests attack that with real sandboxes
 * and check the host with canaries.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Engine } from '../src/engine.js';
import { AirlockError } from '../src/errors.js';
import { closeAndClean, openTestEngine } from './support.js';

const admin = { tenant: null };
let engine: Engine;
let dataDir: string;
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

const outcomes = { ok: 0, refused: 0 };

/** Runs `op`; an API error (4xx) is an acceptable answer mid-race, anything else is not. */
async function tolerate<T>(op: () => Promise<T>): Promise<T | null> {
  try {
    const r = await op();
    outcomes.ok++;
    return r;
  } catch (e) {
    assert.ok(e instanceof AirlockError, `not an API error: ${String(e)}`);
    assert.ok(e.status < 500, `server error: ${e.status} ${e.message}`);
    outcomes.refused++;
    return null;
  }
}

/** What a host directory holds, with contents and mtimes, to compare before and after. */
function snapshot(dir: string): string {
  return readdirSync(dir).sort().map((n) => {
    const st = statSync(join(dir, n));
    return `${n} ${st.mode} ${st.mtimeMs} ${st.isFile() ? readFileSync(join(dir, n), 'hex') : ''}`;
  }).join('\n');
}

let canaryDir: string;
let canaryName: string;
let hostCanary: string;
const shadowBefore = { text: readFileSync('/etc/shadow', 'utf8'), mtime: statSync('/etc/shadow').mtimeMs };

before(async () => {
  ({ engine, dataDir } = await openTestEngine('files-escape'));
  // A host directory whose path a sandbox can also create for itself: an operation that
  // escaped through a link to / would land here.
  canaryDir = mkdtempSync(join(tmpdir(), 'airlock-canary-'));
  canaryName = basename(canaryDir);
  hostCanary = `HOST-CANARY-${randomBytes(8).toString('hex')}`;
  writeFileSync(join(canaryDir, 'x'), hostCanary);
  writeFileSync(join(canaryDir, 'host-only'), hostCanary);
});

after(async () => {
  rmSync(canaryDir, { recursive: true, force: true });
  await closeAndClean(engine, dataDir, created);
});

describe('links planted inside the sandbox', () => {
  test('to the host\'s /etc/shadow, to /proc/1/root and with ..: every operation stays inside', async () => {
    const before = snapshot(canaryDir);
    const s = await sandbox();
    await sh(s.id, [
      'mkdir -p /work /tmp', 'ln -s /etc/shadow /work/x', 'ln -s /proc/1/root /work/r', `ln -s ${canaryDir} /work/c`,
      'ln -s ../../../../../../../../ /work/up', `mkdir -p ${canaryDir}`, `echo inside > ${canaryDir}/x`,
    ].join(' && '));
    const reject400 = (p: Promise<unknown>) => assert.rejects(p, (e: AirlockError) => e.status === 400);

    // The link itself is never followed: read, stream, write, list, watch, walk all refuse it.
    await reject400(engine.readFile(admin, s.id, '/work/x'));
    await reject400(engine.readFileStream(admin, s.id, '/work/x'));
    await reject400(engine.writeFile(admin, s.id, '/work/x', Buffer.from('owned')));
    await reject400(engine.writeFile(admin, s.id, '/work/c', Buffer.from('owned')));
    await reject400(engine.listDir(admin, s.id, '/work/r'));
    await reject400(engine.watchFiles(admin, s.id, '/work/r', {}, () => {}));
    assert.equal((await engine.statPath(admin, s.id, '/work/x')).type, 'symlink');

    // Through a link in the middle of a path: the sandbox's files, never the host's.
    for (const p of ['/work/r/etc/shadow', '/work/up/etc/shadow', '/work/../../../etc/shadow', '/work/r/../../etc/shadow']) {
      const got = await tolerate(() => engine.readFile(admin, s.id, p));
      assert.notEqual(got?.toString(), shadowBefore.text, `${p} revealed the host's /etc/shadow`);
    }
    // Three ways to the sandbox's own copy of the canary path: each sees what the last wrote.
    let expected = 'inside\n';
    for (const p of ['/work/c/x', '/work/r/work/c/x', '/work/up' + canaryDir + '/x']) {
      assert.equal((await engine.readFile(admin, s.id, p)).toString(), expected, p);
      expected = `written via ${p}`;
      await engine.writeFile(admin, s.id, p, Buffer.from(expected));
    }
    assert.deepEqual((await engine.listDir(admin, s.id, `/work/up${canaryDir}`)).map((e) => e.name), ['x'], 'the host-only file is not listed');
    await reject400(engine.listDir(admin, s.id, '/work/c'));
    await assert.rejects(engine.statPath(admin, s.id, '/work/c/host-only'), (e: AirlockError) => e.status === 404);
    const sandboxEtc = (await sh(s.id, 'ls /etc')).split('\n').filter(Boolean).sort();
    assert.deepEqual((await engine.listDir(admin, s.id, '/work/r/etc')).map((e) => e.name).sort(), sandboxEtc);

    // mkdir and rename through /proc/1/root land inside the sandbox.
    await engine.makeDir(admin, s.id, `/work/r${canaryDir}/made`, { parents: true });
    await engine.renamePath(admin, s.id, `/work/r${canaryDir}/x`, `/work/up${canaryDir}/renamed`);
    assert.equal(await sh(s.id, `ls ${canaryDir}`), 'made\nrenamed\n');

    // Rename of a link moves the link; rename over a link replaces the link: /etc/shadow untouched.
    await engine.renamePath(admin, s.id, '/work/x', '/work/x2');
    assert.equal(await sh(s.id, 'readlink /work/x2'), '/etc/shadow\n');
    await engine.writeFile(admin, s.id, '/work/plain', Buffer.from('plain'));
    await assert.rejects(engine.renamePath(admin, s.id, '/work/plain', '/work/x2'), (e: AirlockError) => e.status === 409);
    await engine.renamePath(admin, s.id, '/work/plain', '/work/x2', { overwrite: true });
    assert.equal((await engine.readFile(admin, s.id, '/work/x2')).toString(), 'plain');

    // Outputs from a directory reached through /proc/1/root: the sandbox's, links not followed.
    const outputs = await sandbox({ outputPath: '/work/r/etc' });
    await sh(outputs.id, 'mkdir -p /work && ln -s /proc/1/root /work/r && ln -s /etc/shadow /etc/stolen');
    const listing = await engine.outputsList(admin, outputs.id);
    const stolen = listing.entries.find((e) => e.path === 'stolen')!;
    assert.deepEqual([stolen.type, stolen.linkTarget, stolen.sha256], ['symlink', '/etc/shadow', undefined]);
    assert.ok(!listing.entries.some((e) => e.path === 'shadow' && e.size === Buffer.byteLength(shadowBefore.text) && e.sha256 === undefined));

    // Delete removes links, never targets.
    await engine.deletePath(admin, s.id, '/work/x2');
    await engine.deletePath(admin, s.id, '/work/r', { recursive: true });
    await engine.deletePath(admin, s.id, '/work/c', { recursive: true });
    assert.equal(await sh(s.id, `cat ${canaryDir}/renamed; echo; ls /etc | wc -l | tr -d ' '`), `${expected}\n${sandboxEtc.length}\n`);

    assert.equal(snapshot(canaryDir), before, 'the host canary directory changed');
    assert.equal(readFileSync('/etc/shadow', 'utf8'), shadowBefore.text);
    assert.equal(statSync('/etc/shadow').mtimeMs, shadowBefore.mtime);
  });

  test('a read-only bind mount cannot be written, emptied or moved out of through the API', async () => {
    const hostDir = mkdtempSync(join(tmpdir(), 'airlock-ro-mount-'));
    try {
      writeFileSync(join(hostDir, 'keep'), 'host data', { mode: 0o644 });
      chmodSync(hostDir, 0o755); // readable by the sandbox's unprivileged ids
      const before = snapshot(hostDir);
      const s = await sandbox({ mounts: [{ source: hostDir, target: '/mnt/in', readOnly: true }] });
      assert.equal((await engine.readFile(admin, s.id, '/mnt/in/keep')).toString(), 'host data');
      const refused = (p: Promise<unknown>) => assert.rejects(p, (e: AirlockError) => e instanceof AirlockError && e.status >= 400 && e.status < 500);
      await refused(engine.writeFile(admin, s.id, '/mnt/in/keep', Buffer.from('x')));
      await refused(engine.writeFile(admin, s.id, '/mnt/in/new', Buffer.from('x')));
      await refused(engine.deletePath(admin, s.id, '/mnt/in/keep'));
      await refused(engine.renamePath(admin, s.id, '/mnt/in/keep', '/work/stolen'));
      await refused(engine.renamePath(admin, s.id, '/mnt/in/keep', '/mnt/in/moved'));
      await refused(engine.makeDir(admin, s.id, '/mnt/in/d'));
      await refused(engine.renamePath(admin, s.id, '/mnt/in', '/work/mnt'));
      assert.equal(snapshot(hostDir), before);
    } finally {
      rmSync(hostDir, { recursive: true, force: true });
    }
  });
});

describe('a directory swapped for links while the API works on it', () => {
  test('thousands of operations on /work/d/… while /work/d flips between a directory, a link to / and to /proc/1/root', async (t) => {
    const before = snapshot(canaryDir);
    const s = await sandbox({ outputPath: `/work/d${canaryDir}` });
    const inner = `/work/d${canaryDir}`;
    // The racer: every state of /work/d gives the API something to resolve. Bounded: it stops
    // when /work/stop appears, and the sandbox's lifetime bounds it anyway.
    await sh(s.id, `mkdir -p ${canaryDir} /work && echo sandbox > ${canaryDir}/x`);
    await engine.execBackground(admin, s.id, {
      cmd: ['/bin/sh', '-c', [
        'while [ ! -e /work/stop ]; do',
        `  mkdir -p /work/d${canaryDir} && echo dir > /work/d${canaryDir}/x`,
        '  rm -rf /work/d; ln -s / /work/d; rm -f /work/d; ln -s /proc/1/root /work/d; rm -f /work/d',
        'done',
      ].join('\n')],
    });

    const seen = new Set<string>();
    const stopWatches: Array<() => void> = [];
    const ops: Array<() => Promise<unknown>> = [
      async () => {
        const b = await tolerate(() => engine.readFile(admin, s.id, `${inner}/x`));
        if (b) seen.add(b.toString());
      },
      async () => {
        const it = await tolerate(() => engine.readFileStream(admin, s.id, `${inner}/x`));
        if (it) for await (const c of it) seen.add(c.toString());
      },
      () => tolerate(() => engine.writeFile(admin, s.id, `${inner}/x`, Buffer.from('api'))),
      async () => {
        const entries = await tolerate(() => engine.listDir(admin, s.id, inner));
        assert.ok(!entries?.some((e) => e.name === 'host-only'), 'a listing reached the host directory');
      },
      () => tolerate(() => engine.renamePath(admin, s.id, `${inner}/x`, `${inner}/y`, { overwrite: true })),
      () => tolerate(() => engine.renamePath(admin, s.id, `${inner}/y`, `${inner}/x`)),
      () => tolerate(() => engine.deletePath(admin, s.id, `${inner}/y`)),
      async () => {
        const st = await tolerate(() => engine.statPath(admin, s.id, `${inner}/host-only`));
        assert.equal(st, null, 'stat found the host-only file');
      },
      () => tolerate(() => engine.makeDir(admin, s.id, `${inner}/m`, { parents: true })),
      () => tolerate(() => engine.deletePath(admin, s.id, `${inner}/m`, { recursive: true })),
      async () => {
        const got = await tolerate(() => engine.readFile(admin, s.id, '/work/d/etc/shadow'));
        assert.notEqual(got?.toString(), shadowBefore.text, 'the host\'s /etc/shadow was revealed');
      },
      async () => {
        const l = await tolerate(() => engine.outputsList(admin, s.id));
        assert.ok(!l?.entries.some((e) => e.path === 'host-only'), 'outputs reached the host directory');
      },
      async () => {
        if (stopWatches.length >= 8) stopWatches.shift()!();
        const w = await tolerate(() => engine.watchFiles(admin, s.id, inner, { recursive: true }, () => {}));
        if (w) stopWatches.push(w.stop);
      },
    ];
    const ROUNDS = 3000;
    outcomes.ok = outcomes.refused = 0;
    // Two callers at once, so operations also overlap each other.
    await Promise.all([0, 1].map(async (lane) => {
      for (let i = lane; i < ROUNDS; i += 2) await ops[i % ops.length]!();
    }));
    for (const stop of stopWatches) stop();
    await sh(s.id, 'touch /work/stop');
    t.diagnostic(`${outcomes.ok} operations succeeded, ${outcomes.refused} were refused mid-race (${[...seen].length} distinct reads)`);
    // Both kinds in numbers: the path really did change under the operations.
    assert.ok(outcomes.ok > 300 && outcomes.refused > 300, JSON.stringify(outcomes));

    assert.ok(!seen.has(hostCanary), 'a read returned the host canary');
    assert.ok([...seen].some((t) => t === 'api' || t === 'sandbox\n' || t === 'dir\n'), `reads never succeeded: ${[...seen].join('|')}`);
    assert.equal(snapshot(canaryDir), before, 'the host canary directory changed');
    assert.equal(readFileSync('/etc/shadow', 'utf8'), shadowBefore.text);
    assert.equal(statSync('/etc/shadow').mtimeMs, shadowBefore.mtime);
    // The sandbox and its agent are fine afterwards.
    assert.equal(await sh(s.id, 'echo alive'), 'alive\n');
    await engine.killSandbox(admin, s.id);
  });
});

test('the canary survives the suite', () => {
  mkdirSync(canaryDir, { recursive: true });
  assert.equal(readFileSync(join(canaryDir, 'x'), 'utf8'), hostCanary);
});
