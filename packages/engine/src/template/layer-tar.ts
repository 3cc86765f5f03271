import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, readdir, rm, symlink, utimes } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import { components, lexicalLinkTarget } from './fs-in-root.js';
import { asImageError, fileHead, isGzip, isZstd, meter } from './image-archive.js';
import { invalidImage, tooLarge, type ImportLimits } from './import-limits.js';

/**
 * Applies image layers, bottom first, to one directory on the host (the flattened rootfs of
 * an imported template). The host writes as root here, so every entry is checked before it
 * touches the disk, and anything suspicious fails the whole import:
 *
 * - names: no absolute names, no `..` component; `./` prefixes are dropped.
 * - no entry is written through a link: each parent directory of an entry must be a real
 *   directory (an earlier entry that made it a symlink fails the import); an existing entry
 *   at the path itself is removed, never followed.
 * - symlinks: a target is kept as is (the sandbox resolves it inside its own root), but one
 *   that climbs above the image's root is refused. The target is followed lexically: an
 *   absolute target from the image root, a relative one from the link's directory, and
 *   reaching `..` at the root fails (`a -> ../../etc/shadow` at the top, `/../x`).
 * - hard links: the target must be an absolute-free, `..`-free name of an entry already
 *   extracted that is not a directory.
 * - character and block devices and FIFOs are refused (runtimes give every sandbox its own
 *   /dev); file capabilities and other xattrs are not applied; setuid/setgid bits are kept.
 * - owners must fall in the sandbox id range (0..65535) and are shifted into it.
 * - whiteouts: `.wh.NAME` removes NAME from the layers below, `.wh..wh..opq` empties its
 *   directory of what lower layers put there.
 * - bounds: decompressed bytes and entries, summed over all layers; gzip and plain tar only.
 */

/** An entry as tar-stream yields it (its `Source` type is not exported). */
type TarEntry = tar.Extract extends AsyncIterable<infer S> ? S : never;

/**
 * What to do with a symlink whose target is absolute. The rule, and the default, is to
 * refuse the image. `relativize` stores the equivalent relative link instead (`/etc/localtime ->
 * /usr/share/zoneinfo/UTC` becomes `../usr/share/zoneinfo/UTC`): same meaning inside the
 * sandbox, and no link in the template's tree on the host can name a host path.
 */
export type AbsoluteSymlinks = 'reject' | 'relativize';

export interface ApplyState {
  absoluteSymlinks?: AbsoluteSymlinks;
  unpackedBytes: number;
  entries: number;
}

interface DirAttrs {
  path: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: Date | undefined;
}

/** Rejects when `p` rejects; never settles otherwise. */
export function failureOf(p: Promise<unknown>): Promise<never> {
  return p.then(() => new Promise<never>(() => {}), (e: unknown) => { throw e; });
}

/** Applies one layer blob (a file on disk) to `rootfs`; returns the sha256 of its uncompressed tar (its diff id). */
export async function applyLayer(rootfs: string, blobPath: string, label: string, limits: ImportLimits, state: ApplyState): Promise<string> {
  const head = await fileHead(blobPath, 4);
  if (isZstd(head)) throw invalidImage(`${label} is zstd-compressed; only gzip and plain tar layers can be imported`);
  const source = createReadStream(blobPath);
  const hash = createHash('sha256');
  const count = meter(limits.maxUnpackedBytes - state.unpackedBytes,
    () => tooLarge(`layers unpack to more than ${limits.maxUnpackedBytes} bytes`), (c) => hash.update(c));
  const extract = tar.extract();
  const stages = isGzip(head) ? [source, createGunzip(), count, extract] : [source, count, extract];
  const feeding = pipeline(stages as unknown as ReadonlyArray<NodeJS.ReadableStream | NodeJS.WritableStream | NodeJS.ReadWriteStream>);
  feeding.catch(() => {});
  const upstreamFailed = failureOf(feeding);
  upstreamFailed.catch(() => {});
  const layer = new LayerWriter(rootfs, label, state.absoluteSymlinks ?? 'reject');
  try {
    for await (const entry of extract) {
      if (++state.entries > limits.maxEntries) throw tooLarge(`layers hold more than ${limits.maxEntries} entries`);
      // tar-stream's entries are streamx streams: when gunzip fails mid-entry (a truncated
      // layer) the entry can end without an event node's pipeline() waits for. Race it.
      await Promise.race([layer.apply(entry), upstreamFailed]);
    }
    await feeding;
    await layer.finish();
  } catch (e) {
    source.destroy();
    extract.destroy();
    await feeding.catch(() => {});
    throw asImageError(e);
  }
  state.unpackedBytes += count.bytes;
  return hash.digest('hex');
}

