import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../src/constants.js';
import { AirlockError } from '../src/errors.js';
import { buildTemplate, builtinRecipeDigest, ensureTemplate } from '../src/template/build-template.js';
import { deb822Uris, hostDebianMirror, oneLineUris } from '../src/template/debian-mirror.js';
import { mountsUnder, unmountUnder } from '../src/template/mounts-under.js';
import { removeDeviceNodes, shiftOwnership, treeDiskUsage } from '../src/template/rootfs-tree.js';
import { TemplateStore, validateTemplateName } from '../src/template/template-store.js';
import { mergedView } from './templates-support.js';

/** Shared across test runs on this machine, so debootstrap runs once per machine. */
const SHARED_TEMPLATES = '/var/lib/airlock/templates';

function tmpDir(t: { after: (f: () => Promise<void> | void) => void }, tag: string): string {
  const dir = mkdtempSync(join(tmpdir(), `airlock-test-${tag}-`));
  t.after(async () => {
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function errorCode(code: string) {
  return (e: unknown) => e instanceof AirlockError && e.code === code;
}

/** A pid that cannot belong to a live process: above the kernel's pid_max. */
function deadPid(): number {
  return Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) + 1;
}

test('tiny builds fast: busybox layer, finalize layer, shifted ownership', async (t) => {
  const dir = tmpDir(t, 'tiny');
  const started = Date.now();
  const info = await buildTemplate(dir, 'tiny');
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 5_000, `tiny took ${elapsed} ms`);

  const tpl = new TemplateStore(dir).require('tiny');
  assert.equal(info.name, 'tiny');
  assert.equal(info.layers, 2);
  assert.equal(info.path, tpl.rootfs);
  assert.equal(tpl.layers[0], tpl.rootfs, 'rootfs is the topmost layer');
  assert.match(info.digest ?? '', /^sha256:[a-f0-9]{64}$/);
  assert.ok(info.sizeBytes !== null && info.sizeBytes > 1_000_000, `size ${info.sizeBytes}`);

  const [top, bottom] = tpl.layers as [string, string];
  assert.ok(statSync(join(bottom, 'bin/busybox')).isFile());
  assert.equal(readlinkSync(join(bottom, 'bin/sh')), '/bin/busybox');
  assert.equal(statSync(join(bottom, 'tmp')).mode & 0o7777, 0o1777);
  for (const d of ['work', 'proc', 'sys', 'dev', 'run', 'etc', 'root']) {
    assert.ok(statSync(join(bottom, d)).isDirectory(), d);
  }
  assert.match(readFileSync(join(bottom, 'etc/passwd'), 'utf8'), /^root:x:0:0:/m);
  assert.match(readFileSync(join(bottom, 'etc/passwd'), 'utf8'), /^nobody:x:65534:65534:/m);
  assert.match(readFileSync(join(bottom, 'etc/group'), 'utf8'), /^root:x:0:/m);
  // The finalize layer holds the files every template gets.
  assert.equal(readFileSync(join(top, 'etc/resolv.conf'), 'utf8'), '');
  assert.equal(readFileSync(join(top, 'etc/hostname'), 'utf8'), 'airlock\n');

  for (const [root, p] of [[bottom, ''], [bottom, 'bin/busybox'], [bottom, 'etc/passwd'], [bottom, 'tmp'], [bottom, 'work'], [top, 'etc/hosts']] as const) {
    const st = statSync(join(root, p));
    assert.equal(st.uid, SANDBOX_ID_BASE, `uid of /${p}`);
    assert.equal(st.gid, SANDBOX_ID_BASE, `gid of /${p}`);
  }
  assert.equal(lstatSync(join(bottom, 'bin/sh')).uid, SANDBOX_ID_BASE, 'symlinks are shifted too (lchown)');

  // Atomic: the store's own directories and the template, no work left in _tmp.
  assert.deepEqual(readdirSync(dir).sort(), ['_layers', '_logs', '_tmp', 'tiny']);
  assert.deepEqual(readdirSync(join(dir, '_tmp')), []);
  assert.equal(readdirSync(join(dir, '_logs')).filter((f) => f.startsWith('tiny-')).length, 1, 'a build log is kept');

  assert.equal(tpl.workdir, '/work');
  assert.ok(tpl.env.includes('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'));
  assert.ok(tpl.env.includes('LANG=C.UTF-8'));
  assert.ok(tpl.env.includes('HOME=/root'));

  // The stacked layers run (chroot as host root; sandboxes add the user namespace).
  const out = execFileSync('chroot', [mergedView(t, tpl.layers), '/bin/sh', '-c', 'echo hello from $(cat /etc/hostname)'], { encoding: 'utf8' });
  assert.equal(out.trim(), 'hello from airlock');
});

test('an unchanged recipe is not rebuilt; force rebuilds on the same layers and leaves no work behind', async (t) => {
  const dir = tmpDir(t, 'rebuild');
  const first = await buildTemplate(dir, 'tiny');
  const lines: string[] = [];
  const again = await buildTemplate(dir, 'tiny', { log: (l) => lines.push(l) });
  assert.equal(again.createdAt, first.createdAt);
  assert.ok(lines.some((l) => l.includes('up to date')), lines.join('\n'));
  await new Promise((r) => setTimeout(r, 5));
  const forced = await buildTemplate(dir, 'tiny', { force: true });
  assert.notEqual(forced.createdAt, first.createdAt);
  assert.equal(forced.digest, first.digest);
  assert.equal(forced.path, first.path, 'same layers');
  assert.deepEqual(readdirSync(dir).sort(), ['_layers', '_logs', '_tmp', 'tiny']);
  assert.deepEqual(readdirSync(join(dir, '_tmp')), []);
  assert.equal(readdirSync(join(dir, '_layers')).length, 2);
});

test('leftovers of a killed builder (with a mount inside) are removed by the next build', async (t) => {
  const dir = tmpDir(t, 'leftover');
  await buildTemplate(dir, 'tiny');
  const leftover = join(dir, '_tmp', `build-${deadPid()}-0badc0de`);
  const fakeMerged = join(leftover, 'merged');
  mkdirSync(fakeMerged, { recursive: true });
  writeFileSync(join(leftover, 'half-written'), 'x');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'airlock-test-leftover', fakeMerged]);
  writeFileSync(join(fakeMerged, 'inside-the-mount'), 'x');
  // Stale locks and claims of the killed builder must not block or pin anything either.
  writeFileSync(join(dir, '_tmp', '.name-tiny.lock'), String(deadPid()));
  writeFileSync(join(dir, '_tmp', `claim-${deadPid()}-0badc0de.json`), JSON.stringify({ pid: deadPid(), layers: [] }));

  const lines: string[] = [];
  await buildTemplate(dir, 'tiny', { force: true, log: (l) => lines.push(l) });
  assert.deepEqual(readdirSync(join(dir, '_tmp')), []);
  assert.deepEqual(mountsUnder(dir), []);
  assert.ok(lines.some((l) => l.includes('removed leftover')), lines.join('\n'));
});

