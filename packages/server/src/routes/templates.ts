/**
 * Template administration: build from a recipe, import an image tarball, remove. Operators
 * only (an admin key); tenants may list templates (GET /v1/templates, in meta.ts) and use them.
 */
import { PassThrough, type Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, TemplateInfo } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { HttpError, mapError } from '../errors.js';
import { NDJSON, wantsNdjson } from '../exec-stream.js';
import { errorResponses, noContent, templateBuildBody, templateInfo, templateNameParams } from '../schemas.js';

const tags = ['templates'];
/** A blank line this often keeps a silent build step's stream alive (NDJSON readers skip it). */
const KEEPALIVE_MS = 30_000;
const YAML_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml'];

async function adminOnly(req: FastifyRequest): Promise<void> {
  if (callerOf(req).tenant !== null) {
    throw new HttpError(403, 'forbidden', 'only an admin key may build, import or remove templates');
  }
}

export function templateRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.delete('/v1/templates/:name', {
    onRequest: adminOnly,
    schema: { tags, summary: 'Remove a template (409 while sandboxes use it)', params: templateNameParams, response: { 204: noContent, ...errorResponses } },
  }, async (req, reply) => {
    await engine.removeTemplate(req.params.name);
    return reply.code(204).send();
  });

  app.register(async (scope) => {
    // A recipe may come as YAML text; JSON bodies keep the default parser.
    scope.addContentTypeParser(YAML_TYPES, { parseAs: 'string' }, (_req, body, done) => done(null, { recipe: body }));
    scope.withTypeProvider<ZodTypeProvider>().post('/v1/templates/:name/build', {
      onRequest: adminOnly,
      schema: {
        tags,
        summary: 'Build a template from a recipe (JSON {recipe} or {builtin: true}, or a YAML body)',
        description: 'With Accept: application/x-ndjson the answer streams {type:"log",line} lines, then {type:"done",template} or {type:"error",error}.',
        params: templateNameParams,
        body: templateBuildBody,
        response: {
          200: {
            description: 'the template; NDJSON progress lines when asked for',
            content: { 'application/json': { schema: templateInfo }, [NDJSON]: { schema: templateInfo } },
          },
          ...errorResponses,
        },
      },
    }, async (req, reply) => {
      const { name } = req.params;
      const { recipe, force } = req.body;
      const opts = { ...(recipe !== undefined ? { recipe } : {}), ...(force ? { force } : {}) };
      if (!wantsNdjson(req.headers.accept)) return engine.buildTemplate(name, opts);
      return streamBuild(reply, (log) => engine.buildTemplate(name, { ...opts, log }));
    });
  });

  app.register(async (scope) => {
    // The body is the image tarball, handed to the engine as a stream: never buffered here, and
    // bounded by the importer's own limits rather than the JSON body limit.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    scope.withTypeProvider<ZodTypeProvider>().post('/v1/templates/:name/import', {
      onRequest: adminOnly,
      schema: {
        tags,
        summary: 'Import an OCI image layout or docker save tarball (the raw request body, application/x-tar)',
        consumes: ['application/x-tar', 'application/octet-stream'],
        params: templateNameParams,
        response: { 200: templateInfo, ...errorResponses },
      },
    }, async (req) => {
      const body = req.body as Readable | undefined;
      if (!body || typeof (body as Readable).pipe !== 'function') throw new HttpError(400, 'bad_request', 'send the image tarball as the request body');
      const q = req.query as { relativizeLinks?: string } | undefined;
      const relativize = q?.relativizeLinks === '1' || q?.relativizeLinks === 'true';
      return engine.importTemplate(req.params.name, body, { absoluteSymlinks: relativize ? 'relativize' : 'reject' });
    });
  });
}

/**
 * Streams a build's progress as NDJSON. Holds the status line until the first progress line
 * (or the end), so a recipe refused at once gets its real status (400, 409) instead of a 200
 * with an error line.
 */
async function streamBuild(reply: FastifyReply, run: (log: (line: string) => void) => Promise<TemplateInfo>): Promise<FastifyReply> {
  const out = new PassThrough();
  out.on('error', () => { /* the client left; the build goes on and finishes */ });
  const pending: string[] = [];
  let streaming = false;
  let begin!: () => void;
  const begun = new Promise<void>((res) => { begin = res; });
  const write = (v: object) => { if (!out.destroyed && !out.writableEnded) out.write(`${JSON.stringify(v)}\n`); };
  const log = (line: string) => {
    if (streaming) write({ type: 'log', line });
    else pending.push(line);
    begin();
  };
  type Outcome = { ok: true; value: TemplateInfo } | { ok: false; error: unknown };
  const result: { outcome: Outcome | null } = { outcome: null };
  const settled = run(log).then((value) => { result.outcome = { ok: true, value }; }, (error: unknown) => { result.outcome = { ok: false, error }; });
  await Promise.race([begun, settled]);
  const early = result.outcome;
  if (early && !early.ok) throw early.error;

  streaming = true;
  for (const line of pending.splice(0)) write({ type: 'log', line });
  const keepalive = setInterval(() => { if (!out.destroyed && !out.writableEnded) out.write('\n'); }, KEEPALIVE_MS);
  void settled.then(() => {
    clearInterval(keepalive);
    const o = result.outcome as Outcome;
    if (o.ok) write({ type: 'done', template: o.value });
    else {
      const mapped = mapError(o.error);
      if (mapped.internal) reply.request.log.error({ err: o.error }, 'template build failed');
      // Internal detail (host paths) stays in the log, as for any other answer.
      write({ type: 'error', error: mapped.internal ? { code: mapped.body.error.code, message: 'internal error (details in the airlockd log)' } : mapped.body.error });
    }
    out.end();
  });
  return reply.header('content-type', NDJSON).header('cache-control', 'no-store').send(out);
}
