import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
import { mountsUnder } from '../util/mounts.js';
import { run } from '../util/run.js';

/**
 * A sandbox root: the template read-only underneath, a writable layer above it.
 * The layer lives on a tmpfs sized by the disk quota, so writing past it fails with ENOSPC
 * inside the sandbox and can never fill the host disk; its pages are charged to the memory
 * cgroup of the process that writes them. Nothing of the template is copied.
 */
export interface RootfsPaths {
  layer: string;
  rootfs: string;
}

export function rootfsPaths(sandboxDir: string): RootfsPaths {
  return { layer: join(sandboxDir, 'layer'), rootfs: join(sandboxDir, 'rootfs') };
}

/** The static mount helper built next to the agent (agent/airlock-rootfs.c). */
export function rootfsHelper(agentBinary: string): string {
  return join(dirname(agentBinary), 'airlock-rootfs');
}

export async function mountRootfs(helper: string, sandboxDir: string, layers: string[], diskMiB: number): Promise<RootfsPaths> {
  const p = rootfsPaths(sandboxDir);
  mkdirSync(p.layer, { recursive: true, mode: 0o700 });
  mkdirSync(p.rootfs, { recursive: true, mode: 0o755 });
  // Inodes bounded too: one per 16 KiB of quota, at least 4096.
  const inodes = Math.max(4096, diskMiB * 64);
  if (!layers.length || layers.some((l) => /[,:\\]/.test(l))) throw new Error('template layers must be paths without , : or \\');
  await run(helper, ['mount', p.layer, p.rootfs, layers.join(':'), String(diskMiB), String(inodes), String(SANDBOX_ID_BASE)]);
  return p;
}

/** Unmounts whatever of the sandbox's mounts is still there (deepest first), in one helper run. */
export async function unmountRootfs(helper: string, sandboxDir: string): Promise<void> {
  const p = rootfsPaths(sandboxDir);
  const mounted = new Set(mountsUnder(sandboxDir));
  const order = [...mounted].filter((m) => m !== p.rootfs && m !== p.layer);
  if (mounted.has(p.rootfs)) order.push(p.rootfs);
  if (mounted.has(p.layer)) order.push(p.layer);
  if (order.length) await run(helper, ['umount', ...order]);
}
