/**
 * Content-addressed blob store for recorded evidence (exec output, traces): each blob lives at
 * `<dir>/sha256/ab/cdef…` named by its SHA-256, written to a temp file and renamed into place,
 * so a reader never sees half a blob and identical content is stored once.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const SHA256_RE = /^[0-9a-f]{64}$/;

export interface StoredBlob {
  sha256: string;
  size: number;
}

export class BlobStore {
  private readonly root: string;

  constructor(dir: string) {
    this.root = join(dir, 'sha256');
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
  }

  private pathOf(sha256: string): string {
    return join(this.root, sha256.slice(0, 2), sha256.slice(2));
  }

  /** Names this process already stored or saw: repeated output (often empty) costs no stat. */
  private readonly known = new Set<string>();

  /**
   * Stores `data` (a no-op when the same content is already there) and names it. Written to a
   * temporary name and renamed, so a reader never sees half a blob; not fsynced, matching the
   * database (WAL, synchronous=NORMAL): an OS crash may lose the newest blobs as it may lose the
   * newest events, and `audit verify` of an export names a blob that does not match.
   */
  put(data: Buffer): StoredBlob {
    const sha256 = createHash('sha256').update(data).digest('hex');
    const path = this.pathOf(sha256);
    if (this.known.has(sha256)) return { sha256, size: data.length };
    if (!existsSync(path)) {
      mkdirSync(join(this.root, sha256.slice(0, 2)), { recursive: true, mode: 0o700 });
      const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        writeSync(fd, data);
      } catch (e) {
        closeSync(fd);
        rmSync(tmp, { force: true });
        throw e;
      }
      closeSync(fd);
      renameSync(tmp, path);
    }
    if (this.known.size >= 10_000) this.known.clear();
    this.known.add(sha256);
    return { sha256, size: data.length };
  }

  /** The blob's bytes, or null when absent (or the name is not a SHA-256). */
  get(sha256: string): Buffer | null {
    if (!SHA256_RE.test(sha256)) return null;
    try {
      return readFileSync(this.pathOf(sha256));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  has(sha256: string): boolean {
    return SHA256_RE.test(sha256) && existsSync(this.pathOf(sha256));
  }
}
