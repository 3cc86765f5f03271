/**
 * The writable layer's disk quota, against the real kernel: a sandbox's layer is an ext4 of
 * exactly `diskMiB` on a loop device. Also host mounts (read-only holds even for root) and the
 * mount policy.
 */
import assert from 'node:assert/strict';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { Engine } from '../src/engine.js';
import { SANDBOX_ID_BASE } from '../src/constants.js';
import type { AirlockError } from '../src/errors.js';
import { assertHostClean, closeAndClean, loopDevicesUnder, openTestEngine, removeDataDir, tempDataDir, TEMPLATES_DIR } from './support.js';

const admin = { tenant: null };
const MiB = 1024 * 1024;

function hostFreeBytes(): number {
  const st = statfsSync('/');
  return st.bavail * st.bsize;
}

describe('disk quota of the writable layer', () => {
  let engine: Engine;
  let dataDir: string;
  const ids: string[] = [];

  before(async () => {
    ({ engine, dataDir } = await openTestEngine('storage'));
  });
  after(async () => {
    await closeAndClean(engine, dataDir, ids);
  });

  /** A sandbox killed when the test ends, even when an assertion failed (so one failure does not cascade). */
  async function sandbox(t: TestContext, resources: { diskMiB?: number; memoryMiB?: number } = {}) {
    const s = await engine.createSandbox(admin, { template: 'tiny', timeoutSeconds: 120, resources });
    ids.push(s.id);
    t.after(() => engine.killSandbox(admin, s.id).then(() => undefined, () => undefined));
    return s;
  }
  const sh = (id: string, script: string) => engine.exec(admin, id, { cmd: ['sh', '-c', script] });
  const diskEvents = (id: string) => engine.listEvents(admin, { sandbox: id, type: 'limit.disk' });

  test('dd past the quota gets ENOSPC; the host loses at most the quota; sandbox and engine keep working', async (t) => {
    const s = await sandbox(t, { diskMiB: 64 });
    const freeBefore = hostFreeBytes();
    const dd = await sh(s.id, 'dd if=/dev/zero of=/work/big bs=1M count=200; echo rc=$?');
    assert.match(dd.stderr, /No space left on device/);
    assert.doesNotMatch(dd.stdout, /rc=0/);
    const used = freeBefore - hostFreeBytes();
    // (Other writers on the host during the dd would show up here too: the suite runs files one at a time.)
    assert.ok(used <= 64 * MiB + 16 * MiB, `host disk went down by ${Math.round(used / MiB)} MiB for a 64 MiB quota`);
    // What the layer's image holds on the host disk: the quota at most.
    const image = statSync(join(dataDir, 'sandboxes', s.id, 'layer.img'));
    assert.ok(image.blocks * 512 <= 64 * MiB, `layer image occupies ${image.blocks * 512} bytes`);

    // One limit.disk per episode: a second exec while still full adds none.
    const first = diskEvents(s.id);
    assert.equal(first.length, 1);
    assert.equal(first[0]!.data.limitMiB, 64);
    assert.ok((first[0]!.data.usedMiB as number) >= 56, JSON.stringify(first[0]!.data));
    assert.equal(typeof first[0]!.data.inodesUsed, 'number');
    const still = await sh(s.id, 'echo alive');
    assert.equal(still.stdout, 'alive\n');
    assert.equal(diskEvents(s.id).length, 1);

    // The files API reports the full disk too (413, "disk quota reached").
    await assert.rejects(engine.writeFile(admin, s.id, '/work/more', Buffer.alloc(4 * MiB)), (e: AirlockError) => e.status === 413 && /no space/.test(e.message));

    // Freeing space ends the episode; the sandbox writes again.
    const again = await sh(s.id, 'rm /work/big && dd if=/dev/zero of=/work/small bs=1M count=8 2>/dev/null && echo ok');
    assert.equal(again.stdout, 'ok\n');
    const refill = await sh(s.id, 'dd if=/dev/zero of=/work/big bs=1M count=200 2>/dev/null; true');
    assert.equal(refill.exitCode, 0);
    assert.equal(diskEvents(s.id).length, 2, 'a new episode after the layer had room again');

    await engine.killSandbox(admin, s.id);
    assertHostClean(dataDir, [s.id]);
  });

  test('inode exhaustion is bounded', async (t) => {
    const s = await sandbox(t, { diskMiB: 16 });
    // A shell redirection makes an empty file without starting a process.
    const r = await sh(s.id, 'mkdir /work/many && cd /work/many && i=0; while printf "" > f$i; do i=$((i+1)); [ $i -ge 20000 ] && break; done; echo $i');
    const made = Number(r.stdout.trim());
    assert.ok(made > 3000 && made < 4096, `made ${made} files (bound: 4096 inodes for 16 MiB)`);
    assert.match(r.stderr, /No space left on device/);
    assert.equal((await sh(s.id, 'rm -rf /work/many && echo ok')).stdout, 'ok\n');
    assert.ok(diskEvents(s.id).length >= 1);
    await engine.killSandbox(admin, s.id);
    assertHostClean(dataDir, [s.id]);
  });

  test('disk costs no memory: 200 MiB written in a sandbox with 64 MiB of memory', async (t) => {
    const s = await sandbox(t, { memoryMiB: 64, diskMiB: 512 });
    const r = await sh(s.id, 'dd if=/dev/zero of=/work/f bs=1M count=200 2>/dev/null && sync && wc -c < /work/f');
    assert.equal(r.reason, 'exited', r.stderr);
    assert.equal(r.stdout.trim(), String(200 * MiB));
    assert.equal(engine.listEvents(admin, { sandbox: s.id, type: 'limit.oom' }).length, 0);
    await engine.killSandbox(admin, s.id);
    assertHostClean(dataDir, [s.id]);
  });

  test('killing a sandbox right after a big write discards the data instead of writing it out', async (t) => {
    const s = await sandbox(t, { diskMiB: 1024, memoryMiB: 1024 });
    const r = await sh(s.id, 'dd if=/dev/zero of=/work/f bs=1M count=300 2>/dev/null && echo ok');
    assert.equal(r.stdout, 'ok\n');
    const t0 = Date.now();
    await engine.killSandbox(admin, s.id);
    assert.ok(Date.now() - t0 < 2000, `kill took ${Date.now() - t0} ms`);
    assertHostClean(dataDir, [s.id]);
  });

  test('the layer is a loop device and a mount that leave with the sandbox', async (t) => {
    const s = await sandbox(t, { diskMiB: 32 });
    assert.equal(loopDevicesUnder(join(dataDir, 'sandboxes', s.id)).length, 1);
    const df = await sh(s.id, 'df -k / | tail -1');
    const totalKiB = Number(df.stdout.trim().split(/\s+/)[1]);
    assert.ok(totalKiB > 28 * 1024 && totalKiB <= 32 * 1024, df.stdout);
    await engine.killSandbox(admin, s.id);
    assert.deepEqual(loopDevicesUnder(dataDir), []);
    assertHostClean(dataDir, [s.id]);
  });
});

