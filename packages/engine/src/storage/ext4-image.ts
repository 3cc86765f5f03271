import { closeSync, ftruncateSync, openSync, rmSync } from 'node:fs';
import { AirlockError } from '../errors.js';
import { findExecutable } from '../doctor.js';
import { run } from '../util/run.js';

/**
 * File system images: every sandbox's writable layer and every volume is an ext4 file system in
 * a sparse file of exactly its quota, attached through a loop device (agent/airlock-rootfs.c).
 * A file system of its own gives what a per-directory quota cannot on every kernel (this one has
 * neither XFS nor ext4 quota support built in): writes past the size fail with ENOSPC, the inode
 * count is fixed when it is formatted, and nothing of it lives in memory.
 */

/** Inodes per MiB of quota (one per 16 KiB, ext4's own default ratio), and the floor. */
export const INODES_PER_MIB = 64;
export const MIN_INODES = 4096;

export function inodeBound(sizeMiB: number): number {
  return Math.max(MIN_INODES, sizeMiB * INODES_PER_MIB);
}

export interface FormatOptions {
  sizeMiB: number;
  /** Owner of the file system's root directory (host ids). */
  rootUid: number;
  /** Volumes keep a journal (they outlive crashes); a layer is thrown away with its sandbox. */
  journal: boolean;
  label: string;
}

let mkfsPath: string | null | undefined;

function mkfs(): string {
  mkfsPath ??= findExecutable('mkfs.ext4');
  if (!mkfsPath) throw new AirlockError('unavailable', 'mkfs.ext4 is not installed (Debian package e2fsprogs); sandboxes need it for their disks');
  return mkfsPath;
}

/**
 * Formats a new sparse file `path` (which must not exist) as ext4. Only a few metadata blocks
 * are written: no backup superblocks, inode tables and journal left to read as zeros (the
 * helper mounts with noinit_itable, so nothing zeroes them later either).
 */
export async function formatImage(path: string, o: FormatOptions): Promise<void> {
  if (!Number.isInteger(o.sizeMiB) || o.sizeMiB < 1) throw new Error(`image size must be whole MiB, got ${o.sizeMiB}`);
  const fd = openSync(path, 'wx', 0o600);
  try {
    ftruncateSync(fd, o.sizeMiB * 1024 * 1024);
  } finally {
    closeSync(fd);
  }
  const features = ['^resize_inode', 'sparse_super2', o.journal ? 'has_journal' : '^has_journal'];
  const extended = [
    'num_backup_sb=0', 'packed_meta_blocks=1', 'lazy_itable_init=1', 'lazy_journal_init=1', 'nodiscard',
    `root_owner=${o.rootUid}:${o.rootUid}`,
  ];
  try {
    await run(mkfs(), [
      '-q', '-F', '-b', '4096', '-m', '0', '-N', String(inodeBound(o.sizeMiB)), '-L', o.label,
      '-O', features.join(','), '-E', extended.join(','), path,
    ], { timeoutMs: 60_000 });
  } catch (e) {
    rmSync(path, { force: true });
    throw e;
  }
}
