/**
 * File telemetry (docs/records.md#file-changes): after each foreground exec and at a sandbox's
 * end, what changed in its writable layer since the last look, as one `file.changes` event:
 * paths written (size, sha256 for regular files up to HASH_CAP) and deleted (overlay whiteouts,
 * and files the sandbox wrote earlier that are gone). The previous look is kept in memory per
 * sandbox; after a daemon restart the first look reports the whole layer.
 *
 * Container and gvisor: the engine walks the overlay upper dir on the host (walkLayer). microvm:
 * the layer is a disk the guest's kernel writes, so the guest's agent walks it and the result
 * comes in through changesFrom (marked `source: 'guest'`: reported by the sandbox's own kernel).
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
  /** 'guest': walked by the microvm's agent (the sandbox's kernel reports it); absent: walked by the host. */
  source?: 'guest';
}

/** A walk made elsewhere (a microvm's agent): entries keyed like walkLayer's ('/path'). */
export interface ProvidedWalk {
  entries: Map<string, LayerEntry>;
  /** false: the walk stopped at a bound; nothing is reported and the baseline is kept. */
  complete: boolean;
  scanned: number;
}

/** SHA-256 of a listed regular file within the cap, or null (gone, not regular any more, too big). */
export type LayerHasher = (path: string, entry: LayerEntry) => Promise<string | null>;

/** The diff of two looks: what `after` wrote (first listMax) and deleted since `before`. */
function diffLayer(before: Map<string, LayerEntry>, after: Map<string, LayerEntry>, listMax: number) {
  const written: WrittenFile[] = [];
  const deleted: string[] = [];
  let omitted = 0;
  for (const [path, e] of after) {
    if (before.get(path)?.signature === e.signature) continue;
    if (e.type === 'whiteout') { deleted.push(path); continue; }
    if (e.type === 'dir') continue; // a directory's own change is the files in it
    if (written.length >= listMax) { omitted++; continue; }
    const w: WrittenFile = { path, type: e.type, size: e.size };
    if (e.sha256) w.sha256 = e.sha256;
    written.push(w);
  }
  for (const [path, e] of before) {
    // Written earlier, gone now without a whiteout: it was created here, then deleted.
    if (!after.has(path) && e.type !== 'whiteout' && e.type !== 'dir') deleted.push(path);
  }
  if (deleted.length > listMax) { omitted += deleted.length - listMax; deleted.length = listMax; }
  return { written, deleted, omitted };
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
    const { written, deleted, omitted } = diffLayer(before, walk.entries, this.limits.listMax);
    if (!written.length && !deleted.length) return null;
    return { written, deleted, complete: true, scanned: walk.scanned, ...(omitted ? { omitted } : {}) };
  }

  /**
   * Like changes(), for a walk made by a microvm's agent (`look`); null when there are none or
   * `look` found no layer. Changed regular files (the ones listed) are hashed afterwards through
   * `hash`, one at a time, until `hashBudgetMs` is spent: later ones are listed without sha256.
   */
  async changesFrom(sandbox: string, look: () => Promise<ProvidedWalk | null>, hash: LayerHasher, hashBudgetMs: number): Promise<FileChanges | null> {
    const previous = this.last.get(sandbox);
    const before = previous?.entries ?? new Map<string, LayerEntry>();
    const walk = await look();
    if (!walk) return null;
    if (!walk.complete) return { written: [], deleted: [], complete: false, scanned: walk.scanned, source: 'guest' };
    if (this.last.get(sandbox) === previous) this.last.set(sandbox, { entries: walk.entries, dirs: new Map() });
    const { written, deleted, omitted } = diffLayer(before, walk.entries, this.limits.listMax);
    if (!written.length && !deleted.length) return null;
    const deadline = Date.now() + hashBudgetMs;
    for (const w of written) {
      if (w.type !== 'file' || w.size > this.limits.hashCap || Date.now() >= deadline) continue;
      const sha = await hash(w.path, walk.entries.get(w.path)!);
      if (sha) w.sha256 = sha;
    }
    return { written, deleted, complete: true, scanned: walk.scanned, ...(omitted ? { omitted } : {}), source: 'guest' };
  }

  /** ensureBaseline for a walk made by a microvm's agent. */
  async ensureBaselineFrom(sandbox: string, look: () => Promise<ProvidedWalk | null>): Promise<void> {
    if (this.last.has(sandbox)) return;
    const walk = await look();
    if (walk?.complete && !this.last.has(sandbox)) this.last.set(sandbox, { entries: walk.entries, dirs: new Map() });
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
