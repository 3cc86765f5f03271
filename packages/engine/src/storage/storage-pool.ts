import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
import { formatImage } from './ext4-image.js';
import { withFileLock } from './file-lock.js';

const MiB = 1024 * 1024;
export const DEFAULT_STORAGE_SIZE_GIB = 64;
/** Bumped whenever formatImage's options change, so stale blank layers are not reused. */
const BLANK_FORMAT = 'ext4-v1';

/** What was decided when the data dir's storage was first made (<dataDir>/storage/pool.json). */
interface PoolRecord {
  /** Half the host file system's free space at creation: the most sandboxes may ever claim. */
  hostLimitMiB: number;
  createdAt: string;
}

/**
 * The disk space of one data dir's sandboxes and volumes, under <dataDir>/storage:
 *   pool.json     the host limit fixed at creation
 *   blank/        one formatted empty layer image per quota size, copied for each new sandbox
 *   volumes/      <vol-id>.img and its mount point <vol-id>/
 *   lock          taken (O_EXCL) by whichever process changes mounts or images here
 * Every image is sparse: a sandbox or volume occupies host disk only for what it wrote, and
 * never more than its quota. The engine admits a sandbox or volume only while the quotas of
 * all of them together stay within `capacityMiB`, so together they can never fill the host.
 */
export class StoragePool {
  readonly root: string;
  readonly capacityMiB: number;
  readonly hostLimitMiB: number;
  private readonly blanks = new Map<number, Promise<string>>();

  private constructor(readonly dataDir: string, sizeGiB: number) {
    this.root = join(dataDir, 'storage');
    traversable(this.root);
    traversable(join(this.root, 'volumes'));
    mkdirSync(join(this.root, 'blank'), { recursive: true, mode: 0o700 });
    this.hostLimitMiB = this.poolRecord().hostLimitMiB;
    this.capacityMiB = Math.min(Math.floor(sizeGiB * 1024), this.hostLimitMiB);
  }

  static open(dataDir: string, opts: { sizeGiB?: number } = {}): StoragePool {
    const sizeGiB = opts.sizeGiB ?? DEFAULT_STORAGE_SIZE_GIB;
    if (!(sizeGiB > 0) || !Number.isFinite(sizeGiB)) throw new Error(`storageSizeGiB must be a positive number, got ${sizeGiB}`);
    return new StoragePool(dataDir, sizeGiB);
  }

  /** A formatted empty layer of `sizeMiB`, made once per size and data dir (~10 ms), then reused. */
  blankLayer(sizeMiB: number): Promise<string> {
    let p = this.blanks.get(sizeMiB);
    if (!p) {
      p = this.makeBlank(sizeMiB);
      this.blanks.set(sizeMiB, p);
      p.catch(() => this.blanks.delete(sizeMiB));
    }
    return p;
  }

  volumeImage(volumeId: string): string {
    return join(this.root, 'volumes', `${volumeId}.img`);
  }

  volumeMount(volumeId: string): string {
    return join(this.root, 'volumes', volumeId);
  }

  /** Serializes changes to mounts and images with every other process on this data dir. */
  locked<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.root, 'lock'), fn);
  }

  private async makeBlank(sizeMiB: number): Promise<string> {
    const path = join(this.root, 'blank', `${BLANK_FORMAT}-${sizeMiB}.img`);
    if (existsSync(path)) return path;
    // Formatted aside and renamed: a concurrent process either sees no blank or a whole one.
    const tmp = `${path}.${process.pid}.${Date.now()}`;
    try {
      await formatImage(tmp, { sizeMiB, rootUid: 0, journal: false, label: 'airlock-layer' });
      renameSync(tmp, path);
    } finally {
      rmSync(tmp, { force: true });
    }
    return path;
  }

  private poolRecord(): PoolRecord {
    const file = join(this.root, 'pool.json');
    try {
      const rec = JSON.parse(readFileSync(file, 'utf8')) as PoolRecord;
      if (Number.isInteger(rec.hostLimitMiB) && rec.hostLimitMiB > 0) return rec;
    } catch { /* absent or unreadable: decide now */ }
    const st = statfsSync(this.dataDir);
    const rec: PoolRecord = { hostLimitMiB: Math.floor((st.bavail * st.bsize) / 2 / MiB), createdAt: new Date().toISOString() };
    // Written aside and linked into place: link fails if another process decided first, and
    // nobody ever reads a half-written file.
    const tmp = `${file}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify(rec) + '\n', { mode: 0o600 });
    try {
      linkSync(tmp, file);
      return rec;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      return JSON.parse(readFileSync(file, 'utf8')) as PoolRecord;
    } finally {
      rmSync(tmp, { force: true });
    }
  }
}

/** Group SANDBOX_ID_BASE may pass (--x), nobody else may enter: volume mounts are bound from here. */
function traversable(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chownSync(dir, 0, SANDBOX_ID_BASE);
  chmodSync(dir, 0o710);
}
