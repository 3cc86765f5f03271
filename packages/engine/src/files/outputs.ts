/**
 * A sandbox's outputs: everything under its output directory (default /work/out), as a tar
 * stream or a list with SHA-256 sums. The agent walks the tree from inside the sandbox with
 * every level opened relative to its parent and O_NOFOLLOW (FWALK), so nothing outside the
 * output directory is ever read: links are recorded as links, never followed, and a
 * directory swapped for a link mid-walk is not entered. The tar is built here, host-side,
 * from that one stream; only regular files, directories and symlinks appear in it.
 */
import { createHash } from 'node:crypto';
import { Readable, type Writable } from 'node:stream';
import tar from 'tar-stream';
import { AgentError, type AgentWalkItem } from '../agent/agent-link.js';
import { AirlockError } from '../errors.js';
import { mapAgentError } from '../sandbox/agent-errors.js';
import type { FileContext } from './sandbox-files.js';
import type { OutputEntry, OutputsListing } from './types.js';

const ENOENT = 2;
/** A JSON list is held in memory; a tar is streamed and needs no such bound. */
export const MAX_LISTED_OUTPUTS = 100_000;

type WalkIterator = AsyncIterator<AgentWalkItem>;

/**
 * Starts the walk and waits for its first answer, so that a bad output directory (a link:
 * 400) is an error before any byte goes out. A missing output directory is no outputs.
 */
async function openWalk(ctx: FileContext): Promise<{ it: WalkIterator; first: IteratorResult<AgentWalkItem> }> {
  const it = ctx.link.walk(ctx.outputPath)[Symbol.asyncIterator]();
  try {
    return { it, first: await it.next() };
  } catch (e) {
    if (e instanceof AgentError && e.errno === ENOENT) return { it, first: { done: true, value: undefined } };
    throw mapAgentError(e, ctx.outputPath);
  }
}

async function* items(it: WalkIterator, first: IteratorResult<AgentWalkItem>, root: string): AsyncGenerator<AgentWalkItem> {
  let r = first;
  let finished = false;
  try {
    while (!r.done) {
      yield r.value;
      try {
        r = await it.next();
      } catch (e) {
        throw mapAgentError(e, root);
      }
    }
    finished = true;
  } finally {
    if (!finished) await it.return?.();
  }
}

const noop = (): void => {};
const mtimeIso = (sec: number): string => new Date(sec * 1000).toISOString();

/** Every entry with its metadata; files hashed as they stream through (nothing is kept). */
export async function listOutputs(ctx: FileContext): Promise<OutputsListing> {
  const { it, first } = await openWalk(ctx);
  const entries: OutputEntry[] = [];
  let hash: ReturnType<typeof createHash> | null = null;
  let current: OutputEntry | null = null;
  let bytes = 0;
  const close = (): void => {
    if (hash && current) current.sha256 = hash.digest('hex');
    hash = null;
  };
  for await (const item of items(it, first, ctx.outputPath)) {
    if (Buffer.isBuffer(item)) {
      hash!.update(item);
      bytes += item.length;
      continue;
    }
    close();
    if (entries.length >= MAX_LISTED_OUTPUTS) {
      throw new AirlockError('too_large', `${ctx.outputPath} holds more than ${MAX_LISTED_OUTPUTS} entries; ask for format=tar`);
    }
    current = { path: item.path, type: item.type, size: item.type === 'file' ? item.size : 0, mode: item.mode, mtime: mtimeIso(item.mtimeSec) };
    if (item.type === 'symlink') current.linkTarget = item.linkTarget;
    if (item.type === 'file') hash = createHash('sha256');
    entries.push(current);
  }
  close();
  ctx.audit('outputs.read', { path: ctx.outputPath, format: 'list', entries: entries.length, bytes });
  return { root: ctx.outputPath, entries };
}

/** Writes to a tar entry, waiting while the pack is backed up (nothing piles up here). */
async function writeEntry(entry: Writable, chunk: Buffer): Promise<void> {
  if (entry.write(chunk)) return;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      entry.off('drain', done);
      entry.off('close', done);
      resolve();
    };
    entry.on('drain', done);
    entry.on('close', done);
  });
}

/**
 * The outputs as a tar stream (regular files, directories, symlinks; names relative to the
 * output directory). Destroying the stream (a client that went away) cancels the walk.
 */
export async function tarOutputs(ctx: FileContext): Promise<Readable> {
  const { it, first } = await openWalk(ctx);
  const pack = tar.pack();
  let entries = 0;
  let bytes = 0;
  const produce = async (): Promise<void> => {
    let entry: Writable | null = null;
    let left = 0;
    for await (const item of items(it, first, ctx.outputPath)) {
      if (pack.destroyed) return;
      if (Buffer.isBuffer(item)) {
        await writeEntry(entry!, item);
        bytes += item.length;
        left -= item.length;
        if (left === 0) {
          entry!.end();
          entry = null;
        }
        continue;
      }
      entries++;
      const header = { name: item.path, mode: item.mode & 0o7777, mtime: new Date(item.mtimeSec * 1000) };
      // Entries report errors as events too; the pack's own error is what the reader sees.
      if (item.type === 'dir') {
        pack.entry({ ...header, type: 'directory' }).on('error', noop);
      } else if (item.type === 'symlink') {
        pack.entry({ ...header, type: 'symlink', linkname: item.linkTarget }).on('error', noop);
      } else {
        const e = pack.entry({ ...header, type: 'file', size: item.size }) as unknown as Writable;
        e.on('error', noop);
        if (item.size === 0) e.end();
        else {
          entry = e;
          left = item.size;
        }
      }
    }
    pack.finalize();
    ctx.audit('outputs.read', { path: ctx.outputPath, format: 'tar', entries, bytes });
  };
  produce().catch((e: unknown) => {
    if (!pack.destroyed) pack.destroy(e instanceof Error ? e : new Error(String(e)));
  });
  // A Node stream over the pack: fastify and pipeline() handle it; destroying it destroys the
  // pack, whose next write fails, which ends the loop above and cancels the walk.
  return Readable.from(pack, { objectMode: false });
}