test('a live builder holds the lock: a second build is refused', async (t) => {
  const dir = tmpDir(t, 'lock');
  mkdirSync(join(dir, '_tmp'), { recursive: true });
  writeFileSync(join(dir, '_tmp', '.name-tiny.lock'), String(process.pid));
  await assert.rejects(buildTemplate(dir, 'tiny'), errorCode('conflict'));
  await assert.rejects(ensureTemplate(dir, 'tiny', { waitMs: 600 }), errorCode('conflict'));
  assert.equal(new TemplateStore(dir).has('tiny'), false);
  rmSync(join(dir, '_tmp', '.name-tiny.lock'));
  const [a, b] = await Promise.all([ensureTemplate(dir, 'tiny'), ensureTemplate(dir, 'tiny')]);
  assert.equal(a.createdAt, b.createdAt, 'the waiting caller gets the template the first one built');
});

test('template names are validated at every entry point', async (t) => {
  for (const good of ['base', 'tiny', 'py3.11', 'a', 'a-b_c.d', '0', 'x'.repeat(63)]) {
    assert.equal(validateTemplateName(good), good);
  }
  for (const bad of ['', 'Base', '.hidden', '-x', '_x', 'a/b', '../etc', 'a b', 'x'.repeat(64), 'é']) {
    assert.throws(() => validateTemplateName(bad), errorCode('bad_request'), JSON.stringify(bad));
  }
  const dir = tmpDir(t, 'names');
  const store = new TemplateStore(dir);
  assert.throws(() => store.get('../etc'), errorCode('bad_request'));
  assert.throws(() => store.require('Nope'), errorCode('bad_request'));
  assert.throws(() => store.require('nope'), errorCode('not_found'));
  assert.equal(store.get('nope'), null);
  assert.equal(store.has('../etc'), false);
  await assert.rejects(buildTemplate(dir, 'nope'), /no built-in recipe/);
  await assert.rejects(buildTemplate(dir, '../etc'), errorCode('bad_request'));
});

