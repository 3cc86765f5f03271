import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import {
  errorResponses, fileDeleteQuery, fileEntries, filePathQuery, fileStat, fileWriteQuery, idParams, noContent,
} from '../schemas.js';

const tags = ['files'];

export function fileRoutes(app: FastifyInstance, engine: AirlockEngine, uploadLimitBytes: number): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/sandboxes/:id/files', {
    schema: {
      tags, summary: 'Read a file (bytes) or list a directory (JSON)',
      params: idParams, querystring: filePathQuery,
      response: {
        200: {
          description: 'application/octet-stream for a file, {entries} for a directory',
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
    const data = await engine.readFile(caller, id, path);
    return reply
      .header('content-type', 'application/octet-stream')
      .header('x-content-type-options', 'nosniff')
      // Buffers bypass the serializer; the cast only satisfies the per-content-type typing.
      .send(data as unknown as string);
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

  // Uploads live in their own context: every content type is raw bytes there (curl's default
  // form type and application/json included), and the body limit is the upload limit.
  app.register(async (uploads) => {
    uploads.removeAllContentTypeParsers();
    uploads.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: uploadLimitBytes }, (_req, body, done) => {
      done(null, body);
    });
    uploads.withTypeProvider<ZodTypeProvider>().put('/v1/sandboxes/:id/files', {
      bodyLimit: uploadLimitBytes,
      schema: {
        tags, summary: 'Write a file from the raw request body (application/octet-stream)',
        consumes: ['application/octet-stream'],
        params: idParams, querystring: fileWriteQuery, response: { 200: fileStat, ...errorResponses },
      },
    }, async (req) => {
      const { path, mode } = req.query;
      const data = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const opts = mode === undefined ? {} : { mode: parseInt(mode, 8) };
      const stat = await engine.writeFile(callerOf(req), req.params.id, path, data, opts);
      return { path, ...stat };
    });
  });
}
