/**
 * Content-addressed blob store for recorded evidence (exec output, traces), named by SHA-256 so
 * identical content is stored once. Two homes, one name space:
 *  - small blobs (up to INLINE_MAX_BYTES) are rows of `blobs_inline` in the database, inserted
 *    in the caller's transaction: an exec's output commits with its record and exec.exited
 *    event, one commit per exec instead of a file create + rename per stream;
 *  - larger ones are files, `<dir>/sha256/ab/cdef…`, written to a temp file and renamed into
 *    place, so a reader never sees half a blob (and a big output does not bloat the WAL).
 * Readers look inline first, then on disk, so data dirs written before inline storage (files
 * only) read the same.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Db } from '../store/db.js';

export const SHA256_RE = /^[0-9a-f]{64}$/;

/**
 * Blobs up to this size live in the database. Most exec output is a few hundred bytes; 16 KiB is
 * four 4 KiB pages, about what a file write costs in syscalls, yet far below the sizes where
 * SQLite's own measurements favour files (~100 KiB). Larger outputs (up to the 1 MiB cap) and
 * traces (8 MiB) stay files, so the database and its WAL stay small.
 */
export const INLINE_MAX_BYTES = 16 * 1024;

export interface StoredBlob {
  sha256: string;
  size: number;
}

export class BlobStore {
  private readonly root: string;
  private readonly insertInline;
  private readonly selectInline;
  private readonly hasInline;

  constructor(dir: string, db: Db) {
    this.root = join(dir, 'sha256');
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    this.insertInline = db.prepare('INSERT OR IGNORE INTO blobs_inline (sha256, data) VALUES (?, ?)');
    this.selectInline = db.prepare('SELECT data FROM blobs_inline WHERE sha256 = ?').pluck();
    this.hasInline = db.prepare('SELECT 1 FROM blobs_inline WHERE sha256 = ?').pluck();
  }

  private pathOf(sha256: string): string {
    return join(this.root, sha256.slice(0, 2), sha256.slice(2));
  }

  /** Names of files this process already stored or saw: repeated big output costs no stat. */
  private readonly knownFiles = new Set<string>();

  /**
   * Stores `data` (a no-op when the same content is already there) and names it. A small blob
   * is inserted in the current transaction (call it inside the one that records what names it;
   * outside one, it commits on its own). A big one is written to a temporary name and renamed.
   * Neither is fsynced, matching the database (WAL, synchronous=NORMAL): an OS crash may lose
   * the newest blobs as it may lose the newest events, and `audit verify` of an export names a
   * blob that does not match.
   */
  put(data: Buffer): StoredBlob {
    const sha256 = createHash('sha256').update(data).digest('hex');
    // No in-memory "already stored" shortcut for inline blobs: the insert may be rolled back with
    // its transaction, and INSERT OR IGNORE on the primary key is as cheap as a lookup.
    if (data.length <= INLINE_MAX_BYTES) this.insertInline.run(sha256, data);
    else this.putFile(sha256, data);
    return { sha256, size: data.length };
  }

  private putFile(sha256: string, data: Buffer): void {
    if (this.knownFiles.has(sha256)) return;
    const path = this.pathOf(sha256);
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
    if (this.knownFiles.size >= 10_000) this.knownFiles.clear();
    this.knownFiles.add(sha256);
  }

  /** The blob's bytes (inline or file), or null when absent (or the name is not a SHA-256). */
  get(sha256: string): Buffer | null {
    if (typeof sha256 !== 'string' || !SHA256_RE.test(sha256)) return null;
    const inline = this.selectInline.get(sha256) as Buffer | undefined;
    if (inline) return inline;
    try {
      return readFileSync(this.pathOf(sha256));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  has(sha256: string): boolean {
    if (typeof sha256 !== 'string' || !SHA256_RE.test(sha256)) return false;
    return this.hasInline.get(sha256) !== undefined || existsSync(this.pathOf(sha256));
  }
}
