/**
 * Turns one engine exec into an NDJSON response: a line per output chunk as it arrives, then
 * an exit line. The engine cannot be paused, so a client that stops reading gets its command
 * killed once too much output is waiting, rather than the server holding unbounded memory.
 */
import { PassThrough } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { FastifyReply } from 'fastify';
import type { ExecHandlers, ExecResult } from '@airlock/engine';
import { mapError } from './errors.js';

/** How long to hold the status line back, so an exec that fails at once gets its real status (404, 409). */
const HEADER_DELAY_MS = 200;
/**
 * A blank line this often keeps a silent command's stream alive: fetch (undici) drops a body
 * that sends nothing for 300 s. NDJSON readers skip blank lines.
 */
const KEEPALIVE_MS = 30_000;
/** Output waiting for a slow client before the command is killed. */
export const MAX_PENDING_BYTES = 16 * 1024 * 1024;
/** After that, how long the client gets to drain the rest before its connection is cut. */
const SLOW_CLIENT_GRACE_MS = 30_000;

export const NDJSON = 'application/x-ndjson';

export function wantsNdjson(accept: string | undefined): boolean {
  return !!accept && accept.split(',').some((part) => part.trim().toLowerCase().startsWith(NDJSON));
}

type Outcome = { ok: true; value: ExecResult } | { ok: false; error: unknown };

/**
 * Runs `run` and answers with a stream; resolves once the response has begun (or throws the
 * exec's error when it failed before anything was sent, so the error handler answers it).
 */
export async function respondWithExecStream(
  reply: FastifyReply,
  abort: AbortController,
  run: (handlers: ExecHandlers) => Promise<ExecResult>,
): Promise<void> {
  const out = new PassThrough();
  out.on('error', () => { /* the client left; the exec is aborted via the close hook */ });
  let wroteAny = false;
  let tooSlow = false;
  const writeLine = (line: object) => {
    if (out.destroyed || out.writableEnded) return;
    out.write(`${JSON.stringify(line)}\n`);
    wroteAny = true;
    if (!tooSlow && out.writableLength + out.readableLength > MAX_PENDING_BYTES) {
      tooSlow = true;
      abort.abort();
    }
  };

  let begin!: () => void;
  const begun = new Promise<void>((resolve) => { begin = resolve; });
  const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  const onChunk = (type: 'stdout' | 'stderr') => (chunk: Buffer) => {
    if (tooSlow) return;
    const data = decoders[type].write(chunk);
    if (data.length > 0) writeLine({ type, data });
    begin();
  };
  const flushDecoders = () => {
    for (const type of ['stdout', 'stderr'] as const) {
      const rest = decoders[type].end();
      if (rest.length > 0 && !tooSlow) writeLine({ type, data: rest });
    }
  };

  let outcome: Outcome | null = null;
  const settled = run({ onStdout: onChunk('stdout'), onStderr: onChunk('stderr'), signal: abort.signal })
    .then((value) => { outcome = { ok: true, value }; }, (error: unknown) => { outcome = { ok: false, error }; });
  const timer = setTimeout(begin, HEADER_DELAY_MS);
  await Promise.race([begun, settled]);
  clearTimeout(timer);

  const early = outcome as Outcome | null;
  if (early && !early.ok && !wroteAny) {
    out.destroy();
    throw early.error;
  }

  reply.code(200)
    .header('content-type', `${NDJSON}; charset=utf-8`)
    .header('cache-control', 'no-store')
    .header('x-content-type-options', 'nosniff')
    .send(out);
  const keepalive = setInterval(() => { if (!out.destroyed && !out.writableEnded) out.write('\n'); }, KEEPALIVE_MS);
  keepalive.unref();

  void settled.then(() => {
    clearInterval(keepalive);
    const o = outcome as Outcome | null;
    flushDecoders();
    if (tooSlow) {
      writeLine({ type: 'error', error: { code: 'too_large', message: 'the client read output too slowly; the command was killed' } });
    } else if (o?.ok) {
      const r = o.value;
      writeLine({ type: 'exit', exitCode: r.exitCode, reason: r.reason, durationMs: r.durationMs, ...(r.truncated ? { truncated: true } : {}) });
    } else {
      const { body, internal } = mapError(o?.error);
      if (internal) reply.log.error({ err: o?.error }, 'exec failed after its stream began');
      writeLine({ type: 'error', error: { code: body.error.code, message: body.error.message } });
    }
    out.end();
    if (tooSlow) {
      setTimeout(() => { if (!reply.raw.writableFinished) reply.raw.destroy(); }, SLOW_CLIENT_GRACE_MS).unref();
    }
  });
}
