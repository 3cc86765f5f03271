/**
 * File operations on one running sandbox, all done by its agent from inside the sandbox's
 * own root (docs/agent-protocol.md): the host never resolves a path of the sandbox itself.
 * The engine hands each call a FileContext for a sandbox that is running and reachable.
 */
import { AgentDisconnectedError, type AgentLink, type AgentFileStat } from '../agent/agent-link.js';
import type { FileStat } from '../engine-api.js';
import { AirlockError, badRequest } from '../errors.js';
import { mapAgentError } from '../sandbox/agent-errors.js';
import type { FileData, FileWatchEnd, FileWatchEvent, FileWatchHandle } from './types.js';

export interface FileContext {
  link: AgentLink;
  sandbox: string;
  /** Where outputs are collected from (the spec's outputPath). */
  outputPath: string;
  /** Appends an audit event for this sandbox. */
  audit(type: string, data: Record<string, unknown>): void;
}

const MAX_PATH_BYTES = 4096;

export function checkPath(path: unknown, field = 'path'): asserts path is string {
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0') || Buffer.byteLength(path) > MAX_PATH_BYTES) {
    throw badRequest(`${field}: must be an absolute path without NUL, at most ${MAX_PATH_BYTES} bytes`, field);
  }
}

function checkMode(mode: unknown, max: number): number {
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > max) {
    throw badRequest(`mode: must be an octal permission (0..0${max.toString(8)})`, 'mode');
  }
  return mode;
}

/** Lexical normalization as the agent does it (`..` stops at `/`): for refusing `/` early. */
function isRoot(path: string): boolean {
  return path.split('/').every((c) => c === '' || c === '.' || c === '..');
}

export function toFileStat(st: AgentFileStat): FileStat {
  return { type: st.type, size: st.size, mode: st.mode, mtime: new Date(st.mtimeSec * 1000).toISOString() };
}

/**
 * Opens a file for streaming: resolves once the first bytes (or the end) arrived, so a
 * missing file, a directory or a link is an error here, before any byte is handed out.
 * Leaving the returned iterable early cancels the read in the agent.
 */
export async function readFileStream(ctx: FileContext, path: string): Promise<AsyncIterable<Buffer>> {
  checkPath(path);
  const it = ctx.link.readFileStream(path)[Symbol.asyncIterator]();
  let first: IteratorResult<Buffer>;
  try {
    first = await it.next();
  } catch (e) {
    throw mapAgentError(e, path);
  }
  return (async function* () {
    let size = 0;
    let complete = false;
    try {
      if (first.done) {
        complete = true;
        return;
      }
      size += first.value.length;
      yield first.value;
      for (;;) {
        let r: IteratorResult<Buffer>;
        try {
          r = await it.next();
        } catch (e) {
          throw mapAgentError(e, path);
        }
        if (r.done) break;
        size += r.value.length;
        yield r.value;
      }
      complete = true;
    } finally {
      if (!complete) await it.return?.();
      ctx.audit('file.read', complete ? { path, size } : { path, size, complete: false });
    }
  })();
}

/** Buffers pass as one; anything else is streamed with backpressure (never gathered). */
export function toChunks(data: FileData): Buffer | AsyncIterable<Buffer> {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (data && typeof (data as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
    return (async function* () {
      for await (const chunk of data as AsyncIterable<unknown>) {
        if (typeof chunk === 'string') yield Buffer.from(chunk);
        else if (chunk instanceof Uint8Array) yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        else throw badRequest('data: a stream must yield bytes', 'data');
      }
    })();
  }
  throw badRequest('data: must be bytes or an async iterable of bytes', 'data');
}

export async function makeDir(ctx: FileContext, path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<FileStat> {
  checkPath(path);
  const mode = checkMode(opts.mode ?? 0o755, 0o777);
  try {
    await ctx.link.mkdir(path, { mode, parents: opts.parents ?? false });
    const st = await ctx.link.stat(path);
    ctx.audit('file.mkdir', { path, parents: opts.parents ?? false });
    return toFileStat(st);
  } catch (e) {
    throw mapAgentError(e, path);
  }
}

export async function renamePath(ctx: FileContext, from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<FileStat> {
  checkPath(from, 'from');
  checkPath(to, 'to');
  if (isRoot(from) || isRoot(to)) throw badRequest('refusing to rename /', isRoot(from) ? 'from' : 'to');
  try {
    const st = await ctx.link.rename(from, to, { overwrite: opts.overwrite ?? false });
    ctx.audit('file.renamed', { from, to, overwrite: opts.overwrite ?? false });
    return toFileStat(st);
  } catch (e) {
    throw mapAgentError(e, `${from} → ${to}`);
  }
}

/**
 * Watches a directory; resolves once the agent's watch is in place (errors before that are
 * thrown here). Events go to `onEvent` until `signal` aborts, `stop()` is called, the
 * directory goes away, or the sandbox ends.
 */
export async function watchFiles(
  ctx: FileContext, path: string, opts: { recursive?: boolean }, onEvent: (e: FileWatchEvent) => void, signal?: AbortSignal,
): Promise<FileWatchHandle> {
  checkPath(path);
  if (signal?.aborted) throw new AirlockError('bad_request', 'watch aborted before it started');
  const w = ctx.link.watch(path, { recursive: opts.recursive ?? false }, (e) => {
    if (e.kind === 'ready' || e.kind === 'ended') return;
    const ev: FileWatchEvent = { type: e.kind, path: e.path, isDir: e.isDir };
    if (e.from !== undefined) ev.from = e.from;
    onEvent(ev);
  });
  let stopped = false;
  const stop = (): void => {
    stopped = true;
    w.stop();
  };
  const onAbort = (): void => stop();
  signal?.addEventListener('abort', onAbort, { once: true });
  const done: Promise<FileWatchEnd> = w.done.then(
    () => (stopped ? 'stopped' as const : 'removed' as const),
    (e) => (e instanceof AgentDisconnectedError ? 'sandbox_ended' as const : 'stopped' as const),
  ).finally(() => signal?.removeEventListener('abort', onAbort));
  try {
    await w.ready;
  } catch (e) {
    signal?.removeEventListener('abort', onAbort);
    throw mapAgentError(e, path);
  }
  ctx.audit('file.watch', { path, recursive: opts.recursive ?? false });
  return { done, stop };
}
