/** Named volumes against the real kernel: quota, attach rules, tenancy, life beyond sandboxes and engines. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Engine } from '../src/engine.js';
import type { AirlockError } from '../src/errors.js';
import type { Caller } from '../src/engine-api.js';
import { closeAndClean, hostLeftovers, loopDevicesUnder, openTestEngine, TEMPLATES_DIR } from './support.js';
import { mountsUnder } from '../src/util/mounts.js';

const admin: Caller = { tenant: null };
const status = (code: number, re?: RegExp) => (e: AirlockError) => e.status === code && (!re || re.test(e.message));

describe('volumes', () => {
  let engine: Engine;
  let dataDir: string;
  const ids: string[] = [];

  before(async () => {
    ({ engine, dataDir } = await openTestEngine('volumes'));
  });
  after(async () => {
    for (const v of engine.listVolumes(admin)) {
      for (const a of v.attachments) await engine.killSandbox(admin, a.sandbox).catch(() => {});
    }
    await closeAndClean(engine, dataDir, ids);
  });

  async function sandbox(volumes: Array<{ name: string; target: string; readOnly?: boolean }>, caller: Caller = admin) {
    const s = await engine.createSandbox(caller, { template: 'tiny', timeoutSeconds: 120, volumes });
    ids.push(s.id);
    return s;
  }
  const sh = (id: string, script: string, caller: Caller = admin) => engine.exec(caller, id, { cmd: ['sh', '-c', script] });

  test('create, list, get; names are validated and unique', async () => {
    const v = await engine.createVolume(admin, { name: 'data', sizeMiB: 32 });
    assert.deepEqual({ ...v, createdAt: '' }, { name: 'data', tenant: 'default', sizeMiB: 32, usedMiB: 0, createdAt: '', attachments: [] });
    assert.deepEqual(engine.listVolumes(admin).map((x) => x.name), ['data']);
    assert.equal(engine.getVolume(admin, 'data').sizeMiB, 32);
    await assert.rejects(engine.createVolume(admin, { name: 'data', sizeMiB: 16 }), status(409, /already exists/));
    await assert.rejects(engine.createVolume(admin, { name: 'Bad/Name', sizeMiB: 16 }), status(400));
    await assert.rejects(engine.createVolume(admin, { name: 'tiny', sizeMiB: 1 }), status(400));
    assert.throws(() => engine.getVolume(admin, 'nope'), status(404));
    const events = engine.listEvents(admin, { type: 'volume.created' });
    assert.deepEqual(events.map((e) => e.data), [{ name: 'data', sizeMiB: 32 }]);
  });

  test('one read-write user, then many readers that see its data; conflicts answer 409 naming the holder', async () => {
    const writer = await sandbox([{ name: 'data', target: '/data', readOnly: false }]);
    assert.deepEqual(writer.volumes, [{ name: 'data', target: '/data', readOnly: false }]);
    assert.equal((await sh(writer.id, 'echo hello > /data/msg && cat /data/msg')).stdout, 'hello\n');
    // While it holds the volume read-write, nobody else may attach it, not even read-only.
    await assert.rejects(sandbox([{ name: 'data', target: '/data' }]), status(409, new RegExp(`read-write to sandbox ${writer.id}`)));
    assert.deepEqual(engine.getVolume(admin, 'data').attachments, [{ sandbox: writer.id, target: '/data', readOnly: false }]);
    await engine.killSandbox(admin, writer.id);

    const r1 = await sandbox([{ name: 'data', target: '/in' }]);
    const r2 = await sandbox([{ name: 'data', target: '/mnt/v', readOnly: true }]);
    assert.equal((await sh(r1.id, 'cat /in/msg')).stdout, 'hello\n');
    assert.equal((await sh(r2.id, 'cat /mnt/v/msg')).stdout, 'hello\n');
    const w = await sh(r2.id, 'echo x > /mnt/v/other; mount -o remount,rw /mnt/v; echo x > /mnt/v/other && echo WROTE');
    assert.doesNotMatch(w.stdout, /WROTE/);
    assert.match(w.stderr, /Read-only file system/);
    await assert.rejects(sandbox([{ name: 'data', target: '/data', readOnly: false }]), status(409, new RegExp(`read-only to sandbox ${r1.id}, ${r2.id}`)));
    await assert.rejects(engine.deleteVolume(admin, 'data'), status(409, new RegExp(r1.id)));
    await engine.killSandbox(admin, r1.id);
    await engine.killSandbox(admin, r2.id);
    // The volume itself stays mounted (checked in the last test); the sandboxes left nothing.
    assert.deepEqual(hostLeftovers(dataDir, [writer.id, r1.id, r2.id]).filter((l) => !l.includes('/storage/volumes/')), []);
  });

  test('bad attachments: unknown volume 404, twice in one sandbox 400, reserved target 400', async () => {
    await assert.rejects(sandbox([{ name: 'ghost', target: '/g' }]), status(404));
    await assert.rejects(sandbox([{ name: 'data', target: '/a' }, { name: 'data', target: '/b' }]), status(400, /twice/));
    await assert.rejects(sandbox([{ name: 'data', target: '/proc/x' }]), status(400, /reserved/));
    await assert.rejects(sandbox([{ name: 'data', target: 'relative' }]), status(400));
  });

  test('the volume quota is a hard limit (ENOSPC inside)', async () => {
    await engine.createVolume(admin, { name: 'small', sizeMiB: 16 });
    const s = await sandbox([{ name: 'small', target: '/v', readOnly: false }]);
    const r = await sh(s.id, 'dd if=/dev/zero of=/v/big bs=1M count=64; df -k /v | tail -1');
    assert.match(r.stderr, /No space left on device/);
    assert.ok((engine.getVolume(admin, 'small').usedMiB ?? 0) >= 8); // a 16 MiB ext4 keeps ~5 MiB for its journal and inodes
    assert.equal((await sh(s.id, 'rm /v/big && echo ok')).stdout, 'ok\n');
    await engine.killSandbox(admin, s.id);
    await engine.deleteVolume(admin, 'small');
    assert.throws(() => engine.getVolume(admin, 'small'), status(404));
    assert.deepEqual(engine.listEvents(admin, { type: 'volume.deleted' }).map((e) => e.data.name), ['small']);
  });

  test('volumes are per tenant: another tenant\'s name is not found, and may be reused', async () => {
    const a: Caller = { tenant: 'team-a' };
    const b: Caller = { tenant: 'team-b' };
    await engine.createVolume(a, { name: 'shared', sizeMiB: 16 });
    assert.throws(() => engine.getVolume(b, 'shared'), status(404));
    await assert.rejects(engine.deleteVolume(b, 'shared'), status(404));
    await assert.rejects(sandbox([{ name: 'shared', target: '/s' }], b), status(404));
    await engine.createVolume(b, { name: 'shared', sizeMiB: 16 });
    const sa = await sandbox([{ name: 'shared', target: '/s', readOnly: false }], a);
    const sb = await sandbox([{ name: 'shared', target: '/s', readOnly: false }], b); // b's own: no conflict
    await sh(sa.id, 'echo from-a > /s/who', a);
    assert.equal((await sh(sb.id, 'cat /s/who 2>&1 || echo none', b)).stdout.trim().endsWith('none'), true);
    assert.deepEqual(engine.listVolumes(b).map((v) => v.tenant), ['team-b']);
    assert.ok(engine.listVolumes(admin).length >= 3);
    await engine.killSandbox(a, sa.id);
    await engine.killSandbox(b, sb.id);
    await engine.deleteVolume(a, 'shared');
    await engine.deleteVolume(b, 'shared');
  });

  test('a volume survives its sandbox, an engine restart and being detached (as after a reboot)', async () => {
    const s = await sandbox([{ name: 'data', target: '/data', readOnly: false }]);
    await sh(s.id, 'echo persisted > /data/keep');
    await engine.killSandbox(admin, s.id);
    await engine.shutdownStorage(); // unmounted: what a reboot leaves
    assert.deepEqual(mountsUnder(join(dataDir, 'storage')), []);
    assert.deepEqual(loopDevicesUnder(dataDir), []);
    await engine.close();

    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
    assert.equal(mountsUnder(join(dataDir, 'storage')).length, 1, 'the volume is attached again at open');
    const again = await sandbox([{ name: 'data', target: '/data' }]);
    assert.equal((await sh(again.id, 'cat /data/keep')).stdout, 'persisted\n');
    await engine.killSandbox(admin, again.id);
  });

  test('deleting removes image, mount and loop device; no leftovers once storage is shut down', async () => {
    await engine.deleteVolume(admin, 'data');
    assert.deepEqual(engine.listVolumes(admin), []);
    assert.deepEqual(mountsUnder(join(dataDir, 'storage')), []);
    assert.deepEqual(loopDevicesUnder(dataDir), []);
    assert.equal(existsSync(join(dataDir, 'storage', 'volumes')), true);
    await engine.shutdownStorage();
    assert.deepEqual(hostLeftovers(dataDir, ids), []);
  });
});
