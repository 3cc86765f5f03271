import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
import { mountsUnder } from '../util/mounts.js';
import { run } from '../util/run.js';

/**
 * A sandbox root: the template read-only underneath, a writable layer above it. The layer is a
 * file system of its own (storage/ext4-image.ts): `layer.img`, a sparse copy of a formatted
 * empty ext4 of exactly the disk quota, on a loop device mounted at `layer/`. Writing past the
 * quota fails with ENOSPC inside the sandbox, the inode count is bounded, the data is on disk
 * (not in the sandbox's memory), and nothing of the template is copied.
 */
export interface RootfsPaths {
  layer: string;
  image: string;
  rootfs: string;
}

export function rootfsPaths(sandboxDir: string): RootfsPaths {
  return { layer: join(sandboxDir, 'layer'), image: join(sandboxDir, 'layer.img'), rootfs: join(sandboxDir, 'rootfs') };
}

/** The static mount helper built next to the agent (agent/airlock-rootfs.c). */
export function rootfsHelper(agentBinary: string): string {
  return join(dirname(agentBinary), 'airlock-rootfs');
}

/** `blankLayer`: a formatted empty layer image of the sandbox's quota (StoragePool.blankLayer). */
export async function mountRootfs(helper: string, sandboxDir: string, layers: string[], blankLayer: string): Promise<RootfsPaths> {
  const p = rootfsPaths(sandboxDir);
  mkdirSync(p.layer, { recursive: true, mode: 0o700 });
  mkdirSync(p.rootfs, { recursive: true, mode: 0o755 });
  if (!layers.length || layers.some((l) => /[,:\\]/.test(l))) throw new Error('template layers must be paths without , : or \\');
  await run(helper, ['mount', p.layer, p.rootfs, layers.join(':'), blankLayer, p.image, String(SANDBOX_ID_BASE)]);
  return p;
}

/**
 * Unmounts whatever of the sandbox's mounts is still there (deepest first), in one helper run.
 * The layer is dropped, not synced: its contents die with the sandbox.
 */
export async function unmountRootfs(helper: string, sandboxDir: string): Promise<void> {
  const p = rootfsPaths(sandboxDir);
  const mounted = new Set(mountsUnder(sandboxDir));
  const order = [...mounted].filter((m) => m !== p.rootfs && m !== p.layer);
  if (mounted.has(p.rootfs)) order.push(p.rootfs);
  if (mounted.has(p.layer)) order.push('--drop', p.layer);
  if (order.length) await run(helper, ['umount', ...order]);
}
