/** Policy as code: versioned documents per tenant (and `default`, the server default), and a dry run. */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, PolicyTestInput } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { errorResponses } from '../schemas.js';
import { policyParams, policyQuery, policyTestBody, policyTestResult, policyVersion } from '../tenant-schemas.js';
import { policyDocumentSchema } from '@airlock/engine';

const tags = ['policies'];

export function policyRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/policies/:tenant', {
    schema: {
      tags, summary: 'A tenant\'s policy (default: the server default): the latest version, or ?version=N; a tenant key may read its own',
      params: policyParams, querystring: policyQuery, response: { 200: policyVersion, ...errorResponses },
    },
  }, async (req) => engine.getPolicy(callerOf(req), req.params.tenant, req.query.version));

  r.put('/v1/policies/:tenant', {
    schema: {
      tags, summary: 'Set a tenant\'s policy (admin): stored as the next version; applies to the next create and every live change',
      params: policyParams, body: policyDocumentSchema, response: { 200: policyVersion, ...errorResponses },
    },
  }, async (req) => engine.setPolicy(callerOf(req), req.params.tenant, req.body));

  r.post('/v1/policies/test', {
    schema: {
      tags, summary: 'Judge a sandbox spec against a policy without creating anything: every rule with its verdict',
      body: policyTestBody, response: { 200: policyTestResult, ...errorResponses },
    },
  }, async (req) => engine.testPolicy(callerOf(req), req.body as PolicyTestInput));
}
