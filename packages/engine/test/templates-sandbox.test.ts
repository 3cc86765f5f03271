/**
 * Templates under real sandboxes: layers stacked by overlayfs (whiteouts and opaque
 * directories of an upper layer hide lower files), env and workdir applied, the template
 * untouched by anything a sandbox does, and ls / rm with the in-use count.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { buildTemplate } from '../src/template/build-template.js';
import { TemplateStore } from '../src/template/template-store.js';
import { ADMIN, engineOn, errorCode, listTree, tmpTemplates, treeSnapshot } from './templates-support.js';

const sh = (script: string) => ({ cmd: ['/bin/sh', '-c', script] });

test('an upper layer that deletes or replaces lower files hides them in the sandbox', async (t) => {
  const dir = tmpTemplates(t, 'whiteout');
  await buildTemplate(dir, 'lower', { recipe: { bootstrap: 'busybox', run: ['mkdir -p /data/keep && echo old > /data/old && echo a > /data/keep/a && echo secret > /etc/secret'] } });
  await buildTemplate(dir, 'upper', {
    recipe: {
      bootstrap: 'busybox',
      run: [
        'mkdir -p /data/keep && echo old > /data/old && echo a > /data/keep/a && echo secret > /etc/secret',
        'rm /etc/secret /bin/vi && rm -rf /data && mkdir /data && echo new > /data/new',
      ],
    },
  });
  const tpl = new TemplateStore(dir).require('upper');
  // The builder recorded the deletions as overlayfs whiteouts (char 0:0) in the upper layer.
  const secret = lstatSync(join(tpl.layers[1]!, 'etc/secret'));
  assert.ok(secret.isCharacterDevice() && secret.rdev === 0, 'whiteout for /etc/secret');
  assert.ok(lstatSync(join(tpl.layers[2]!, 'etc/secret')).isFile(), 'the lower layer still has it');

  const engine = await engineOn(t, dir, 'whiteout');
  const s = await engine.createSandbox(ADMIN, { template: 'upper', timeoutSeconds: 60 });
  const r = await engine.exec(ADMIN, s.id, sh('ls /data; test -e /etc/secret && echo SECRET; test -e /bin/vi && echo VI; test -e /bin/ls && echo ls-stays; ls /dev | grep -c . >/dev/null; echo done'));
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, 'new\nls-stays\ndone\n');
  const lower = await engine.createSandbox(ADMIN, { template: 'lower', timeoutSeconds: 60 });
  const r2 = await engine.exec(ADMIN, lower.id, sh('cat /etc/secret; ls /data'));
  assert.equal(r2.stdout, 'secret\nkeep\nold\n', 'the shared lower layers are intact for other templates');
});

test('the template env and workdir apply to every sandbox process; a caller may still override', async (t) => {
  const dir = tmpTemplates(t, 'env');
  await buildTemplate(dir, 'app', { recipe: { bootstrap: 'busybox', env: { GREETING: 'hello world', PATH: '/opt/bin:/bin:/usr/bin' }, workdir: '/srv/app' } });
  const engine = await engineOn(t, dir, 'env');
  const s = await engine.createSandbox(ADMIN, { template: 'app', timeoutSeconds: 60 });
  assert.equal(s.workdir, '/srv/app');
  const r = await engine.exec(ADMIN, s.id, sh('pwd; echo "$GREETING"; echo "$PATH"; test -d /work && echo has-work'));
  assert.equal(r.stdout, '/srv/app\nhello world\n/opt/bin:/bin:/usr/bin\nhas-work\n');
  const own = await engine.createSandbox(ADMIN, { template: 'app', timeoutSeconds: 60, workdir: '/tmp', env: { GREETING: 'mine' } });
  const r2 = await engine.exec(ADMIN, own.id, sh('pwd; echo "$GREETING"'));
  assert.equal(r2.stdout, '/tmp\nmine\n');
});

test('a template is unchanged after a sandbox writes, deletes, chmods and chowns everywhere in /', async (t) => {
  const dir = tmpTemplates(t, 'immutable');
  await buildTemplate(dir, 'victim', {
    recipe: { bootstrap: 'busybox', run: ['mkdir -p /opt/data && echo keep > /opt/data/file && chmod 4755 /opt/data/file && ln -s /opt/data/file /opt/link'] },
  });
  const layers = new TemplateStore(dir).require('victim').layers;
  const before = layers.map(treeSnapshot);
  const storeBefore = listTree(dir);

  const engine = await engineOn(t, dir, 'immutable');
  const s = await engine.createSandbox(ADMIN, { template: 'victim', timeoutSeconds: 120, resources: { diskMiB: 256 } });
  const r = await engine.exec(ADMIN, s.id, sh([
    // Everything on the root file system (not /proc, /sys, /dev, /run/airlock: other mounts).
    'find / -xdev -type f -exec sh -c \'for f; do echo pwned >> "$f"; done\' _ {} + 2>/dev/null',
    'find / -xdev -exec chmod 0777 {} + 2>/dev/null',
    'find / -xdev -exec chown -h 1234:1234 {} + 2>/dev/null',
    'find / -xdev -exec touch -h -d "2001-01-01 00:00" {} + 2>/dev/null',
    'echo new > /new-file; mkdir -p /etc/new-dir; ln -sf /etc/passwd /opt/link2',
    'mv /opt/data /opt/moved 2>/dev/null; rm -rf /opt /etc /work /root /home /tmp 2>/dev/null',
    'find / -xdev -mindepth 1 -maxdepth 1 -not -name bin -exec rm -rf {} + 2>/dev/null',
    'echo survived',
  ].join('; ')));
  assert.match(r.stdout, /survived/, r.stderr);
  // The sandbox saw its own changes.
  const seen = await engine.exec(ADMIN, s.id, sh('ls -A / | tr "\\n" " "'));
  assert.doesNotMatch(seen.stdout, /\betc\b/);
  await engine.writeFile(ADMIN, s.id, '/bin/written-by-api', Buffer.from('x'));
  await engine.killSandbox(ADMIN, s.id);

  assert.deepEqual(layers.map(treeSnapshot), before, 'every layer is byte-for-byte, mode, owner and time unchanged');
  assert.deepEqual(listTree(dir), storeBefore, 'nothing added to or removed from the store');
  const fresh = await engine.createSandbox(ADMIN, { template: 'victim', timeoutSeconds: 60 });
  const again = await engine.exec(ADMIN, fresh.id, sh('cat /opt/data/file; stat -c %a /opt/data/file; readlink /opt/link; cat /etc/hostname'));
  assert.equal(again.stdout, 'keep\n4755\n/opt/data/file\nairlock\n');
});

test('ls counts live sandboxes per template; rm refuses while one runs, then removes it and its unused layers', async (t) => {
  const dir = tmpTemplates(t, 'rm');
  await buildTemplate(dir, 'tiny');
  await buildTemplate(dir, 'extra', { recipe: { bootstrap: 'busybox', run: ['echo extra > /extra'] } });
  const engine = await engineOn(t, dir, 'rm');
  const byName = () => Object.fromEntries(engine.listTemplates().map((x) => [x.name, x]));
  assert.equal(byName()['extra']!.inUse, 0);
  assert.equal(byName()['extra']!.layers, 3);
  assert.match(byName()['extra']!.digest ?? '', /^sha256:/);

  const a = await engine.createSandbox(ADMIN, { template: 'extra', timeoutSeconds: 60 });
  await engine.createSandbox(ADMIN, { template: 'extra', timeoutSeconds: 60 });
  await engine.createSandbox(ADMIN, { template: 'tiny', timeoutSeconds: 60 });
  assert.equal(byName()['extra']!.inUse, 2);
  assert.equal(byName()['tiny']!.inUse, 1);
  await assert.rejects(engine.removeTemplate('extra'), (e: unknown) => errorCode('conflict')(e) && /used by 2 live sandboxes/.test((e as Error).message));
  await engine.killSandbox(ADMIN, a.id);
  assert.equal(byName()['extra']!.inUse, 1);
  for (const s of engine.listSandboxes(ADMIN)) if (s.template === 'extra' && s.state === 'running') await engine.killSandbox(ADMIN, s.id);

  const layersBefore = readdirSync(join(dir, '_layers')).length;
  await engine.removeTemplate('extra');
  assert.equal(byName()['extra'], undefined);
  // Its run and finalize layers go; the busybox layer stays (tiny uses it).
  assert.equal(readdirSync(join(dir, '_layers')).length, layersBefore - 2);
  assert.deepEqual(readdirSync(dir).sort(), ['_layers', '_logs', '_tmp', 'tiny']);
  await assert.rejects(engine.removeTemplate('extra'), errorCode('not_found'));
  await assert.rejects(engine.removeTemplate('../x'), errorCode('bad_request'));
});

test('rebuilding a template under a running sandbox keeps the sandbox\'s layers until it ends', async (t) => {
  const dir = tmpTemplates(t, 'replace');
  await buildTemplate(dir, 'app', { recipe: { bootstrap: 'busybox', run: ['echo v1 > /version'] } });
  const engine = await engineOn(t, dir, 'replace');
  const old = await engine.createSandbox(ADMIN, { template: 'app', timeoutSeconds: 60 });
  const oldLayers = new Set(readdirSync(join(dir, '_layers')));
  await engine.buildTemplate('app', { recipe: { bootstrap: 'busybox', run: ['echo v2 > /version'] } });
  // The old run and finalize layers are mounted by the running sandbox: garbage collection keeps them.
  for (const l of oldLayers) assert.ok(readdirSync(join(dir, '_layers')).includes(l), `layer ${l.slice(0, 12)} kept while mounted`);
  assert.equal((await engine.exec(ADMIN, old.id, sh('cat /version'))).stdout, 'v1\n');
  const fresh = await engine.createSandbox(ADMIN, { template: 'app', timeoutSeconds: 60 });
  assert.equal((await engine.exec(ADMIN, fresh.id, sh('cat /version'))).stdout, 'v2\n');
  await engine.killSandbox(ADMIN, old.id);
  // The next collection (any build, import or rm) drops them.
  await engine.buildTemplate('tiny');
  const now = readdirSync(join(dir, '_layers'));
  assert.equal(now.filter((l) => oldLayers.has(l)).length, 1, 'only the shared busybox layer of the old version remains');
});