describe('storage capacity of a data dir', () => {
  test('sandboxes and volumes are admitted only while their quotas fit storageSizeGiB', async (t) => {
    const dataDir = tempDataDir('storage-cap');
    const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, storageSizeGiB: 0.125 }); // 128 MiB
    t.after(async () => { await closeAndClean(engine, dataDir, []); });
    const a = await engine.createSandbox(admin, { template: 'tiny', resources: { diskMiB: 64 } });
    await assert.rejects(engine.createSandbox(admin, { template: 'tiny', resources: { diskMiB: 100 } }),
      (e: AirlockError) => e.status === 429 && /storage/.test(e.message));
    await assert.rejects(engine.createVolume(admin, { name: 'big', sizeMiB: 100 }), (e: AirlockError) => e.status === 429);
    await engine.killSandbox(admin, a.id);
    const b = await engine.createSandbox(admin, { template: 'tiny', resources: { diskMiB: 100 } });
    await engine.killSandbox(admin, b.id);
    assertHostClean(dataDir, [a.id, b.id]);
  });
});

describe('host mounts', () => {
  let engine: Engine;
  let dataDir: string;
  let scratch: string;
  const ids: string[] = [];

  before(async () => {
    ({ engine, dataDir } = await openTestEngine('mounts'));
    scratch = mkdtempSync(join(tmpdir(), 'airlock-test-mounts-src-'));
    mkdirSync(join(scratch, 'ro'));
    writeFileSync(join(scratch, 'ro', 'in.txt'), 'input\n');
    mkdirSync(join(scratch, 'rw'));
    chownSync(join(scratch, 'rw'), SANDBOX_ID_BASE, SANDBOX_ID_BASE); // root inside the sandbox
  });
  after(async () => {
    await closeAndClean(engine, dataDir, ids);
    rmSync(scratch, { recursive: true, force: true });
  });

  test('a read-only mount cannot be written or remounted rw from inside, even by root; a rw one can', async () => {
    const s = await engine.createSandbox(admin, {
      template: 'tiny',
      mounts: [
        { source: join(scratch, 'ro'), target: '/in', readOnly: true },
        { source: join(scratch, 'rw'), target: '/out', readOnly: false },
      ],
    });
    ids.push(s.id);
    const sh = (script: string) => engine.exec(admin, s.id, { cmd: ['sh', '-c', script] });
    assert.equal((await sh('cat /in/in.txt')).stdout, 'input\n');
    const write = await sh('echo x > /in/new.txt');
    assert.notEqual(write.exitCode, 0);
    assert.match(write.stderr, /Read-only file system/);
    for (const attempt of [
      'mount -o remount,rw /in', 'mount -o remount,bind,rw /in', 'mount --bind /in /tmp && mount -o remount,rw /tmp',
      // A new user namespace would hand back CAP_SYS_ADMIN over a fresh mount namespace.
      'unshare -rm sh -c "mount -o remount,rw /in && echo x > /in/new.txt && echo WROTE"',
    ]) {
      const r = await sh(`${attempt}; echo x > /in/new.txt && echo WROTE`);
      assert.doesNotMatch(r.stdout, /WROTE/, attempt);
    }
    assert.equal(existsSync(join(scratch, 'ro', 'new.txt')), false);
    assert.equal(readFileSync(join(scratch, 'ro', 'in.txt'), 'utf8'), 'input\n');

    const rw = await sh('echo result > /out/r.txt && echo ok');
    assert.equal(rw.stdout, 'ok\n');
    assert.equal(readFileSync(join(scratch, 'rw', 'r.txt'), 'utf8'), 'result\n');
    assert.equal(statSync(join(scratch, 'rw', 'r.txt')).uid, SANDBOX_ID_BASE);
    await engine.killSandbox(admin, s.id);
    assertHostClean(dataDir, [s.id]);
  });

  test('Airlock\'s own directories can never be bound', async () => {
    for (const source of [dataDir, join(dataDir, 'sandboxes'), '/', TEMPLATES_DIR]) {
      await assert.rejects(engine.createSandbox(admin, { template: 'tiny', mounts: [{ source, target: '/x', readOnly: true }] }),
        (e: AirlockError) => e.status === 422 && e.code === 'policy_denied', source);
    }
  });
});

