/** Tenants and their API keys (admin keys only; the engine refuses anyone else with 403). */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, CreateKeyInput } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { errorResponses, noContent } from '../schemas.js';
import {
  createdKey, createKeyBody, createTenantBody, keyList, keyParams, keysQuery, tenantInfo, tenantList, tenantParams,
} from '../tenant-schemas.js';

export function tenantRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/tenants', {
    schema: { tags: ['tenants'], summary: 'Create a tenant (admin; 409 if it exists)', body: createTenantBody, response: { 201: tenantInfo, ...errorResponses } },
  }, async (req, reply) => reply.code(201).send(engine.createTenant(callerOf(req), req.body.name)));

  r.get('/v1/tenants', {
    schema: { tags: ['tenants'], summary: 'List tenants (admin)', response: { 200: tenantList, ...errorResponses } },
  }, async (req) => ({ tenants: engine.listTenants(callerOf(req)) }));

  r.delete('/v1/tenants/:name', {
    schema: {
      tags: ['tenants'], summary: 'Remove a tenant and revoke its keys (admin; 409 while it has live sandboxes or volumes)',
      params: tenantParams, response: { 204: noContent, ...errorResponses },
    },
  }, async (req, reply) => {
    engine.deleteTenant(callerOf(req), req.params.name);
    return reply.code(204).send();
  });

  r.post('/v1/keys', {
    schema: {
      tags: ['keys'], summary: 'Create an API key (admin); the answer holds the key, shown this once',
      body: createKeyBody, response: { 201: createdKey, ...errorResponses },
    },
  }, async (req, reply) => reply.code(201).send(engine.createKey(callerOf(req), req.body as CreateKeyInput)));

  r.get('/v1/keys', {
    schema: { tags: ['keys'], summary: 'List API keys, revoked ones included (admin; never the keys themselves)', querystring: keysQuery, response: { 200: keyList, ...errorResponses } },
  }, async (req) => ({ keys: engine.listKeys(callerOf(req), req.query.tenant !== undefined ? { tenant: req.query.tenant } : {}) }));

  r.delete('/v1/keys/:id', {
    schema: { tags: ['keys'], summary: 'Revoke an API key (admin); takes effect at once', params: keyParams, response: { 204: noContent, ...errorResponses } },
  }, async (req, reply) => {
    engine.revokeKey(callerOf(req), req.params.id);
    return reply.code(204).send();
  });
}
