/**
 * Image import: OCI layouts and `docker save` archives made here with tar-stream, applied in
 * order with whiteouts; the config's Env/WorkingDir/User/Entrypoint/Cmd kept; and every
 * malicious variant refused with a clear error and nothing left in the templates directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstatSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { SANDBOX_ID_BASE } from '../src/constants.js';
import { buildTemplate } from '../src/template/build-template.js';
import { importTemplate } from '../src/template/import-template.js';
import { TemplateStore } from '../src/template/template-store.js';
import { dockerSaveImage, ociImage, tarBuffer, type FixtureEntry } from './image-fixtures.js';
import { ADMIN, engineOn, listTree, tmpTemplates } from './templates-support.js';

const BUSYBOX = readFileSync('/bin/busybox');

/** A runnable base: busybox and a few applet links (absolute targets, as real images have). */
const baseLayer: FixtureEntry[] = [
  { name: 'bin/', type: 'directory' },
  { name: 'bin/busybox', content: BUSYBOX, mode: 0o755 },
  ...['sh', 'cat', 'ls', 'id', 'pwd', 'stat', 'readlink', 'test', 'echo'].map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, linkname: '/bin/busybox' })),
  { name: 'etc/', type: 'directory' },
  { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' },
  { name: 'etc/group', content: 'root:x:0:\napp:x:1000:\n' },
  { name: 'etc/old.conf', content: 'from layer 1\n' },
  { name: 'usr/', type: 'directory' },
  { name: 'usr/lib/', type: 'directory' },
  { name: 'usr/lib/os-release', content: 'ID=test\n' },
  { name: 'etc/os-release', type: 'symlink', linkname: '../usr/lib/os-release' },
  { name: 'opt/', type: 'directory' },
  { name: 'opt/cache/', type: 'directory' },
  { name: 'opt/cache/stale', content: 'stale\n' },
  { name: 'usr/bin/', type: 'directory' },
  { name: 'usr/bin/sudo', content: 'not really\n', mode: 0o4755 },
  { name: 'home/app/', type: 'directory', uid: 1000, gid: 1000, mode: 0o750 },
  { name: 'home/app/data', content: 'mine\n', uid: 1000, gid: 1000, mode: 0o600 },
  { name: 'home/app/data-link', type: 'link', linkname: 'home/app/data' },
];
const upperLayer: FixtureEntry[] = [
  { name: 'etc/.wh.old.conf', content: '' },
  { name: 'opt/cache/', type: 'directory' },
  { name: 'opt/cache/.wh..wh..opq', content: '' },
  { name: 'opt/cache/fresh', content: 'fresh\n' },
  { name: 'app/', type: 'directory' },
  { name: 'app/run.sh', content: '#!/bin/sh\necho app\n', mode: 0o755 },
];
const config = { Env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'APP_MODE=test'], WorkingDir: '/app', User: 'app', Entrypoint: ['/app/run.sh'], Cmd: ['--serve'] };

test('an OCI image layout imports with whiteouts honoured and its config kept, and runs as a sandbox', async (t) => {
  const dir = tmpTemplates(t, 'import-oci');
  const info = await importTemplate(dir, 'img', Readable.from([await ociImage([baseLayer, upperLayer], config)]), RELATIVIZE);
  assert.equal(info.layers, 2);
  assert.match(info.digest ?? '', /^sha256:[a-f0-9]{64}$/);
  const tpl = new TemplateStore(dir).require('img');
  assert.deepEqual(tpl.env, ['PATH=/usr/local/bin:/usr/bin:/bin', 'LANG=C.UTF-8', 'HOME=/root', 'APP_MODE=test']);
  assert.equal(tpl.workdir, '/app');
  assert.equal(tpl.user, 'app');
  assert.deepEqual(tpl.entrypoint, ['/app/run.sh']);
  assert.deepEqual(tpl.cmd, ['--serve']);

  const flat = tpl.layers[1]!;
  assert.equal(statSync(join(flat, 'usr/bin/sudo')).mode & 0o7777, 0o4755, 'setuid kept');
  assert.equal(statSync(join(flat, 'home/app/data')).uid, SANDBOX_ID_BASE + 1000, 'owners shifted into the sandbox range');
  assert.equal(statSync(join(flat, 'home/app')).mode & 0o7777, 0o750);
  assert.equal(statSync(join(flat, 'home/app/data-link')).ino, statSync(join(flat, 'home/app/data')).ino, 'hard link kept');
  assert.equal(readlinkSync(join(flat, 'bin/sh')), 'busybox', 'absolute in-image symlinks are stored as the equivalent relative link');
  assert.equal(lstatSync(join(flat, 'bin/sh')).uid, SANDBOX_ID_BASE);
  assert.equal(statSync(join(flat, 'app/run.sh')).mtime.toISOString(), '2024-01-02T03:04:05.000Z', 'mtimes kept');

  const engine = await engineOn(t, dir, 'import-oci');
  const s = await engine.createSandbox(ADMIN, { template: 'img', timeoutSeconds: 60 });
  const r = await engine.exec(ADMIN, s.id, { cmd: ['/bin/sh', '-c', 'pwd; echo $APP_MODE; ls /opt/cache; test -e /etc/old.conf && echo OLD; cat /etc/os-release; cat /etc/hostname; stat -c "%u %a" /home/app/data'] });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, '/app\ntest\nfresh\nID=test\nairlock\n1000 600\n');
});