class LayerWriter {
  /** Paths (relative) this layer wrote: an opaque whiteout keeps them. */
  private readonly written = new Set<string>();
  /** Directories known to be real directories (not links), reset whenever something is removed. */
  private readonly realDirs = new Set<string>(['']);
  private readonly dirAttrs: DirAttrs[] = [];

  constructor(private readonly rootfs: string, private readonly label: string, private readonly absoluteSymlinks: AbsoluteSymlinks) {}

  async apply(entry: TarEntry): Promise<void> {
    const h = entry.header;
    try {
      await this.applyEntry(entry, h);
    } finally {
      entry.resume();
    }
  }

  private fail(name: string, why: string): Error {
    return invalidImage(`${this.label}: ${name}: ${why}`);
  }

  private async applyEntry(entry: TarEntry, h: tar.Header): Promise<void> {
    const raw = h.name;
    if (raw.startsWith('/') || raw.includes('\0')) throw this.fail(raw, 'absolute path (path traversal)');
    const parts = components(raw);
    if (parts.includes('..')) throw this.fail(raw, 'path traversal (..)');
    if (parts.length === 0) return; // the root itself keeps the sandbox root's owner and mode
    if (Buffer.byteLength(raw) > 4096 || parts.some((p) => Buffer.byteLength(p) > 255)) throw this.fail(raw.slice(0, 100), 'name too long');
    const name = parts.join('/');
    const base = parts.at(-1) as string;
    const parent = parts.slice(0, -1);

    if (base.startsWith('.wh.')) {
      if (['.wh.', '.wh..', '.wh...'].includes(base)) throw this.fail(name, 'malformed whiteout');
      await this.parentDirs(parent, name, false);
      if (base === '.wh..wh..opq') await this.opaque(parent.join('/'));
      else if (!base.startsWith('.wh..wh.')) await this.whiteout([...parent, base.slice(4)].join('/'));
      return;
    }

    const type = h.type ?? 'file';
    if (type === 'character-device' || type === 'block-device') throw this.fail(name, 'device node');
    if (type === 'fifo') throw this.fail(name, 'FIFO');
    if (!['file', 'contiguous-file', 'directory', 'symlink', 'link'].includes(type)) throw this.fail(name, `unsupported entry type ${type}`);
    const uid = h.uid ?? 0;
    const gid = h.gid ?? 0;
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid < 0 || gid < 0 || uid >= SANDBOX_ID_SIZE || gid >= SANDBOX_ID_SIZE) {
      throw this.fail(name, `owner ${uid}:${gid} is outside the sandbox id range 0..${SANDBOX_ID_SIZE - 1}`);
    }
    const mode = (h.mode ?? 0o644) & 0o7777;
    const host = join(this.rootfs, name);
    await this.parentDirs(parent, name, true);
    this.written.add(name);

    if (type === 'directory') {
      const st = await lstat(host).catch(() => null);
      if (st && !st.isDirectory()) await this.remove(host);
      if (!st || !st.isDirectory()) await mkdir(host, { mode: 0o700 });
      this.realDirs.add(name);
      this.dirAttrs.push({ path: host, mode, uid, gid, mtime: h.mtime });
      return;
    }

