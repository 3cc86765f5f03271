/**
 * Walks a sandbox's writable layer (the overlay upper dir, on the host) without following
 * links, bounded in entries and time: what the sandbox wrote is there as files, what it deleted
 * from the template as whiteouts (character devices 0:0). The content is the sandbox's, so it
 * is hostile: lstat only, hashing opens with O_NOFOLLOW|O_NONBLOCK and checks the opened file is
 * the regular file that was listed.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync, type Dirent } from 'node:fs';

export type LayerEntryType = 'file' | 'dir' | 'symlink' | 'whiteout' | 'other';

export interface LayerEntry {
  type: LayerEntryType;
  size: number;
  /**
   * Changes whenever the entry does (a rewrite, a replace, a chmod): what the diff compares.
   * A directory's is just 'dir': its own change is the entries in it (and it costs no lstat).
   */
  signature: string;
  /** Set when WalkOptions.hashIf asked for it and the file was hashed (regular, within the cap). */
  sha256?: string;
}

export interface LayerWalk {
  entries: Map<string, LayerEntry>;
  /** false: the walk stopped at its entry or time budget; `entries` is partial. */
  complete: boolean;
  /** The layer itself could not be read (not mounted, already dropped). */
  missing?: boolean;
  scanned: number;
  elapsedMs: number;
  /** Each directory's listing, for the next walk to reuse where the directory did not change. */
  dirs: Map<string, DirListing>;
}

/** A directory's entries as listed, with what tells whether it changed since (ctime cannot be forged). */
export interface DirListing {
  ino: number;
  ctimeMs: number;
  /** Date.now() just before it was listed. */
  listedAt: number;
  dirents: Dirent[];
}

/**
 * A listing is reused only when the directory's ctime is this much older than the listing: an
 * entry added, removed or renamed later sets the ctime to the (coarse, per clock tick, at most
 * 10 ms) time of that change, so it differs from the ctime seen. ctime is the kernel's; the
 * sandbox cannot set it back (utimes sets it to now).
 */
const LISTING_SETTLED_MS = 100;

export interface WalkLimits {
  maxEntries: number;
  budgetMs: number;
}

export interface WalkOptions {
  /**
   * Asked for every entry, in walk order, as it is listed; true for a regular file hashes it
   * there and then, through the directory the walk holds open (one open, no path to resolve
   * again). Hashing time does not count against budgetMs: it is bounded by hashCap per file.
   */
  hashIf?: (path: string, entry: LayerEntry) => boolean;
  hashCap?: number;
  /** The previous walk's listings: an unchanged directory is not read again (an fstat instead). */
  previous?: ReadonlyMap<string, DirListing>;
}

/**
 * Opens one name inside the directory `dirFd` without following a link at any step: through
 * /proc/self/fd/<dirFd>, the kernel starts from that very directory (not from a path the sandbox
 * could swap for a link meanwhile), and the single last component carries O_NOFOLLOW.
 */