test('list shows complete templates only, sorted', async (t) => {
  const dir = tmpDir(t, 'list');
  await buildTemplate(dir, 'tiny');
  mkdirSync(join(dir, 'broken', 'rootfs'), { recursive: true });
  writeFileSync(join(dir, 'broken', 'template.json'), '{');
  mkdirSync(join(dir, 'norootfs'));
  writeFileSync(join(dir, 'norootfs', 'template.json'), JSON.stringify({
    name: 'norootfs', createdAt: 'x', sizeBytes: 1, env: [], workdir: '/work',
  }));
  mkdirSync(join(dir, 'renamed', 'rootfs'), { recursive: true });
  writeFileSync(join(dir, 'renamed', 'template.json'), JSON.stringify({
    name: 'other', createdAt: 'x', sizeBytes: 1, env: [], workdir: '/work',
  }));
  mkdirSync(join(dir, 'Upper', 'rootfs'), { recursive: true });
  mkdirSync(join(dir, 'nolayer'));
  writeFileSync(join(dir, 'nolayer', 'template.json'), JSON.stringify({
    name: 'nolayer', createdAt: 'x', sizeBytes: 1, env: [], workdir: '/work', layers: ['0'.repeat(64)],
  }));
  const store = new TemplateStore(dir);
  assert.deepEqual(store.list().map((i) => i.name), ['tiny']);
  assert.equal(store.has('broken'), false);
  assert.deepEqual(new TemplateStore(join(dir, 'missing')).list(), []);
});

test('shiftOwnership keeps setuid/setgid bits, shifts hard links once, refuses unmapped ids', async (t) => {
  const dir = tmpDir(t, 'shift');
  const root = join(dir, 'root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  writeFileSync(join(root, 'bin/su'), 'x');
  writeFileSync(join(root, 'bin/sg'), 'x');
  mkdirSync(join(root, 'mail'));
  // chown clears setuid/setgid, so owners first, then modes.
  execFileSync('chown', ['0:42', join(root, 'bin/sg')]);
  execFileSync('chown', ['1000:1000', join(root, 'mail')]);
  execFileSync('chmod', ['4755', join(root, 'bin/su')]);
  execFileSync('chmod', ['2755', join(root, 'bin/sg')]);
  execFileSync('chmod', ['2775', join(root, 'mail')]);
  execFileSync('ln', [join(root, 'bin/su'), join(root, 'bin/su-link')]);

  await shiftOwnership(root, SANDBOX_ID_BASE, SANDBOX_ID_SIZE);
  const su = statSync(join(root, 'bin/su'));
  assert.equal(su.uid, SANDBOX_ID_BASE);
  assert.equal(su.mode & 0o7777, 0o4755);
  const sg = statSync(join(root, 'bin/sg'));
  assert.equal(sg.gid, SANDBOX_ID_BASE + 42);
  assert.equal(sg.mode & 0o7777, 0o2755);
  const mail = statSync(join(root, 'mail'));
  assert.equal(mail.uid, SANDBOX_ID_BASE + 1000);
  assert.equal(mail.mode & 0o7777, 0o2775);

  const bad = join(dir, 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'f'), 'x');
  execFileSync('chown', [String(SANDBOX_ID_SIZE), join(bad, 'f')]);
  await assert.rejects(shiftOwnership(bad, SANDBOX_ID_BASE, SANDBOX_ID_SIZE), /outside the sandbox id range/);
});

