/** Tenants' secrets (docs/secrets.md): values go in, nothing ever brings one back out. */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { errorResponses, noContent } from '../schemas.js';
import { secretInfo, secretList, secretParams, secretTenantQuery, setSecretBody } from '../secret-schemas.js';

const tags = ['secrets'];

export function secretRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.put('/v1/secrets/:name', {
    schema: {
      tags, summary: 'Create or replace a secret of the caller\'s tenant (the value is encrypted at rest and never returned)',
      params: secretParams, querystring: secretTenantQuery, body: setSecretBody, response: { 200: secretInfo, ...errorResponses },
    },
  }, async (req) => engine.setSecret(callerOf(req), req.params.name, req.body, tenantOpt(req.query.tenant)));

  r.get('/v1/secrets', {
    schema: {
      tags, summary: 'List secrets: names, hosts, header templates and times, never values',
      querystring: secretTenantQuery, response: { 200: secretList, ...errorResponses },
    },
  }, async (req) => ({ secrets: engine.listSecrets(callerOf(req), tenantOpt(req.query.tenant)) }));

  r.delete('/v1/secrets/:name', {
    schema: {
      tags, summary: 'Delete a secret; sandboxes holding its placeholder can no longer use it',
      params: secretParams, querystring: secretTenantQuery, response: { 204: noContent, ...errorResponses },
    },
  }, async (req, reply) => {
    engine.deleteSecret(callerOf(req), req.params.name, tenantOpt(req.query.tenant));
    return reply.code(204).send();
  });
}

function tenantOpt(tenant: string | undefined): { tenant?: string } {
  return tenant === undefined ? {} : { tenant };
}
