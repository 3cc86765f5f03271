import { statfsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

/** A sandbox's writable layer as its own file system reports it. */
export interface DiskUsage {
  totalBytes: number;
  /** What the sandbox can still write (ext4 keeps a small reserve even at -m 0). */
  availBytes: number;
  usedBytes: number;
  inodes: number;
  inodesFree: number;
}

const MiB = 1024 * 1024;

/** statfs of a mounted layer; null when `path` is not a mount point (the sandbox is gone). */
export function fsUsage(path: string): DiskUsage | null {
  try {
    if (statSync(path).dev === statSync(dirname(path)).dev) return null;
    const st = statfsSync(path);
    return {
      totalBytes: st.blocks * st.bsize,
      availBytes: st.bavail * st.bsize,
      usedBytes: (st.blocks - st.bfree) * st.bsize,
      inodes: st.files,
      inodesFree: st.ffree,
    };
  } catch {
    return null;
  }
}

/** Full enough that writes fail: under 2% (at least 1 MiB) of its space, or 0.5% of its inodes, left (ext4 keeps some slack). */
export function isFull(u: DiskUsage): boolean {
  return u.availBytes < Math.max(MiB, u.totalBytes * 0.02) || u.inodesFree < Math.max(16, u.inodes * 0.005);
}

export interface DiskFullEvent {
  limitMiB: number;
  usedMiB: number;
  inodesUsed: number;
  inodesLimit: number;
}

/**
 * One `limit.disk` event per episode: the first time a sandbox's layer is seen full (after an
 * exec, or when a write answered ENOSPC), not again until it has had room again.
 */
export class DiskWatch {
  private readonly full = new Set<string>();

  constructor(private readonly emit: (sandbox: string, e: DiskFullEvent) => void) {}

  /** `hitLimit`: a write just failed with ENOSPC, so this is an episode even if space was freed since. */
  observe(sandbox: string, limitMiB: number, usage: DiskUsage | null, hitLimit = false): void {
    if (!usage) return;
    const full = hitLimit || isFull(usage);
    if (!full) {
      this.full.delete(sandbox);
      return;
    }
    if (this.full.has(sandbox)) return;
    this.full.add(sandbox);
    this.emit(sandbox, {
      limitMiB,
      usedMiB: Math.round(usage.usedBytes / MiB),
      inodesUsed: usage.inodes - usage.inodesFree,
      inodesLimit: usage.inodes,
    });
  }

  forget(sandbox: string): void {
    this.full.delete(sandbox);
  }
}
