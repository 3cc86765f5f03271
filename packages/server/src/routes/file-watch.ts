/**
 * GET /v1/sandboxes/:id/files/watch: changes under a directory as Server-Sent Events, for
 * agents that wait on output. The watch is in place before the 200 goes out (a bad path is
 * a normal error answer); `ready` is the first event, `end` the last.
 */
import { PassThrough } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, FileWatchEvent } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { watchQuery } from '../file-schemas.js';
import type { LiveRequests } from '../live-requests.js';
import { errorResponses, idParams } from '../schemas.js';
import { SSE_HEARTBEAT } from '../sse.js';

const HEARTBEAT_MS = 15_000;
/** Unsent bytes beyond which events are dropped for one `overflow` (a client that does not read). */
const MAX_PENDING_BYTES = 1024 * 1024;

/** One SSE message; JSON.stringify escapes newlines, so `data` stays one line. */
export function sseEvent(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function watchRoute(app: FastifyInstance, engine: AirlockEngine, live: LiveRequests): void {
  app.withTypeProvider<ZodTypeProvider>().get('/v1/sandboxes/:id/files/watch', {
    schema: {
      tags: ['files'],
      summary: 'Watch a directory (recursive=1: and everything below it) as Server-Sent Events',
      description: 'Events: `ready` {path}, then `created` | `modified` | `deleted` | `moved` | `overflow` '
        + 'with data {type, path, isDir, from?}, and last `end` {reason: stopped | removed | sandbox_ended}. '
        + 'Changes are coalesced over 50 ms; `overflow` means some were dropped (list again). '
        + 'A comment line is sent every 15 s. Closing the connection ends the watch.',
      params: idParams,
      querystring: watchQuery,
      response: {
        200: {
          description: 'text/event-stream',
          content: { 'text/event-stream': { schema: z.string().describe('event: TYPE / data: {type, path, isDir, from?}') } },
        },
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const { path, recursive } = req.query;
    const out = new PassThrough();
    out.on('error', () => { /* client gone */ });
    const abort = new AbortController();
    let dropping = false;
    // Events that arrive with the agent's `ready` (same read) wait until our `ready` is out.
    let early: FileWatchEvent[] | null = [];
    let earlyOverflow = false;
    const pending = (): number => out.writableLength + out.readableLength;
    const onEvent = (e: FileWatchEvent): void => {
      if (abort.signal.aborted) return;
      if (early) {
        if (early.length < 1024) early.push(e);
        else earlyOverflow = true;
        return;
      }
      if (dropping || pending() > MAX_PENDING_BYTES) {
        // Memory stays bounded: the client hears one overflow once it caught up.
        if (!dropping) out.once('drain', () => {
          dropping = false;
          if (!abort.signal.aborted) out.write(sseEvent('overflow', { type: 'overflow', path, isDir: true }));
        });
        dropping = true;
        return;
      }
      out.write(sseEvent(e.type, e));
    };

    const watch = await engine.watchFiles(callerOf(req), req.params.id, path, { recursive: recursive ?? false }, onEvent, abort.signal);
    const heartbeat = setInterval(() => { if (!abort.signal.aborted) out.write(SSE_HEARTBEAT); }, HEARTBEAT_MS);
    heartbeat.unref();
    const stop = (): void => abort.abort();
    const unregister = live.add(stop);
    reply.raw.once('close', stop);
    void watch.done.then((reason) => {
      clearInterval(heartbeat);
      unregister();
      if (!out.writableEnded) {
        out.write(sseEvent('end', { reason }));
        out.end();
      }
    });

    reply.code(200)
      .header('content-type', 'text/event-stream; charset=utf-8')
      .header('cache-control', 'no-cache')
      .header('x-accel-buffering', 'no')
      .send(out as unknown as string);
    out.write(sseEvent('ready', { path }));
    const held = early;
    early = null;
    for (const e of held) onEvent(e);
    if (earlyOverflow) out.write(sseEvent('overflow', { type: 'overflow', path, isDir: true }));
    return reply;
  });
}
