import type { FastifyInstance, FastifyReply } from 'fastify';
import { z } from 'zod';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, ListFilter, SandboxSpecInput } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { HttpError } from '../errors.js';
import { onClientGone } from '../live-requests.js';
import {
  createSandboxBody, errorResponses, idParams, listSandboxesQuery, networkPolicyInput, sandboxInfo, sandboxList, setTimeoutBody,
} from '../schemas.js';

const tags = ['sandboxes'];

/** `?state=running&metadata.team=x` → ListFilter; anything else is a typo worth a 400. */
export function listFilterFrom(query: Record<string, unknown>): ListFilter {
  const filter: ListFilter = {};
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(query)) {
    if (key === 'state') continue;
    if (!key.startsWith('metadata.') || key.length === 'metadata.'.length) {
      throw new HttpError(400, 'bad_request', `${key}: unknown query parameter`, key);
    }
    if (typeof value !== 'string') throw new HttpError(400, 'bad_request', `${key}: give it once`, key);
    metadata[key.slice('metadata.'.length)] = value;
  }
  if (typeof query.state === 'string') filter.state = query.state as ListFilter['state'];
  if (Object.keys(metadata).length > 0) filter.metadata = metadata;
  return filter;
}

/** Aborts when the client hangs up before the answer: what it waits for (an approval) is withdrawn. */
function clientGone(reply: FastifyReply): AbortSignal {
  const abort = new AbortController();
  onClientGone(reply.raw, () => abort.abort());
  return abort.signal;
}

export function sandboxRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/sandboxes', {
    schema: {
      tags, summary: 'Create and start a sandbox',
      body: createSandboxBody.optional(),
      response: { 201: sandboxInfo, ...errorResponses },
    },
  }, async (req, reply) => {
    const info = await engine.createSandbox(callerOf(req), (req.body ?? {}) as SandboxSpecInput, { signal: clientGone(reply) });
    return reply.code(201).send(info);
  });

  r.get('/v1/sandboxes', {
    schema: {
      tags, summary: 'List sandboxes (filter with state= and metadata.KEY=VALUE)',
      querystring: listSandboxesQuery,
      response: { 200: sandboxList, ...errorResponses },
    },
  }, async (req) => ({ sandboxes: engine.listSandboxes(callerOf(req), listFilterFrom(req.query)) }));

  r.get('/v1/sandboxes/:id', {
    schema: { tags, summary: 'Get one sandbox', params: idParams, response: { 200: sandboxInfo, ...errorResponses } },
  }, async (req) => engine.getSandbox(callerOf(req), req.params.id));

  r.delete('/v1/sandboxes/:id', {
    schema: { tags, summary: 'Kill a sandbox', params: idParams, response: { 200: sandboxInfo, ...errorResponses } },
  }, async (req) => engine.killSandbox(callerOf(req), req.params.id));

  r.post('/v1/sandboxes/:id/timeout', {
    schema: {
      tags, summary: 'Set the remaining lifetime to timeoutSeconds from now',
      params: idParams, body: setTimeoutBody, response: { 200: sandboxInfo, ...errorResponses },
    },
  }, async (req, reply) => engine.setSandboxTimeout(callerOf(req), req.params.id, req.body.timeoutSeconds, { signal: clientGone(reply) }));

  r.post('/v1/sandboxes/:id/pause', {
    schema: {
      tags, summary: 'Freeze every process of the sandbox (no CPU; memory, files and network kept); exec and files answer 409 until resume',
      params: idParams, response: { 200: sandboxInfo, ...errorResponses },
    },
  }, async (req) => engine.pauseSandbox(callerOf(req), req.params.id));

  r.post('/v1/sandboxes/:id/resume', {
    schema: { tags, summary: 'Thaw a paused sandbox', params: idParams, response: { 200: sandboxInfo, ...errorResponses } },
  }, async (req) => engine.resumeSandbox(callerOf(req), req.params.id));

  r.patch('/v1/sandboxes/:id/network', {
    schema: {
      tags, summary: 'Change the egress policy live (fields left out keep their value; deny wins; refused connections are cut)',
      params: idParams, body: networkPolicyInput,
      response: { 200: sandboxInfo.extend({ cut: z.number().int().describe('open connections the new policy cut') }), ...errorResponses },
    },
  }, async (req, reply) => engine.updateNetwork(callerOf(req), req.params.id, req.body, { signal: clientGone(reply) }));
}