test('device nodes are removed from a rootfs; disk usage counts hard links once', async (t) => {
  const dir = tmpDir(t, 'dev');
  mkdirSync(join(dir, 'dev'));
  execFileSync('mknod', [join(dir, 'dev/null'), 'c', '1', '3']);
  execFileSync('mknod', [join(dir, 'dev/sda'), 'b', '8', '0']);
  writeFileSync(join(dir, 'dev/regular'), 'keep');
  assert.equal(await removeDeviceNodes(dir), 2);
  assert.deepEqual(readdirSync(join(dir, 'dev')), ['regular']);

  writeFileSync(join(dir, 'big'), Buffer.alloc(1 << 20, 1));
  const before = await treeDiskUsage(dir);
  execFileSync('ln', [join(dir, 'big'), join(dir, 'big-link')]);
  assert.equal(await treeDiskUsage(dir), before);
});

test('the Debian mirror is read from one-line and deb822 sources', () => {
  const list = [
    '# deb http://commented/ bookworm main',
    'deb-src http://src/ bookworm main',
    'deb http://security/ bookworm-security main',
    'deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main # trailing',
  ].join('\n');
  assert.deepEqual(oneLineUris(list, 'bookworm'), ['http://one.example/debian']);
  const sources = [
    'Types: deb', 'URIs: http://disabled/', 'Suites: bookworm', 'Enabled: no', '',
    'Types: deb deb-src', '# a comment', 'URIs: https://two.example/debian', 'Suites: bookworm bookworm-updates', 'Components: main', '',
    'Types: deb', 'URIs: http://three/', 'Suites: bookworm-security',
  ].join('\n');
  assert.deepEqual(deb822Uris(sources, 'bookworm'), ['https://two.example/debian']);
  assert.equal(hostDebianMirror({ AIRLOCK_DEBIAN_MIRROR: 'http://override/debian' }), 'http://override/debian');
  assert.match(hostDebianMirror({}), /^https?:\/\//);
});

test(`base (debootstrap) is present and current in ${SHARED_TEMPLATES}, built once per machine`, { timeout: 20 * 60_000 }, async (t) => {
  const info = await ensureTemplate(SHARED_TEMPLATES, 'base', {
    log: (line) => console.log(`# base: ${line}`),
  });
  assert.equal(info.digest, await builtinRecipeDigest('base'));
  const tpl = new TemplateStore(SHARED_TEMPLATES).require('base');
  assert.ok(tpl.layers.length >= 3, 'debootstrap, packages and finalize layers');
  const rootfs = mergedView(t, tpl.layers);
  for (const bin of ['python3', 'node', 'npm', 'git', 'curl', 'jq', 'less', 'ps', 'find']) {
    assert.ok(existsSync(join(rootfs, 'usr/bin', bin)), `${bin} is installed`);
  }
  assert.ok(!existsSync(join(rootfs, 'usr/bin/gcc')), 'no compilers');
  const out = execFileSync('chroot', [rootfs, '/usr/bin/python3', '-c', 'import ssl, venv, pip; print(6 * 7)'], { encoding: 'utf8' });
  assert.equal(out.trim(), '42');
  assert.equal(statSync(join(rootfs, 'usr/bin/python3')).uid, SANDBOX_ID_BASE);
  const su = statSync(join(rootfs, 'usr/bin/su'));
  assert.equal(su.uid, SANDBOX_ID_BASE);
  assert.equal(su.mode & 0o4000, 0o4000, 'setuid bit survives the shift');
  assert.ok(existsSync(join(rootfs, 'etc/ssl/certs/ca-certificates.crt')), 'ca-certificates installed');
  assert.equal(readFileSync(join(rootfs, 'etc/resolv.conf'), 'utf8'), '', 'no host resolver leaks in');
  assert.equal(readFileSync(join(rootfs, 'etc/hostname'), 'utf8'), 'airlock\n');
  assert.ok(statSync(join(rootfs, 'work')).isDirectory());
  for (const layer of tpl.layers) {
    const devices = (existsSync(join(layer, 'dev')) ? readdirSync(join(layer, 'dev')) : []).filter((n) => {
      const st = lstatSync(join(layer, 'dev', n));
      return (st.isCharacterDevice() || st.isBlockDevice()) && st.rdev !== 0;
    });
    assert.deepEqual(devices, [], 'no device nodes in a template (whiteouts aside)');
  }
  assert.deepEqual(readdirSync(join(rootfs, 'var/cache/apt/archives')).filter((n) => n.endsWith('.deb')), []);
  assert.deepEqual(readdirSync(join(rootfs, 'var/lib/apt/lists')).filter((n) => n !== 'partial' && n !== 'lock'), []);
  assert.equal(tpl.workdir, '/work');
});
