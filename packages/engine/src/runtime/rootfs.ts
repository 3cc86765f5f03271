import { chownSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
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

export async function mountRootfs(sandboxDir: string, templateRootfs: string, diskMiB: number): Promise<RootfsPaths> {
  const p = rootfsPaths(sandboxDir);
  if (/[,:\\]/.test(templateRootfs) || /[,:\\]/.test(sandboxDir)) {
    throw new Error('template and data-dir paths must not contain , : or \\ (overlayfs option syntax)');
  }
  mkdirSync(p.layer, { recursive: true, mode: 0o700 });
  mkdirSync(p.rootfs, { recursive: true, mode: 0o755 });
  // Inodes bounded too: one per 16 KiB of quota, at least 4096.
  const inodes = Math.max(4096, diskMiB * 64);
  await run('mount', ['-t', 'tmpfs', '-o', `size=${diskMiB}m,nr_inodes=${inodes},mode=0700,nosuid,nodev`, 'airlock-layer', p.layer]);
  try {
    const upper = join(p.layer, 'upper');
    const work = join(p.layer, 'work');
    mkdirSync(upper, { mode: 0o755 });
    mkdirSync(work, { mode: 0o700 });
    // The merged root takes the upper dir's owner: sandbox root must own "/".
    chownSync(upper, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
    await run('mount', ['-t', 'overlay', '-o', `lowerdir=${templateRootfs},upperdir=${upper},workdir=${work},volatile`, 'airlock-rootfs', p.rootfs]);
  } catch (e) {
    await unmountQuiet(p.layer);
    throw e;
  }
  return p;
}

/** Unmounts whatever of the sandbox's mounts is still there (overlay first, then the layer). */
export async function unmountRootfs(sandboxDir: string): Promise<void> {
  const p = rootfsPaths(sandboxDir);
  for (const m of mountsUnder(sandboxDir).sort((a, b) => b.length - a.length)) await unmountQuiet(m);
  await unmountQuiet(p.rootfs);
  await unmountQuiet(p.layer);
}

async function unmountQuiet(path: string): Promise<void> {
  if (!isMountPoint(path)) return;
  const r = await run('umount', [path], { allowFailure: true });
  if (r.code !== 0) await run('umount', ['-l', path], { allowFailure: true });
}

/** Mount points at or below a directory, from the kernel's own table. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  return readMountPoints().filter((m) => m === dir || m.startsWith(prefix));
}

export function isMountPoint(path: string): boolean {
  return readMountPoints().includes(path);
}

function readMountPoints(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.push(unescapeMount(f[4]!));
  }
  return out;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}
