/**
 * Walks a sandbox's writable layer (the overlay upper dir, on the host) without following
 * links, bounded in entries and time: what the sandbox wrote is there as files, what it deleted
 * from the template as whiteouts (character devices 0:0). The content is the sandbox's, so it
 * is hostile: lstat only, hashing opens with O_NOFOLLOW|O_NONBLOCK and checks the opened file is
 * the regular file that was listed.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync } from 'node:fs';

export type LayerEntryType = 'file' | 'dir' | 'symlink' | 'whiteout' | 'other';

export interface LayerEntry {
  type: LayerEntryType;
  size: number;
  /** Changes whenever the entry does (a rewrite, a replace, a chmod): what the diff compares. */
  signature: string;
}

export interface LayerWalk {
  entries: Map<string, LayerEntry>;
  /** false: the walk stopped at its entry or time budget; `entries` is partial. */
  complete: boolean;
  /** The layer itself could not be read (not mounted, already dropped). */
  missing?: boolean;
  scanned: number;
  elapsedMs: number;
}

export interface WalkLimits {
  maxEntries: number;
  budgetMs: number;
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

/** Yields to the event loop every this many entries: a big layer never blocks it for long. */
const YIELD_EVERY = 512;

/**
 * Walks the layer depth first. Every directory is opened relative to its parent's descriptor
 * (never by a path), so a directory the sandbox replaces by a link while this walks is not
 * followed out of the layer. Synchronous calls in slices: a small layer (the usual case) costs
 * microseconds, not a thread-pool round trip per entry.
 */
export async function walkLayer(root: string, limits: WalkLimits): Promise<LayerWalk> {
  const started = Date.now();
  const entries = new Map<string, LayerEntry>();
  let scanned = 0;
  let rootFd: number;
  try {
    rootFd = openSync(root, DIR_FLAGS | constants.O_NOFOLLOW);
  } catch {
    return { entries, complete: false, missing: true, scanned: 0, elapsedMs: Date.now() - started };
  }
  // Explicit stack of open directories: a hostile tree's depth cannot exhaust the call stack,
  // and it is bounded by maxEntries (each directory is an entry).
  const stack: Array<{ fd: number; rel: string }> = [{ fd: rootFd, rel: '' }];
  try {
    while (stack.length) {
      const { fd, rel } = stack.pop()!;
      try {
        let names: string[];
        try {
          names = readdirSync(`/proc/self/fd/${fd}`);
        } catch {
          continue; // removed while walking
        }
        for (const name of names) {
          if (++scanned > limits.maxEntries || Date.now() - started > limits.budgetMs) {
            return { entries, complete: false, scanned: scanned - 1, elapsedMs: Date.now() - started };
          }
          if (scanned % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
          const path = rel ? `${rel}/${name}` : name;
          let st;
          try {
            st = lstatSync(`/proc/self/fd/${fd}/${name}`);
          } catch {
            continue;
          }
          const type: LayerEntryType = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink'
            : st.isCharacterDevice() && st.rdev === 0 ? 'whiteout' : 'other';
          entries.set(`/${path}`, { type, size: type === 'file' ? st.size : 0, signature: `${type}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.mode}` });
          if (type === 'dir') {
            try {
              stack.push({ fd: openAt(fd, name, DIR_FLAGS), rel: path });
            } catch {
              /* replaced (by a link, say) since the lstat: not followed */
            }
          }
        }
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    for (const { fd } of stack) closeSync(fd);
  }
  return { entries, complete: true, scanned, elapsedMs: Date.now() - started };
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
    const fd = openAt(fds[fds.length - 1]!, parts[parts.length - 1]!, constants.O_RDONLY | constants.O_NONBLOCK);
    fds.push(fd);
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > cap) return null;
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(Math.min(64 * 1024, Math.max(1, st.size)));
    let total = 0;
    for (let n = 0; ; n++) {
      const bytesRead = readSync(fd, buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > cap) return null; // grew while read
      hash.update(buf.subarray(0, bytesRead));
      if (n % 64 === 63) await new Promise((r) => setImmediate(r)); // a big file: let others run
    }
    return hash.digest('hex');
  } catch {
    return null;
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}