function openAt(dirFd: number, name: string, flags: number): number {
  return openSync(`/proc/self/fd/${dirFd}/${name}`, flags | constants.O_NOFOLLOW);
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY;
const FILE_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK;

/** Yields to the event loop every this many entries: a big layer never blocks it for long. */
const YIELD_EVERY = 512;

/**
 * Walks the layer depth first. Every directory is opened relative to its parent's descriptor
 * (never by a path), so a directory the sandbox replaces by a link while this walks is not
 * followed out of the layer. Synchronous calls in slices: a small layer (the usual case) costs
 * microseconds, not a thread-pool round trip per entry. The directory listing's entry types
 * (d_type, which overlayfs requires of its upper file system) spare directories an lstat.
 */
export async function walkLayer(root: string, limits: WalkLimits, opts: WalkOptions = {}): Promise<LayerWalk> {
  const started = Date.now();
  let hashingMs = 0;
  const entries = new Map<string, LayerEntry>();
  const dirs = new Map<string, DirListing>();
  let scanned = 0;
  let rootFd: number;
  try {
    rootFd = openSync(root, DIR_FLAGS | constants.O_NOFOLLOW);
  } catch {
    return { entries, complete: false, missing: true, scanned: 0, elapsedMs: Date.now() - started, dirs };
  }
  // Explicit stack of open directories: a hostile tree's depth cannot exhaust the call stack,
  // and it is bounded by maxEntries (each directory is an entry).
  const stack: Array<{ fd: number; rel: string }> = [{ fd: rootFd, rel: '' }];
  try {
    while (stack.length) {
      const { fd, rel } = stack.pop()!;
      try {
        const names = listDir(fd, rel, opts.previous, dirs);
        if (!names) continue; // removed while walking
        for (const dirent of names) {
          const name = dirent.name;
          if (++scanned > limits.maxEntries || Date.now() - started - hashingMs > limits.budgetMs) {
            return { entries, complete: false, scanned: scanned - 1, elapsedMs: Date.now() - started, dirs };
          }
          if (scanned % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
          const path = rel ? `${rel}/${name}` : name;
          if (dirent.isDirectory()) {
            const entry: LayerEntry = { type: 'dir', size: 0, signature: 'dir' };
            entries.set(`/${path}`, entry);
            opts.hashIf?.(`/${path}`, entry);
            try {
              stack.push({ fd: openAt(fd, name, DIR_FLAGS), rel: path });
            } catch {
              /* replaced (by a link, say) since it was listed: not followed */
            }
            continue;
          }
          let st;
          try {
            st = lstatSync(`/proc/self/fd/${fd}/${name}`);
          } catch {
            continue;
          }
          const type: LayerEntryType = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink'
            : st.isCharacterDevice() && st.rdev === 0 ? 'whiteout' : 'other';
          const entry: LayerEntry = type === 'dir' ? { type, size: 0, signature: 'dir' }
            : { type, size: type === 'file' ? st.size : 0, signature: `${type}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.mode}` };
          entries.set(`/${path}`, entry);
          if (type === 'dir') {
            // The listing had no type for it (or it was replaced since): entered all the same.
            try {
              stack.push({ fd: openAt(fd, name, DIR_FLAGS), rel: path });
            } catch {
              /* replaced by a link: not followed */
            }
            opts.hashIf?.(`/${path}`, entry);
            continue;
          }
          if (opts.hashIf?.(`/${path}`, entry) && type === 'file') {
            const t0 = Date.now();
            const pending = hashAt(fd, name, st.ino, opts.hashCap ?? Number.MAX_SAFE_INTEGER);
            const sha = pending instanceof Promise ? await pending : pending;
            hashingMs += Date.now() - t0;
            if (sha) entry.sha256 = sha;
          }
        }
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    for (const { fd } of stack) closeSync(fd);
  }
  return { entries, complete: true, scanned, elapsedMs: Date.now() - started, dirs };
}

/** The entries of the open directory `fd`: the previous listing when it provably still holds, else read. */
function listDir(fd: number, rel: string, previous: ReadonlyMap<string, DirListing> | undefined, dirs: Map<string, DirListing>): Dirent[] | null {
  try {
    const st = fstatSync(fd);
    const prev = previous?.get(rel);
    if (prev && prev.ino === st.ino && prev.ctimeMs === st.ctimeMs && prev.ctimeMs < prev.listedAt - LISTING_SETTLED_MS) {
      dirs.set(rel, prev);
      return prev.dirents;
    }
    const listedAt = Date.now();
    const dirents = readdirSync(`/proc/self/fd/${fd}`, { withFileTypes: true });
    dirs.set(rel, { ino: st.ino, ctimeMs: st.ctimeMs, listedAt, dirents });
    return dirents;
  } catch {
    return null;
  }
}

/** SHA-256 of `name` in the directory `dirFd` if it is still the regular file `ino` listed, within `cap`. */
function hashAt(dirFd: number, name: string, ino: number, cap: number): string | null | Promise<string | null> {
  let fd: number;
  try {
    fd = openAt(dirFd, name, FILE_FLAGS);
  } catch {
    return null;
  }
  let r: string | null | Promise<string | null>;
  try {
    r = hashOpenFile(fd, cap, ino);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  if (r instanceof Promise) return r.finally(() => closeSync(fd));
  closeSync(fd);
  return r;
}

/** Read in chunks of this size; a file up to SYNC_HASH_MAX is hashed without yielding (or a promise). */
const HASH_CHUNK = 64 * 1024;
const SYNC_HASH_MAX = 64 * HASH_CHUNK;

/**
 * SHA-256 of an opened regular file (the one numbered `ino`, when given), or null: not one, or
 * over `cap`. Up to the size fstat saw (no extra read for the end): the content at that moment.
 * A small file (the usual case) is hashed synchronously: no promise, no event-loop turn.
 */
function hashOpenFile(fd: number, cap: number, ino?: number): string | null | Promise<string | null> {
  let size: number;
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > cap || (ino !== undefined && st.ino !== ino)) return null;
    size = st.size;
  } catch {
    return null;
  }
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(HASH_CHUNK, Math.max(1, size)));
  let total = 0;
  const readChunk = (): boolean => {
    const bytesRead = readSync(fd, buf, 0, Math.min(buf.length, size - total), null);
    if (bytesRead === 0) return false; // shrank meanwhile
    total += bytesRead;
    hash.update(buf.subarray(0, bytesRead));
    return total < size;
  };
  try {
    if (size <= SYNC_HASH_MAX) {
      while (total < size && readChunk()) { /* next chunk */ }
      return hash.digest('hex');
    }
  } catch {
    return null;
  }
  return (async () => {
    try {
      for (let n = 1; readChunk(); n++) {
        if (n % 64 === 0) await new Promise((r) => setImmediate(r)); // a big file: let others run
      }
      return hash.digest('hex');
    } catch {
      return null;
    }
  })();
}

/**
 * SHA-256 of a regular file in the layer, or null if it is not one (any more) or exceeds `cap`.
 * Resolved one component at a time from the layer's root, never following a link.
 */
export async function hashLayerFile(root: string, path: string, cap: number): Promise<string | null> {
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0 || parts.some((p) => p === '.' || p === '..')) return null;
  const fds: number[] = [];
  try {
    fds.push(openSync(root, DIR_FLAGS | constants.O_NOFOLLOW));
    for (const dir of parts.slice(0, -1)) fds.push(openAt(fds[fds.length - 1]!, dir, DIR_FLAGS));
    const fd = openAt(fds[fds.length - 1]!, parts[parts.length - 1]!, FILE_FLAGS);
    fds.push(fd);
    return await hashOpenFile(fd, cap);
  } catch {
    return null;
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}
