import { chmod, lchown, lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Stats } from 'node:fs';
import { AirlockError } from '../errors.js';

/** Visits every entry below `root` (not `root` itself), parents before children, never following links. */
async function walk(root: string, visit: (path: string, st: Stats) => Promise<void>): Promise<void> {
  const dirs = [root];
  while (dirs.length > 0) {
    const dir = dirs.pop() as string;
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      const st = await lstat(path);
      await visit(path, st);
      if (st.isDirectory()) dirs.push(path);
    }
  }
}

/**
 * Removes device nodes. A template is a filesystem image, never a way to reach host
 * devices: runtimes give every sandbox its own /dev.
 */
export async function removeDeviceNodes(root: string): Promise<number> {
  let removed = 0;
  await walk(root, async (path, st) => {
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      await rm(path);
      removed++;
    }
  });
  return removed;
}

/**
 * Shifts ownership so id N becomes N + `offset` on every entry, `root` included: the sandbox
 * runs in a user namespace mapping 0..size-1 to offset..offset+size-1, so inside it the
 * files keep their usual owners while on the host they belong to nobody real.
 * chown clears setuid/setgid, so those bits are put back afterwards. An id outside the
 * mapped range would show up as the overflow id inside the sandbox: refuse it.
 * Not idempotent: run it once, on a freshly built tree.
 */
export async function shiftOwnership(root: string, offset: number, size: number): Promise<void> {
  // A hard-linked inode is met once per link but must be shifted once.
  const shifted = new Set<string>();
  const shift = async (path: string, st: Stats) => {
    if (st.nlink > 1 && !st.isDirectory()) {
      const key = `${st.dev}:${st.ino}`;
      if (shifted.has(key)) return;
      shifted.add(key);
    }
    if (st.uid >= size || st.gid >= size) {
      throw new AirlockError('internal', `${path}: owner ${st.uid}:${st.gid} is outside the sandbox id range 0..${size - 1}`);
    }
    await lchown(path, st.uid + offset, st.gid + offset);
    if (!st.isSymbolicLink() && (st.mode & 0o7000) !== 0) await chmod(path, st.mode & 0o7777);
  };
  await shift(root, await lstat(root));
  await walk(root, shift);
}

/** Bytes the tree occupies on disk (allocated blocks), each hard-linked inode counted once. */
export async function treeDiskUsage(root: string): Promise<number> {
  const seen = new Set<string>();
  let bytes = (await lstat(root)).blocks * 512;
  await walk(root, async (_path, st) => {
    if (st.nlink > 1 && !st.isDirectory()) {
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
    }
    bytes += st.blocks * 512;
  });
  return bytes;
}
