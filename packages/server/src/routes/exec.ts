import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, ExecRequest } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { HttpError } from '../errors.js';
import { respondWithExecStream, wantsNdjson, NDJSON } from '../exec-stream.js';
import { LiveRequests, onClientGone } from '../live-requests.js';
import {
  errorResponses, execBody, execResult, execStarted, execStreamLine, idParams, killProcessQuery, noContent,
  processList, processParams,
} from '../schemas.js';
import { parseSignal } from '../signals.js';

const tags = ['exec'];

export function execRoutes(app: FastifyInstance, engine: AirlockEngine, live: LiveRequests): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/sandboxes/:id/exec', {
    schema: {
      tags,
      summary: 'Run a command; with Accept: application/x-ndjson the output streams as it is produced',
      description: 'Closing the connection kills the command.',
      params: idParams,
      body: execBody,
      response: {
        200: {
          description: 'The finished command, or (NDJSON) one line per output chunk then an exit line',
          content: {
            'application/json': { schema: execResult },
            [NDJSON]: { schema: execStreamLine },
          },
        },
        202: execStarted,
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const caller = callerOf(req);
    const { background, ...rest } = req.body;
    const request: ExecRequest = rest;
    if (background) {
      const started = await engine.execBackground(caller, req.params.id, request);
      return reply.code(202).send(started);
    }

    const abort = new AbortController();
    const unregister = live.add(() => abort.abort());
    onClientGone(reply.raw, () => abort.abort());
    reply.raw.once('close', unregister);
    try {
      if (wantsNdjson(req.headers.accept)) {
        await respondWithExecStream(reply, abort, (handlers) => engine.exec(caller, req.params.id, request, handlers));
        return reply;
      }
      const result = await engine.exec(caller, req.params.id, request, { signal: abort.signal });
      return reply.send(result);
    } catch (err) {
      unregister();
      throw err;
    }
  });

  r.get('/v1/sandboxes/:id/processes', {
    schema: { tags, summary: 'List processes in the sandbox', params: idParams, response: { 200: processList, ...errorResponses } },
  }, async (req) => ({ processes: await engine.listProcesses(callerOf(req), req.params.id) }));

  r.delete('/v1/sandboxes/:id/processes/:pid', {
    schema: {
      tags, summary: 'Signal one process (default SIGKILL)',
      params: processParams, querystring: killProcessQuery,
      response: { 204: noContent, ...errorResponses },
    },
  }, async (req, reply) => {
    const signal = parseSignal(req.query.signal);
    if (signal === null) throw new HttpError(400, 'bad_request', `signal: unknown signal ${req.query.signal}`, 'signal');
    await engine.killProcess(callerOf(req), req.params.id, req.params.pid, signal);
    return reply.code(204).send();
  });
}
