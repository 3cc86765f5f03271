import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/engine.js';

/** Templates are built once per machine by the README's first command. */
export const TEMPLATES_DIR = process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';

export function tempDataDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `airlock-test-${tag}-`));
}

export async function openTestEngine(tag: string): Promise<{ engine: Engine; dataDir: string }> {
  const dataDir = tempDataDir(tag);
  const engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR });
  return { engine, dataDir };
}

/** Every host object a sandbox of this data dir could have left: mounts, runc state, cgroups, dirs. */
export function hostLeftovers(dataDir: string, ids: string[]): string[] {
  const left: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp && mp.startsWith(dataDir + '/')) left.push(`mount ${mp}`);
  }
  const runcRoot = join(dataDir, 'runc');
  if (existsSync(runcRoot)) {
    const out = execFileSync('runc', ['--root', runcRoot, 'list', '-q']).toString().trim();
    if (out) left.push(`runc ${out.replace(/\n/g, ' ')}`);
  }
  for (const id of ids) {
    for (const ctl of ['memory', 'pids', 'cpu', 'freezer', 'unified', '']) {
      const d = join('/sys/fs/cgroup', ctl, 'airlock', id);
      if (existsSync(d)) left.push(`cgroup ${d}`);
    }
    if (existsSync(join(dataDir, 'sandboxes', id))) left.push(`dir sandboxes/${id}`);
  }
  for (const { device, file } of loopDevicesUnder(dataDir)) left.push(`loop ${device} ${file}`);
  left.push(...networkLeftovers(dataDir, ids));
  return left;
}

/** Network objects of these sandboxes (namespace, veth, nftables chain) and leases of the data dir. */
export function networkLeftovers(dataDir: string, ids: string[]): string[] {
  const left: string[] = [];
  for (const id of ids) {
    if (existsSync(`/run/netns/airlock-${id}`)) left.push(`netns airlock-${id}`);
    if (existsSync(`/sys/class/net/alk${id}`)) left.push(`veth alk${id}`);
  }
  if (ids.length > 0) {
    let chains = '';
    try { chains = execFileSync('nft', ['list', 'chains', 'inet'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString(); } catch { /* no tables */ }
    for (const id of ids) if (chains.includes(`sbx_${id}`)) left.push(`nft chain sbx_${id}`);
  }
  let leases: string[] = [];
  try { leases = readdirSync('/run/airlock/net-leases'); } catch { /* none */ }
  for (const l of leases) {
    try {
      const [dir, id] = readFileSync(join('/run/airlock/net-leases', l), 'utf8').split('\n');
      if (dir === dataDir && ids.includes(id ?? '')) left.push(`lease ${l}`);
    } catch { /* released meanwhile */ }
  }
  return left;
}

/** Loop devices whose backing file lies under `dir` (sandbox layers, volumes), from sysfs. */
export function loopDevicesUnder(dir: string): Array<{ device: string; file: string }> {
  const found: Array<{ device: string; file: string }> = [];
  for (const name of readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n))) {
    let file: string;
    try {
      file = readFileSync(join('/sys/block', name, 'loop', 'backing_file'), 'utf8').trim();
    } catch {
      continue; // not bound
    }
    if (file.startsWith(dir + '/')) found.push({ device: `/dev/${name}`, file });
  }
  return found;
}

export function assertHostClean(dataDir: string, ids: string[]): void {
  assert.deepEqual(hostLeftovers(dataDir, ids), [], 'sandbox leftovers on the host');
}

export async function closeAndClean(engine: Engine, dataDir: string, ids: string[]): Promise<void> {
  const caller = { tenant: null };
  for (const s of engine.listSandboxes(caller)) {
    if (s.state === 'running' || s.state === 'paused' || s.state === 'creating') await engine.killSandbox(caller, s.id).catch(() => {});
  }
  await engine.shutdownStorage(); // volumes' mounts and loop devices
  await engine.close();
  const left = hostLeftovers(dataDir, ids);
  removeDataDir(dataDir);
  assert.deepEqual(left, [], 'sandbox leftovers on the host');
}

export function sandboxIdsIn(dataDir: string): string[] {
  try {
    return readdirSync(join(dataDir, 'sandboxes'));
  } catch {
    return [];
  }
}

/**
 * Removes a test data dir even when a failed test left sandboxes in it: containers are
 * deleted and mounts detached first, so the original failure is what gets reported.
 */
export function removeDataDir(dataDir: string): void {
  const runcRoot = join(dataDir, 'runc');
  if (existsSync(runcRoot)) {
    for (const id of execFileSync('runc', ['--root', runcRoot, 'list', '-q']).toString().split('\n').filter(Boolean)) {
      execFileSync('runc', ['--root', runcRoot, 'delete', '--force', id]);
    }
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dataDir + '/')).sort((a, b) => b.length - a.length);
  for (const m of mounts) execFileSync('umount', ['-l', m]);
  // Layers and volumes are auto-clearing loop devices, gone with their mounts; detach any a
  // crash left bound (a lazily unmounted one detaches itself once its last user exits).
  for (const { device } of loopDevicesUnder(dataDir)) execFileSync('losetup', ['-d', device]);
  rmSync(dataDir, { recursive: true, force: true });
}