test('a docker save archive (plain tar layers, <id>/layer.tar) imports the same content', async (t) => {
  const dir = tmpTemplates(t, 'import-docker');
  const tar = `${dir}-image.tar`;
  t.after(() => rmSync(tar, { force: true }));
  writeFileSync(tar, await dockerSaveImage([baseLayer, upperLayer], config));
  const info = await importTemplate(dir, 'img', tar, RELATIVIZE);
  const oci = await importTemplate(dir, 'img-oci', Readable.from([await ociImage([baseLayer, upperLayer], config)]), RELATIVIZE);
  const store = new TemplateStore(dir);
  // Same layers' content, same flattened layer: stored once.
  assert.equal(store.manifest('img')!.layers![1], store.manifest('img-oci')!.layers![1]);
  assert.equal(info.digest, oci.digest, 'same content and config, same digest');
  // A gzip-compressed outer archive works too.
  const gz = await importTemplate(dir, 'img-gz', Readable.from([gzipSync(await dockerSaveImage([baseLayer, upperLayer], config))]), RELATIVIZE);
  assert.equal(gz.digest, info.digest);
});

/** Each malicious or broken image, and the error it must produce. */
// The deeper checks are exercised with absolute links allowed (relativized), so each variant
// reaches the rule it is about; the default policy refuses any absolute symlink outright.
const RELATIVIZE = { absoluteSymlinks: 'relativize' as const };
const MALICIOUS: Array<[string, () => Promise<Buffer>, RegExp, { absoluteSymlinks?: 'reject' | 'relativize' }?]> = [
  ['absolute symlink (default policy)', () => ociImage([[{ name: 'evil', type: 'symlink', linkname: '/etc/shadow' }]]), /absolute symlink/, {}],
  ['path traversal (..)', () => ociImage([[{ name: '../../escaped', content: 'x' }]]), /path traversal/],
  ['path traversal in a later layer', () => ociImage([baseLayer, [{ name: 'etc/../../escaped', content: 'x' }]]), /path traversal/],
  ['absolute entry name', () => ociImage([[{ name: '/etc/cron.d/evil', content: 'x' }]]), /absolute path/],
  ['absolute symlink escaping the root', () => ociImage([[{ name: 'evil', type: 'symlink', linkname: '/../../../etc/shadow' }]]), /symlink points outside the image/],
  ['relative symlink escaping the root', () => ociImage([[{ name: 'a/evil', type: 'symlink', linkname: '../../etc/shadow' }]]), /symlink points outside the image/],
  ['write through a symlink to the host', () => ociImage([[{ name: 'etc', type: 'symlink', linkname: '/etc' }], [{ name: 'etc/cron.d/evil', content: 'x' }]]), /goes through the symbolic link/],
  ['whiteout through a symlink', () => ociImage([[{ name: 'd', type: 'symlink', linkname: '/etc' }], [{ name: 'd/.wh.passwd', content: '' }]]), /goes through the symbolic link/],
  ['hard link to an absolute path', () => ociImage([[{ name: 'shadow', type: 'link', linkname: '/etc/shadow' }]]), /hard link to an absolute path/],
  ['hard link escaping', () => ociImage([[{ name: 'shadow', type: 'link', linkname: '../../etc/shadow' }]]), /hard link outside the image/],
  ['hard link through a symlink', () => ociImage([[{ name: 'e', type: 'symlink', linkname: '/etc' }, { name: 'shadow', type: 'link', linkname: 'e/shadow' }]]), /goes through the symbolic link/],
  ['character device', () => ociImage([[{ name: 'dev/mem', type: 'character-device', devmajor: 1, devminor: 1 }]]), /device node/],
  ['block device', () => ociImage([[{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 }]]), /device node/],
  ['char device 0:0 (a fake whiteout)', () => ociImage([[{ name: 'etc/passwd', type: 'character-device', devmajor: 0, devminor: 0 }]]), /device node/],
  ['fifo', () => ociImage([[{ name: 'fifo', type: 'fifo' }]]), /FIFO/],
  ['owner outside the sandbox range', () => ociImage([[{ name: 'f', content: 'x', uid: 70000 }]]), /outside the sandbox id range/],
  ['malformed whiteout', () => ociImage([[{ name: 'etc/', type: 'directory' }], [{ name: 'etc/.wh...', content: '' }]]), /malformed whiteout/],
  ['traversal in the outer archive', () => tarBuffer([{ name: '../index.json', content: '{}' }]), /path traversal in the image tarball/],
  ['device in the outer archive', () => tarBuffer([{ name: 'null', type: 'character-device', devmajor: 1, devminor: 3 }]), /device node in the image tarball/],
  ['not an image', () => tarBuffer([{ name: 'hello.txt', content: 'hi' }]), /neither an OCI image layout/],
  ['garbage instead of a tar', async () => Buffer.from('this is not a tar file at all, just some text '.repeat(40)), /malformed tarball|neither an OCI/],
  ['truncated gzip layer', async () => {
    const good = gzipSync(await tarBuffer([{ name: 'f', content: 'x'.repeat(10_000) }]));
    return dockerSaveLike(good.subarray(0, good.length - 20));
  }, /malformed tarball/],
  ['blob that does not match its digest', async () => {
    const img = await ociImage([[{ name: 'f', content: 'x' }]]);
    return tamperFirstLayerBlob(img);
  }, /does not match its digest|malformed tarball/],
  ['zstd layer', async () => dockerSaveLike(Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(64)])), /zstd/],
  ['two images in one archive', async () => tarBuffer([{ name: 'manifest.json', content: JSON.stringify([{ Config: 'a', Layers: [] }, { Config: 'b', Layers: [] }]) }]), /holds 2 images/],
];

