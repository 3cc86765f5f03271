import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../src/constants.js';
import { AirlockError } from '../src/errors.js';
import { buildTemplate, ensureTemplate } from '../src/template/build-template.js';
import { deb822Uris, hostDebianMirror, oneLineUris } from '../src/template/debian-mirror.js';
import { mountsUnder, unmountUnder } from '../src/template/mounts-under.js';
import { removeDeviceNodes, shiftOwnership, treeDiskUsage } from '../src/template/rootfs-tree.js';
import { TemplateStore, validateTemplateName } from '../src/template/template-store.js';

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

test('tiny builds fast, with busybox, the usual dirs and shifted ownership', async (t) => {
  const dir = tmpDir(t, 'tiny');
  const started = Date.now();
  const info = await buildTemplate(dir, 'tiny');
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 5_000, `tiny took ${elapsed} ms`);

  const rootfs = join(dir, 'tiny', 'rootfs');
  assert.equal(info.name, 'tiny');
  assert.equal(info.path, rootfs);
  assert.ok(info.sizeBytes !== null && info.sizeBytes > 1_000_000, `size ${info.sizeBytes}`);

  assert.ok(statSync(join(rootfs, 'bin/busybox')).isFile());
  assert.equal(readlinkSync(join(rootfs, 'bin/sh')), '/bin/busybox');
  assert.equal(statSync(join(rootfs, 'tmp')).mode & 0o7777, 0o1777);
  for (const d of ['work', 'proc', 'sys', 'dev', 'run', 'etc', 'root']) {
    assert.ok(statSync(join(rootfs, d)).isDirectory(), d);
  }
  assert.match(readFileSync(join(rootfs, 'etc/passwd'), 'utf8'), /^root:x:0:0:/m);
  assert.match(readFileSync(join(rootfs, 'etc/passwd'), 'utf8'), /^nobody:x:65534:65534:/m);
  assert.match(readFileSync(join(rootfs, 'etc/group'), 'utf8'), /^root:x:0:/m);
  assert.equal(readFileSync(join(rootfs, 'etc/resolv.conf'), 'utf8'), '');

  for (const p of ['', 'bin/busybox', 'etc/passwd', 'tmp', 'work']) {
    const st = statSync(join(rootfs, p));
    assert.equal(st.uid, SANDBOX_ID_BASE, `uid of /${p}`);
    assert.equal(st.gid, SANDBOX_ID_BASE, `gid of /${p}`);
  }
  assert.equal(lstatSync(join(rootfs, 'bin/sh')).uid, SANDBOX_ID_BASE, 'symlinks are shifted too (lchown)');

  // Atomic: nothing but the finished template is left in the directory.
  assert.deepEqual(readdirSync(dir), ['tiny']);

  const t1 = new TemplateStore(dir).require('tiny');
  assert.equal(t1.workdir, '/work');
  assert.ok(t1.env.includes('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'));
  assert.ok(t1.env.includes('LANG=C.UTF-8'));
  assert.ok(t1.env.includes('HOME=/root'));

  // The rootfs actually runs (chroot as host root; sandboxes add the user namespace).
  const out = execFileSync('chroot', [rootfs, '/bin/sh', '-c', 'echo hello from $(cat /etc/hostname)'], { encoding: 'utf8' });
  assert.equal(out.trim(), 'hello from airlock');
});

test('rebuild replaces the template and leaves no build or swap directories', async (t) => {
  const dir = tmpDir(t, 'rebuild');
  const first = await buildTemplate(dir, 'tiny');
  await new Promise((r) => setTimeout(r, 5));
  const second = await buildTemplate(dir, 'tiny');
  assert.notEqual(first.createdAt, second.createdAt);
  assert.deepEqual(readdirSync(dir), ['tiny']);
  assert.equal(new TemplateStore(dir).info('tiny')?.createdAt, second.createdAt);
});

test('leftovers of an interrupted build (with a mount inside) are removed by the next build', async (t) => {
  const dir = tmpDir(t, 'leftover');
  const leftover = join(dir, `.tiny.build-${deadPid()}`);
  const fakeProc = join(leftover, 'rootfs', 'proc');
  mkdirSync(fakeProc, { recursive: true });
  writeFileSync(join(leftover, 'rootfs', 'half-written'), 'x');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'airlock-test-leftover', fakeProc]);
  writeFileSync(join(fakeProc, 'inside-the-mount'), 'x');
  // A stale lock from the killed builder must not block the next build either.
  writeFileSync(join(dir, '.tiny.lock'), String(deadPid()));

  assert.equal(new TemplateStore(dir).has('tiny'), false, 'a half-built template is not visible');
  const lines: string[] = [];
  await buildTemplate(dir, 'tiny', { log: (l) => lines.push(l) });

  assert.deepEqual(readdirSync(dir), ['tiny']);
  assert.deepEqual(mountsUnder(dir), []);
  assert.ok(lines.some((l) => l.includes('removing leftover')), lines.join('\n'));
});

test('a live builder holds the lock: a second build is refused', async (t) => {
  const dir = tmpDir(t, 'lock');
  writeFileSync(join(dir, '.tiny.lock'), String(process.pid));
  await assert.rejects(buildTemplate(dir, 'tiny'), errorCode('conflict'));
  await assert.rejects(ensureTemplate(dir, 'tiny', { waitMs: 600 }), errorCode('conflict'));
  assert.equal(new TemplateStore(dir).has('tiny'), false);
  rmSync(join(dir, '.tiny.lock'));
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
  await assert.rejects(buildTemplate(dir, 'nope' as 'tiny'), errorCode('bad_request'));
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

test(`base (debootstrap) is present in ${SHARED_TEMPLATES}, built once per machine`, { timeout: 20 * 60_000 }, async () => {
  const info = await ensureTemplate(SHARED_TEMPLATES, 'base', {
    log: (line) => console.log(`# base: ${line}`),
  });
  const rootfs = info.path;
  assert.ok(existsSync(join(rootfs, 'usr/bin/python3')), 'python3 is installed');
  const out = execFileSync('chroot', [rootfs, '/usr/bin/python3', '-c', 'import ssl; print(6 * 7)'], { encoding: 'utf8' });
  assert.equal(out.trim(), '42');
  assert.equal(statSync(join(rootfs, 'usr/bin/python3')).uid, SANDBOX_ID_BASE);
  assert.equal(statSync(rootfs).uid, SANDBOX_ID_BASE);
  const su = statSync(join(rootfs, 'usr/bin/su'));
  assert.equal(su.uid, SANDBOX_ID_BASE);
  assert.equal(su.mode & 0o4000, 0o4000, 'setuid bit survives the shift');
  assert.ok(existsSync(join(rootfs, 'etc/ssl/certs/ca-certificates.crt')), 'ca-certificates installed');
  assert.equal(readFileSync(join(rootfs, 'etc/resolv.conf'), 'utf8'), '', 'no host resolver leaks in');
  assert.equal(readFileSync(join(rootfs, 'etc/hostname'), 'utf8'), 'airlock\n');
  assert.ok(statSync(join(rootfs, 'work')).isDirectory());
  const devices = readdirSync(join(rootfs, 'dev')).filter((n) => {
    const st = lstatSync(join(rootfs, 'dev', n));
    return st.isCharacterDevice() || st.isBlockDevice();
  });
  assert.deepEqual(devices, [], 'no device nodes in a template');
  assert.deepEqual(readdirSync(join(rootfs, 'var/cache/apt/archives')).filter((n) => n.endsWith('.deb')), []);
  assert.equal(new TemplateStore(SHARED_TEMPLATES).require('base').workdir, '/work');
});
