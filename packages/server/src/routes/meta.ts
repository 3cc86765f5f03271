import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { errorResponses, health, templateList } from '../schemas.js';

export function metaRoutes(app: FastifyInstance, engine: AirlockEngine, version: string): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/templates', {
    schema: { tags: ['templates'], summary: 'List templates', response: { 200: templateList, ...errorResponses } },
  }, async (req) => {
    // Host paths are the operator's business, not a tenant's.
    const admin = callerOf(req).tenant === null;
    const templates = engine.listTemplates().map(({ path, ...t }) => (admin ? { ...t, path } : t));
    return { templates };
  });

  r.get('/healthz', {
    config: { public: true },
    schema: { tags: ['meta'], summary: 'Liveness', response: { 200: health } },
  }, async () => ({ ok: true, version }));

  r.get('/openapi.json', {
    config: { public: true },
    schema: { tags: ['meta'], summary: 'This document', response: { 200: z.looseObject({ openapi: z.string() }) } },
  }, async () => {
    doc ??= withRawUploadBody(app.swagger() as unknown as OpenApiDoc);
    return doc;
  });
  let doc: OpenApiDoc | undefined;
}

type OpenApiDoc = { openapi: string; paths?: Record<string, Record<string, Record<string, unknown>>> };

/** The upload route's body is raw bytes, which no zod schema describes; say so in the document. */
function withRawUploadBody(doc: OpenApiDoc): OpenApiDoc {
  const put = doc.paths?.['/v1/sandboxes/{id}/files']?.put;
  if (put) {
    put.requestBody = {
      required: true,
      description: 'the file content; any content type is taken as raw bytes',
      content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
    };
  }
  return doc;
}
