/**
 * Extracts a tar stream that came out of a sandbox (its outputs) into a local directory,
 * treating it as hostile: an entry with an absolute path, a `..` component or a NUL is
 * refused, as are hard links, devices and FIFOs; no link is ever followed (a path that
 * goes through a symlink, one the tar just made included, is refused; a file replacing a
 * link replaces the link itself); modes lose setuid, setgid and sticky bits.
 */
import { constants as C, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';

export class UnsafeArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeArchiveError';
  }
}

export interface ExtractSummary {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
}

/** The entry's path split into safe components, or an UnsafeArchiveError. */
export function safeEntryParts(name: string): string[] {
  if (name.includes('\0')) throw new UnsafeArchiveError(`refusing entry with a NUL in its name: ${JSON.stringify(name)}`);
  if (name.startsWith('/')) throw new UnsafeArchiveError(`refusing entry with an absolute path: ${JSON.stringify(name)}`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new UnsafeArchiveError(`refusing entry with ..: ${JSON.stringify(name)}`);
  if (parts.length === 0) throw new UnsafeArchiveError(`refusing entry with an empty path: ${JSON.stringify(name)}`);
  return parts;
}

async function lstatOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fsp.lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** Creates (or checks) every directory from `root` down to `parts`, refusing any symlink on the way. */
async function ensureDirs(root: string, parts: string[], name: string): Promise<string> {
  let cur = root;
  for (const p of parts) {
    cur = join(cur, p);
    const st = await lstatOrNull(cur);
    if (!st) {
      try {
        await fsp.mkdir(cur, { mode: 0o755 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const again = await fsp.lstat(cur);
      if (!again.isDirectory()) throw new UnsafeArchiveError(`refusing ${JSON.stringify(name)}: ${cur} is not a directory`);
    } else if (st.isSymbolicLink()) {
      throw new UnsafeArchiveError(`refusing ${JSON.stringify(name)}: it goes through the link ${cur}`);
    } else if (!st.isDirectory()) {
      throw new UnsafeArchiveError(`refusing ${JSON.stringify(name)}: ${cur} is not a directory`);
    }
  }
  return cur;
}

/** Makes room for a new non-directory at `target`: an existing file or link is removed (never followed). */
async function clearTarget(target: string, name: string): Promise<void> {
  const st = await lstatOrNull(target);
  if (!st) return;
  if (st.isDirectory()) throw new UnsafeArchiveError(`refusing ${JSON.stringify(name)}: a directory is in the way`);
  await fsp.unlink(target);
}

/**
 * Extracts `source` under `destDir` (created if missing). Stops at the first unsafe entry
 * with UnsafeArchiveError; what was extracted before it stays.
 */
export async function extractTarSafely(source: AsyncIterable<Uint8Array> | Readable, destDir: string): Promise<ExtractSummary> {
  await fsp.mkdir(destDir, { recursive: true });
  const root = await fsp.realpath(destDir);
  const summary: ExtractSummary = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  const dirModes: Array<[string, number]> = [];
  const extract = tar.extract();
  const input = source instanceof Readable ? source : Readable.from(source, { objectMode: false });
  const feeding = pipeline(input, extract as unknown as NodeJS.WritableStream);
  feeding.catch(() => {}); // its failure surfaces through the entry loop below
  try {
    for await (const entry of extract) {
      const h = entry.header;
      const parts = safeEntryParts(h.name);
      const mode = (h.mode ?? 0o644) & 0o777;
      const parent = await ensureDirs(root, parts.slice(0, -1), h.name);
      const target = join(parent, parts[parts.length - 1]!);
      switch (h.type) {
        case 'directory': {
          const dir = await ensureDirs(root, parts, h.name);
          dirModes.push([dir, mode]);
          summary.dirs++;
          entry.resume();
          break;
        }
        case 'symlink': {
          await clearTarget(target, h.name);
          await fsp.symlink(h.linkname ?? '', target);
          summary.symlinks++;
          entry.resume();
          break;
        }
        case 'file':
        case 'contiguous-file':
        case undefined:
        case null: {
          await clearTarget(target, h.name);
          // O_EXCL | O_NOFOLLOW: whatever appears at `target` meanwhile is never written through.
          const fh = await fsp.open(target, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
          try {
            for await (const chunk of entry) {
              await fh.write(chunk as Buffer);
              summary.bytes += (chunk as Buffer).length;
            }
            await fh.chmod(mode);
          } finally {
            await fh.close();
          }
          summary.files++;
          break;
        }
        default:
          throw new UnsafeArchiveError(`refusing ${JSON.stringify(h.name)}: entries of type ${h.type} are not extracted`);
      }
    }
    await feeding;
  } catch (e) {
    extract.destroy();
    input.destroy();
    throw e;
  }
  // Last, deepest first: a read-only directory must not stop its own contents being written.
  for (const [dir, mode] of dirModes.reverse()) await fsp.chmod(dir, mode);
  return summary;
}
