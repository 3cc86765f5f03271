/**
 * File telemetry (docs/records.md#file-changes): after each foreground exec and at a sandbox's
 * end, what changed in its writable layer since the last look, as one `file.changes` event:
 * paths written (size, sha256 for regular files up to HASH_CAP) and deleted (overlay whiteouts,
 * and files the sandbox wrote earlier that are gone). The previous look is kept in memory per
 * sandbox; after a daemon restart the first look reports the whole layer.
 */
import { walkLayer, type DirListing, type LayerEntry, type WalkLimits } from './layer-walk.js';

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
  /** Per sandbox, the previous look: its entries (the baseline) and directory listings (reused when unchanged). */
  private readonly last = new Map<string, { entries: Map<string, LayerEntry>; dirs: Map<string, DirListing> }>();

  constructor(private readonly limits = FILE_CHANGE_LIMITS) {}

  /** The changes in `upperDir` since the previous call for `sandbox`; null when there are none. */
  async changes(sandbox: string, upperDir: string): Promise<FileChanges | null> {
    const previous = this.last.get(sandbox);
    const before = previous?.entries ?? new Map<string, LayerEntry>();
    // Changed files are hashed as the walk lists them, through the directory it holds open (no
    // second path walk per file), only those the event will list (the first listMax).
    let listed = 0;
    const walk = await walkLayer(upperDir, this.limits, {
      hashCap: this.limits.hashCap,
      ...(previous ? { previous: previous.dirs } : {}),
      hashIf: (path, e) => e.type !== 'dir' && e.type !== 'whiteout' && before.get(path)?.signature !== e.signature && listed++ < this.limits.listMax,
    });
    if (walk.missing) return null;
    if (!walk.complete) return { written: [], deleted: [], complete: false, scanned: walk.scanned };
    // A look that finished meanwhile (a big layer's walk yields) keeps its newer baseline: the
    // next look then reports again what both saw, never less.
    if (this.last.get(sandbox) === previous) this.last.set(sandbox, { entries: walk.entries, dirs: walk.dirs });
    const written: WrittenFile[] = [];
    const deleted: string[] = [];
    let omitted = 0;
    for (const [path, e] of walk.entries) {
      if (before.get(path)?.signature === e.signature) continue;
      if (e.type === 'whiteout') { deleted.push(path); continue; }
      if (e.type === 'dir') continue; // a directory's own change is the files in it
      if (written.length >= this.limits.listMax) { omitted++; continue; }
      const w: WrittenFile = { path, type: e.type, size: e.size };
      if (e.sha256) w.sha256 = e.sha256;
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
    if (walk.complete) this.last.set(sandbox, { entries: walk.entries, dirs: walk.dirs });
  }

  forget(sandbox: string): void {
    this.last.delete(sandbox);
  }
}