    if (type === 'symlink') {
      let target = h.linkname ?? '';
      if (target === '' || target.includes('\0')) throw this.fail(name, 'empty symlink target');
      if (lexicalLinkTarget(name, target) === null) throw this.fail(name, `symlink points outside the image: ${target}`);
      if (target.startsWith('/')) {
        if (this.absoluteSymlinks === 'reject') {
          throw this.fail(name, `absolute symlink -> ${target} (import with --relativize-links to store it as the equivalent relative link)`);
        }
        target = posix.relative(posix.dirname(posix.join('/', name)), posix.normalize(target)) || '.';
      }
      await this.replace(host);
      await symlink(target, host);
      await lchown(host, uid + SANDBOX_ID_BASE, gid + SANDBOX_ID_BASE);
      if (h.mtime) await lutimes(host, h.mtime, h.mtime).catch(() => {});
      return;
    }

    if (type === 'link') {
      const target = h.linkname ?? '';
      if (target.startsWith('/') || target.includes('\0')) throw this.fail(name, `hard link to an absolute path: ${target}`);
      const tparts = components(target);
      if (tparts.length === 0 || tparts.includes('..')) throw this.fail(name, `hard link outside the image: ${target}`);
      await this.parentDirs(tparts.slice(0, -1), name, false);
      const thost = join(this.rootfs, ...tparts);
      const tst = await lstat(thost).catch(() => null);
      if (!tst) throw this.fail(name, `hard link to a missing entry: ${target}`);
      if (tst.isDirectory()) throw this.fail(name, `hard link to a directory: ${target}`);
      if (thost === host) return;
      await this.replace(host);
      await link(thost, host);
      return;
    }

    // A regular file: never written through whatever was at the path before.
    await this.replace(host);
    await pipeline(entry, createWriteStream(host, { flags: 'wx', mode: 0o600 }));
    await lchown(host, uid + SANDBOX_ID_BASE, gid + SANDBOX_ID_BASE);
    await chmod(host, mode); // after chown, which clears setuid/setgid
    if (h.mtime) await utimes(host, h.mtime, h.mtime).catch(() => {});
  }

  /**
   * Makes sure every parent of an entry is a real directory inside the rootfs (created, owned
   * by the sandbox's root, when missing and `create`); a link or a file there fails the import.
   */
  private async parentDirs(parent: string[], name: string, create: boolean): Promise<void> {
    for (let i = 1; i <= parent.length; i++) {
      const rel = parent.slice(0, i).join('/');
      if (this.realDirs.has(rel)) continue;
      const host = join(this.rootfs, rel);
      const st = await lstat(host).catch(() => null);
      if (!st) {
        if (!create) return;
        await mkdir(host, { mode: 0o755 });
        await lchown(host, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
        await chmod(host, 0o755);
      } else if (st.isSymbolicLink()) {
        throw this.fail(name, `goes through the symbolic link /${rel}`);
      } else if (!st.isDirectory()) {
        throw this.fail(name, `/${rel} is not a directory`);
      }
      this.realDirs.add(rel);
    }
  }

  private async replace(host: string): Promise<void> {
    const st = await lstat(host).catch(() => null);
    if (st) await this.remove(host);
  }

  /** Removes a path without following links (rm never follows them). */
  private async remove(host: string): Promise<void> {
    await rm(host, { recursive: true, force: true });
    this.realDirs.clear();
    this.realDirs.add('');
  }

  private async whiteout(rel: string): Promise<void> {
    const host = join(this.rootfs, rel);
    if (await lstat(host).catch(() => null)) await this.remove(host);
  }

  private async opaque(dirRel: string): Promise<void> {
    const host = join(this.rootfs, dirRel);
    const st = await lstat(host).catch(() => null);
    if (!st?.isDirectory()) return;
    for (const child of await readdir(host)) {
      const rel = dirRel ? `${dirRel}/${child}` : child;
      if (!this.written.has(rel)) await this.remove(join(host, child));
    }
  }

  /** Directory owners, modes and times last: creating their children changed them. */
  async finish(): Promise<void> {
    for (const d of this.dirAttrs.reverse()) {
      const st = await lstat(d.path).catch(() => null);
      if (!st?.isDirectory()) continue;
      await lchown(d.path, d.uid + SANDBOX_ID_BASE, d.gid + SANDBOX_ID_BASE);
      await chmod(d.path, d.mode);
      if (d.mtime) await utimes(d.path, d.mtime, d.mtime).catch(() => {});
    }
  }
}