describe('mount policy', () => {
  test('prefixes on path-component boundaries, after links; rw forbidden; denials are 422 and audited', async (t) => {
    const scratch = mkdtempSync(join(tmpdir(), 'airlock-test-policy-src-'));
    for (const d of ['data', 'data/sub', 'database', 'elsewhere']) mkdirSync(join(scratch, d));
    symlinkSync(join(scratch, 'elsewhere'), join(scratch, 'data', 'link-out'));
    const dataDir = tempDataDir('policy');
    const engine = await Engine.open({
      dataDir, templatesDir: TEMPLATES_DIR,
      mountPolicy: { allowReadWrite: false, allowedHostPrefixes: [join(scratch, 'data')] },
    });
    t.after(async () => {
      await closeAndClean(engine, dataDir, []);
      rmSync(scratch, { recursive: true, force: true });
    });
    const create = (source: string, readOnly = true) =>
      engine.createSandbox(admin, { template: 'tiny', mounts: [{ source, target: '/in', readOnly }] });
    const denied = (rule: string) => (e: AirlockError) => {
      assert.equal(e.status, 422);
      assert.equal(e.code, 'policy_denied');
      assert.equal(e.field, 'mounts.0');
      assert.match(e.message, /mounts\.0/);
      const last = engine.listEvents(admin, { type: 'policy.denied' }).at(-1);
      assert.equal(last?.data.rule, rule);
      return true;
    };

    await assert.rejects(create(join(scratch, 'database')), denied('outside_allowed_prefixes'));
    await assert.rejects(create(join(scratch, 'elsewhere')), denied('outside_allowed_prefixes'));
    await assert.rejects(create(join(scratch, 'data', 'link-out')), denied('outside_allowed_prefixes'));
    await assert.rejects(create(join(scratch, 'data', 'sub'), false), denied('read_write_forbidden'));
    assert.equal(engine.listEvents(admin, { type: 'policy.denied' }).length, 4);

    const ok = await create(join(scratch, 'data', 'sub'));
    assert.deepEqual(ok.mounts, [{ source: join(scratch, 'data', 'sub'), target: '/in', readOnly: true }]);
    await engine.killSandbox(admin, ok.id);
    assertHostClean(dataDir, [ok.id]);
  });
});

describe('test support', () => {
  test('removeDataDir detaches the loop devices a crashed engine left', async () => {
    const dataDir = tempDataDir('storage-crash');
    const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
    await engine.createSandbox(admin, { template: 'tiny', resources: { diskMiB: 16 } });
    await engine.createVolume(admin, { name: 'left', sizeMiB: 16 });
    await engine.close(); // the sandbox keeps running, its layer and the volume stay mounted
    assert.equal(loopDevicesUnder(dataDir).length, 2);
    removeDataDir(dataDir);
    assert.deepEqual(loopDevicesUnder(dataDir), []);
    assert.equal(existsSync(dataDir), false);
  });
});
