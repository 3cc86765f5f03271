import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { findExecutable } from '../../doctor.js';
import { run } from '../../util/run.js';
import type { TemplateRef } from '../driver.js';

/**
 * A template as a read-only ext4 image for the guest's first virtio disk, written by
 * `mke2fs -d` straight from the template's files (no loop device, nothing mounted to write
 * it). A template of several layers is merged first by a read-only overlay mount (only to read
 * it). Layers are content-addressed and immutable, so an image is keyed by its layers and
 * built once per host; a changed template has new layers, hence a new image. The files keep
 * their host owners (the sandbox id range); the guest idmaps them back (airlock-vminit).
 */

const building = new Map<string, Promise<string>>();

export function templateImagePath(imagesDir: string, t: TemplateRef): string {
  const key = createHash('sha256').update(t.layers.join('\0')).digest('hex').slice(0, 32);
  return join(imagesDir, `${key}.ext4`);
}

export function templateImage(imagesDir: string, t: TemplateRef): Promise<string> {
  const path = templateImagePath(imagesDir, t);
  if (existsSync(path)) return Promise.resolve(path);
  let p = building.get(path);
  if (!p) {
    p = build(imagesDir, t.layers, path).finally(() => building.delete(path));
    building.set(path, p);
  }
  return p;
}

/** Bytes (4 KiB blocks) and inodes a tree needs. */
function measure(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 0;
  const stack = [dir];
  while (stack.length) {
    const d = stack.pop()!;
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = lstatSync(p);
      inodes++;
      bytes += Math.ceil(st.size / 4096) * 4096 + (st.isSymbolicLink() ? 0 : 0);
      if (e.isDirectory()) stack.push(p);
    }
  }
  return { bytes, inodes };
}

async function build(imagesDir: string, layers: string[], path: string): Promise<string> {
  if (!layers.length || layers.some((l) => /[,:\\]/.test(l))) throw new Error('template layers must be paths without , : or \\');
  const mkfs = findExecutable('mkfs.ext4');
  if (!mkfs) throw new Error('mkfs.ext4 is not installed (Debian package e2fsprogs)');
  mkdirSync(imagesDir, { recursive: true, mode: 0o755 });
  const work = mkdtempSync(join(imagesDir, '.build-'));
  const merged = join(work, 'merged');
  const tmp = join(work, 'image');
  let mounted = false;
  try {
    let source = layers[0]!;
    if (layers.length > 1) {
      mkdirSync(merged);
      await run('mount', ['-t', 'overlay', '-o', `ro,lowerdir=${layers.join(':')}`, 'airlock-tplimg', merged], { timeoutMs: 30_000 });
      mounted = true;
      source = merged;
    }
    const need = measure(source);
    const inodes = Math.ceil(need.inodes * 1.1) + 1024;
    // Data, inode tables (256 B each), directory blocks and metadata slack.
    const sizeMiB = Math.ceil((need.bytes * 1.1 + inodes * 256) / (1 << 20)) + 64;
    await run(mkfs, [
      '-q', '-F', '-t', 'ext4', '-b', '4096', '-m', '0', '-N', String(inodes), '-L', 'airlock-tpl',
      '-O', '^has_journal,^resize_inode', '-E', 'lazy_itable_init=0,nodiscard',
      '-d', source, tmp, `${sizeMiB}M`,
    ], { timeoutMs: 600_000 });
    renameSync(tmp, path);
    return path;
  } finally {
    if (mounted) await run('umount', [merged], { allowFailure: true, timeoutMs: 30_000 });
    rmSync(work, { recursive: true, force: true });
  }
}
