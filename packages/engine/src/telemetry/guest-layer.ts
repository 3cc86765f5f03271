/**
 * file.changes for the microvm tier (docs/records.md#file-changes): its writable layer is an
 * ext4 disk the guest's kernel writes, so the guest's agent walks the overlay upper dir (LWALK)
 * and reads changed files for hashing (LREAD). The agent runs on the sandbox's own kernel: what
 * it reports is guest-reported, bounded and validated by AgentLink like everything it sends.
 */
import { createHash } from 'node:crypto';
import { AgentError, type AgentLink } from '../agent/agent-link.js';
import { FILE_CHANGE_LIMITS, type FileChangeTracker, type FileChanges, type LayerHasher, type ProvidedWalk } from './file-changes.js';
import type { LayerEntry } from './layer-walk.js';

/** The whole walk's answer (under TCG a guest is slow; a wedged one must not hold an exec's record for long). */
export const GUEST_WALK_TIMEOUT_MS = 5000;
/** Hashing changed files over the link, per look; files past it are listed without sha256. */
export const GUEST_HASH_BUDGET_MS = 5000;

const E2BIG = 7;
const ENAMETOOLONG = 36;
const ETIMEDOUT = 110;

/** The guest's walk as the tracker's entries; incomplete at a bound (entries, bytes, depth, time). */
export async function guestLayerWalk(link: AgentLink, timeoutMs = GUEST_WALK_TIMEOUT_MS): Promise<ProvidedWalk> {
  let list;
  try {
    list = await link.layerWalk(timeoutMs);
  } catch (e) {
    if (e instanceof AgentError && [E2BIG, ENAMETOOLONG, ETIMEDOUT].includes(e.errno)) return { entries: new Map(), complete: false, scanned: 0 };
    throw e;
  }
  const entries = new Map<string, LayerEntry>();
  for (const e of list) {
    entries.set(`/${e.path}`, e.type === 'dir' ? { type: 'dir', size: 0, signature: 'dir' }
      : { type: e.type, size: e.size, signature: `${e.type}:${e.ino}:${e.size}:${e.mtimeNs}:${e.ctimeNs}` });
  }
  return { entries, complete: true, scanned: list.length };
}

/** Hashes a layer file read through the agent, at most `cap` bytes (more: null, and the read is cancelled). */
export function guestLayerHasher(link: AgentLink, cap = FILE_CHANGE_LIMITS.hashCap): LayerHasher {
  return async (path) => {
    const hash = createHash('sha256');
    let total = 0;
    try {
      for await (const chunk of link.readLayerFileStream(path.replace(/^\/+/, ''))) {
        total += chunk.length;
        if (total > cap) return null;
        hash.update(chunk);
      }
    } catch {
      return null; // gone, replaced by a non-file, or the link dropped: listed without a hash
    }
    return hash.digest('hex');
  };
}

/** What the microvm's layer gained and lost since the tracker's last look (source 'guest'). */
export function guestLayerChanges(tracker: FileChangeTracker, sandbox: string, link: AgentLink): Promise<FileChanges | null> {
  return tracker.changesFrom(sandbox, () => guestLayerWalk(link), guestLayerHasher(link), GUEST_HASH_BUDGET_MS);
}

/** The first look at a microvm's layer, not reported (see FileChangeTracker.ensureBaseline). */
export function guestLayerBaseline(tracker: FileChangeTracker, sandbox: string, link: AgentLink): Promise<void> {
  return tracker.ensureBaselineFrom(sandbox, () => guestLayerWalk(link));
}
