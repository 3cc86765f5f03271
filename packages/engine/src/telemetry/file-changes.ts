/**
 * File telemetry (docs/records.md#file-changes): after each foreground exec and at a sandbox's
 * end, what changed in its writable layer since the last look, as one `file.changes` event:
 * paths written (size, sha256 for regular files up to HASH_CAP) and deleted (overlay whiteouts,
 * and files the sandbox wrote earlier that are gone). The previous look is kept in memory per
 * sandbox; after a daemon restart the first look reports the whole layer.
 */
import { hashLayerFile, walkLayer, type LayerEntry, type WalkLimits } from './layer-walk.js';

export const FILE_CHANGE_LIMITS: WalkLimits & { hashCap: number; listMax: number } = {
  maxEntries: 20_000,
  budgetMs: 500,
  /** Larger files are listed with their size only. */
  hashCap: 16 * 1024 * 1024,
  /** Paths per list in one event; the rest are counted. */
  listMax: 1000,
};

export interface WrittenFile {
  path: string;
  type: LayerEntry['type'];
  size: number;
  sha256?: string;
}

export interface FileChanges {
  written: WrittenFile[];
  deleted: string[];
  /** false: the layer walk hit its budget; nothing is reported and the baseline is kept. */
  complete: boolean;
  scanned: number;
  omitted?: number;
}

export class FileChangeTracker {
  private readonly last = new Map<string, Map<string, LayerEntry>>();

  constructor(private readonly limits = FILE_CHANGE_LIMITS) {}

  /** The changes in `upperDir` since the previous call for `sandbox`; null when there are none. */
  async changes(sandbox: string, upperDir: string): Promise<FileChanges | null> {
    const walk = await walkLayer(upperDir, this.limits);
    if (walk.missing) return null;
    if (!walk.complete) return { written: [], deleted: [], complete: false, scanned: walk.scanned };
    const before = this.last.get(sandbox) ?? new Map<string, LayerEntry>();
    this.last.set(sandbox, walk.entries);
    const written: WrittenFile[] = [];
    const deleted: string[] = [];
    let omitted = 0;
    for (const [path, e] of walk.entries) {
      if (before.get(path)?.signature === e.signature) continue;
      if (e.type === 'whiteout') { deleted.push(path); continue; }
      if (e.type === 'dir') continue; // a directory's own change is the files in it
      if (written.length >= this.limits.listMax) { omitted++; continue; }
      const w: WrittenFile = { path, type: e.type, size: e.size };
      if (e.type === 'file') {
        const sha = await hashLayerFile(upperDir, path, this.limits.hashCap);
        if (sha) w.sha256 = sha;
      }
      written.push(w);
    }
    for (const [path, e] of before) {
      // Written earlier, gone now without a whiteout: it was created here, then deleted.
      if (!walk.entries.has(path) && e.type !== 'whiteout' && e.type !== 'dir') deleted.push(path);
    }
    if (deleted.length > this.limits.listMax) { omitted += deleted.length - this.limits.listMax; deleted.length = this.limits.listMax; }
    if (!written.length && !deleted.length) return null;
    return { written, deleted, complete: true, scanned: walk.scanned, ...(omitted ? { omitted } : {}) };
  }

  /** Takes the first look without reporting it, so the first exec reports only its own changes. */
  async ensureBaseline(sandbox: string, upperDir: string): Promise<void> {
    if (this.last.has(sandbox)) return;
    const walk = await walkLayer(upperDir, this.limits);
    if (walk.complete) this.last.set(sandbox, walk.entries);
  }

  forget(sandbox: string): void {
    this.last.delete(sandbox);
  }
}
