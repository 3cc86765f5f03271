/**
 * Files of a sandbox: streamed both ways (no whole-file buffering, so a 1 GiB upload or
 * download costs the daemon a few MiB), plus stat, mkdir, rename, a watch (SSE) and the
 * outputs. Every path is resolved by the sandbox's agent inside the sandbox's own root.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { AirlockError, type AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { mkdirQuery, pathStat, renameBody } from '../file-schemas.js';
import type { LiveRequests } from '../live-requests.js';
import {
  errorResponses, fileDeleteQuery, fileEntries, filePathQuery, fileStat, fileWriteQuery, idParams, noContent,
} from '../schemas.js';
import { outputRoutes } from './outputs.js';
import { watchRoute } from './file-watch.js';

const tags = ['files'];

/** Node stream over an async iterable of Buffers: pulled only as fast as the client reads. */
function byteStream(chunks: AsyncIterable<Buffer>): Readable {
  return Readable.from(chunks, { objectMode: false, highWaterMark: 1024 * 1024 });
}

const tooLarge = (limit: number) => new AirlockError('too_large', `upload is larger than the limit of ${limit} bytes`);

/**
 * The request body as it arrives, counted against the limit. Failures are AirlockErrors, so
 * the engine passes them through: 413 past the limit, 400 when the client hung up mid-body.
 */
async function* uploadBody(body: AsyncIterable<Buffer> | undefined, limit: number): AsyncGenerator<Buffer> {
  if (!body) return;
  let total = 0;
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    let r: IteratorResult<Buffer>;
    try {
      r = await it.next();
    } catch {
      throw new AirlockError('bad_request', 'the upload was interrupted before its end');
    }
    if (r.done) return;
    total += r.value.length;
    if (total > limit) throw tooLarge(limit);
    yield r.value;
  }
}

/** Request bytes read and dropped after an early answer (413, 404 …) before the connection is cut. */
const DISCARD_LIMIT_BYTES = 64 * 1024 * 1024;

/**
 * An answer (413, 404 …) while the client is still sending: the rest of the body is read and
 * dropped first, so the client, still writing, gets to read the answer (Node stops reading a
 * connection once its response is out, and closing it would hit the client with a reset
 * mid-write). Past a bound the answer goes out with `connection: close` instead of reading
 * gigabytes for nothing.
 */
function discardRest(req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const raw = req.raw;
  if (raw.complete || raw.destroyed) return Promise.resolve();
  if (!req.caller) {
    // Nobody we know: not a byte more is read for them.
    reply.header('connection', 'close');
    return Promise.resolve();
  }
  return new Promise<void>((resolve) => {
    let dropped = 0;
    const done = (): void => {
      raw.off('data', onData);
      raw.off('end', done);
      raw.off('close', done);
      resolve();
    };
    const onData = (c: Buffer): void => {
      dropped += c.length;
      if (dropped > DISCARD_LIMIT_BYTES) {
        reply.header('connection', 'close');
        raw.pause();
        done();
      }
    };
    // An abandoned async iterator leaves a 'readable' listener, which keeps the stream paused
    // whatever else listens: without it, 'data' makes it flow again.
    raw.removeAllListeners('readable');
    raw.on('data', onData);
    raw.once('end', done);
    raw.once('close', done);
    raw.resume();
  });
}