/** A docker save archive whose one layer is exactly `blob` (any bytes). */
async function dockerSaveLike(blob: Buffer): Promise<Buffer> {
  return tarBuffer([
    { name: 'l/layer.tar', content: blob },
    { name: 'c.json', content: JSON.stringify({ config: {}, rootfs: { diff_ids: [] } }) },
    { name: 'manifest.json', content: JSON.stringify([{ Config: 'c.json', Layers: ['l/layer.tar'] }]) },
  ]);
}

/** Flips a byte inside the OCI archive's first layer blob, keeping the tar valid. */
async function tamperFirstLayerBlob(img: Buffer): Promise<Buffer> {
  const tarStream = await import('tar-stream');
  const extract = tarStream.extract();
  const entries: Array<{ name: string; content: Buffer }> = [];
  const done = (async () => {
    for await (const e of extract) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(Buffer.from(c as Uint8Array));
      if (e.header.type === 'file') entries.push({ name: e.header.name, content: Buffer.concat(chunks) });
    }
  })();
  extract.end(img);
  await done;
  const layer = entries.find((e) => e.name.startsWith('blobs/') && e.content[0] === 0x1f)!;
  layer.content = Buffer.from(layer.content);
  const at = layer.content.length - 5;
  layer.content[at] = (layer.content[at] ?? 0) ^ 0xff;
  return tarBuffer(entries);
}

test('malicious and malformed images are refused with a clear error and leave nothing behind', async (t) => {
  const dir = tmpTemplates(t, 'import-evil');
  // A store with something in it, so "nothing left" is checked against a real listing.
  await buildTemplate(dir, 'tiny');
  await importTemplate(dir, 'good', Readable.from([await ociImage([baseLayer, upperLayer], config)]), RELATIVIZE);
  const before = listTree(dir);
  for (const [what, make, message, options = RELATIVIZE] of MALICIOUS) {
    let caught: unknown = null;
    try {
      await importTemplate(dir, 'evil', Readable.from([await make()]), options);
    } catch (e) {
      caught = e;
    }
    assert.ok(caught, `${what}: accepted`);
    const err = caught as { code?: string; message: string };
    assert.equal(err.code, 'bad_request', `${what}: ${err.code}: ${err.message}`);
    assert.match(err.message, /^image rejected: /, what);
    assert.match(err.message, message, what);
    assert.deepEqual(listTree(dir), before, `${what}: left something behind`);
  }
  assert.equal(new TemplateStore(dir).has('evil'), false);
  // A missing file is the caller's error too.
  await assert.rejects(importTemplate(dir, 'evil', join(dir, 'no-such.tar')), /no such file/);
  assert.deepEqual(listTree(dir), before);
});

test('decompression bombs and entry floods stop at the limits, leaving nothing behind', async (t) => {
  const dir = tmpTemplates(t, 'import-bomb');
  await buildTemplate(dir, 'tiny');
  const before = listTree(dir);
  // 256 MiB of zeros gzip to about 250 KiB; the limit here is 32 MiB.
  const zeros = Buffer.alloc(256 * 1024 * 1024);
  const bomb = await ociImage([[{ name: 'zeros', content: zeros }]]);
  assert.ok(bomb.length < 2 * 1024 * 1024, `bomb is ${bomb.length} bytes`);
  await assert.rejects(
    importTemplate(dir, 'bomb', Readable.from([bomb]), { limits: { maxUnpackedBytes: 32 * 1024 * 1024 } }),
    (e: unknown) => (e as { code?: string }).code === 'too_large' && /unpack to more than/.test((e as Error).message),
  );
  assert.deepEqual(listTree(dir), before);
  // The default limit (8 GiB) is what a daemon uses; a header claiming more than it is caught as the bytes come.
  const many = await ociImage([Array.from({ length: 300 }, (_, i) => ({ name: `f${i}`, content: '' }))]);
  await assert.rejects(importTemplate(dir, 'many', Readable.from([many]), { limits: { maxEntries: 100 } }), /more than 100 entries/);
  await assert.rejects(importTemplate(dir, 'big', Readable.from([bomb]), { limits: { maxImageBytes: 64 * 1024 } }), /larger than 65536 bytes/);
  assert.deepEqual(listTree(dir), before);
});