export function fileRoutes(app: FastifyInstance, engine: AirlockEngine, uploadLimitBytes: number, live: LiveRequests): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/sandboxes/:id/files', {
    schema: {
      tags, summary: 'Read a file (streamed bytes) or list a directory (JSON)',
      params: idParams, querystring: filePathQuery,
      response: {
        200: {
          description: 'application/octet-stream for a file (streamed), {entries} for a directory',
          content: {
            'application/json': { schema: fileEntries },
            'application/octet-stream': { schema: z.string().describe('file bytes') },
          },
        },
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const caller = callerOf(req);
    const { id } = req.params;
    const { path } = req.query;
    const stat = await engine.statPath(caller, id, path);
    if (stat.type === 'dir') return reply.send({ entries: await engine.listDir(caller, id, path) });
    // Resolves after the first bytes: a missing file or a link is still a proper error answer.
    const chunks = await engine.readFileStream(caller, id, path);
    return reply
      .header('content-type', 'application/octet-stream')
      .header('x-content-type-options', 'nosniff')
      // Streams bypass the serializer; the cast only satisfies the per-content-type typing.
      .send(byteStream(chunks) as unknown as string);
  });

  r.get('/v1/sandboxes/:id/files/stat', {
    schema: {
      tags, summary: 'Type, size, mode and mtime of a path (a link is reported, not followed)',
      params: idParams, querystring: filePathQuery, response: { 200: pathStat, ...errorResponses },
    },
  }, async (req) => {
    const { path } = req.query;
    return { path, ...(await engine.statPath(callerOf(req), req.params.id, path)) };
  });

  r.post('/v1/sandboxes/:id/files/mkdir', {
    schema: {
      tags, summary: 'Create a directory (parents=1: with missing parents, like mkdir -p)',
      params: idParams, querystring: mkdirQuery, response: { 201: pathStat, ...errorResponses },
    },
  }, async (req, reply) => {
    const { path, parents, mode } = req.query;
    const opts: { parents?: boolean; mode?: number } = { parents: parents ?? false };
    if (mode !== undefined) opts.mode = parseInt(mode, 8);
    const st = await engine.makeDir(callerOf(req), req.params.id, path, opts);
    return reply.code(201).send({ path, ...st });
  });

  r.post('/v1/sandboxes/:id/files/rename', {
    schema: {
      tags, summary: 'Rename or move a path; 409 if `to` exists unless overwrite',
      description: 'A link in the last component of either path is moved or replaced itself, never followed.',
      params: idParams, body: renameBody, response: { 200: pathStat, ...errorResponses },
    },
  }, async (req) => {
    const { from, to, overwrite } = req.body;
    const st = await engine.renamePath(callerOf(req), req.params.id, from, to, { overwrite: overwrite ?? false });
    return { path: to, ...st };
  });

  r.delete('/v1/sandboxes/:id/files', {
    schema: {
      tags, summary: 'Delete a file, link or (recursive=1) directory',
      params: idParams, querystring: fileDeleteQuery, response: { 204: noContent, ...errorResponses },
    },
  }, async (req, reply) => {
    const { path, recursive } = req.query;
    await engine.deletePath(callerOf(req), req.params.id, path, { recursive: recursive ?? false });
    return reply.code(204).send();
  });

  watchRoute(app, engine, live);
  outputRoutes(app, engine);

  // Uploads live in their own context: every content type is raw bytes there (curl's default
  // form type and application/json included), handed to the route as the request stream
  // itself, so the body flows to the sandbox with backpressure instead of being buffered.
  app.register(async (uploads) => {
    uploads.removeAllContentTypeParsers();
    uploads.addHook('onSend', async (req, reply) => { await discardRest(req, reply); });
    uploads.addContentTypeParser('*', (_req, payload, done) => { done(null, payload); });
    uploads.withTypeProvider<ZodTypeProvider>().put('/v1/sandboxes/:id/files', {
      schema: {
        tags, summary: 'Write a file from the raw request body (streamed; any content type)',
        consumes: ['application/octet-stream'],
        params: idParams, querystring: fileWriteQuery, response: { 200: fileStat, ...errorResponses },
      },
    }, async (req) => {
      // A declared size past the limit is refused before anything is read or any sandbox looked up.
      const declared = Number(req.headers['content-length']);
      if (Number.isFinite(declared) && declared > uploadLimitBytes) throw tooLarge(uploadLimitBytes);
      const { path, mode } = req.query;
      const opts = mode === undefined ? {} : { mode: parseInt(mode, 8) };
      const body = req.body as AsyncIterable<Buffer> | undefined;
      const stat = await engine.writeFile(callerOf(req), req.params.id, path, uploadBody(body, uploadLimitBytes), opts);
      return { path, ...stat };
    });
  });
}
