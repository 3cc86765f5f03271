/** Approvals (docs/approvals.md): list, read, approve and deny what a policy marked `ask`. */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AirlockEngine } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { errorResponses } from '../schemas.js';

const tags = ['approvals'];

const approvalState = z.enum(['pending', 'approved', 'denied', 'expired']);
const approvalParams = z.object({ id: z.string().regex(/^[0-9a-f]{12}$/, 'must be an approval id (12 hex digits)') });

export const approvalInfo = z.object({
  id: z.string(),
  tenant: z.string(),
  sandbox: z.string().nullable().describe('null for a create (the sandbox does not exist yet)'),
  kind: z.enum(['egress', 'mount_rw', 'lifetime']).describe('the kind of the first rule that asked'),
  action: z.enum(['create', 'timeout', 'network', 'egress']).describe('what waits: a create, POST …/timeout, PATCH …/network, or the sandbox\'s own egress'),
  subject: z.object({
    rules: z.array(z.object({ rule: z.string(), detail: z.string() })),
    hosts: z.array(z.string()).optional(),
    port: z.number().optional(),
    mounts: z.array(z.object({ source: z.string(), target: z.string() })).optional(),
    lifetimeSeconds: z.number().optional(),
  }),
  state: approvalState,
  requestedAt: z.string(),
  requestedBy: z.string().nullable().describe('key id whose request waits; null for the sandbox\'s own egress'),
  expiresAt: z.string().describe('when an unanswered request is denied (state expired)'),
  decidedAt: z.string().nullable(),
  decidedBy: z.string().nullable().describe('key id of who approved or denied'),
  reason: z.string().nullable(),
});

const approvalList = z.object({ approvals: z.array(approvalInfo) });
const listQuery = z.strictObject({
  state: approvalState.optional(),
  sandbox: z.string().regex(/^[a-z0-9]{12}$/, 'must be a sandbox id').optional(),
  tenant: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a tenant name').optional().describe('admin keys: one tenant\'s'),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
});
const decisionBody = z.strictObject({ reason: z.string().max(1000).optional() }).nullish();

export function approvalRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/approvals', {
    schema: {
      tags, summary: 'Approval requests, newest first: a tenant key sees its tenant\'s, an admin key all',
      querystring: listQuery, response: { 200: approvalList, ...errorResponses },
    },
  }, async (req) => ({ approvals: engine.listApprovals(callerOf(req), req.query) }));

  r.get('/v1/approvals/:id', {
    schema: { tags, summary: 'One approval request', params: approvalParams, response: { 200: approvalInfo, ...errorResponses } },
  }, async (req) => engine.getApproval(callerOf(req), req.params.id));

  r.post('/v1/approvals/:id/approve', {
    schema: {
      tags, summary: 'Approve (admin keys): the waiting action resumes; 409 when already decided or expired',
      params: approvalParams, body: decisionBody, response: { 200: approvalInfo, ...errorResponses },
    },
  }, async (req) => engine.approveApproval(callerOf(req), req.params.id, req.body ?? {}));

  r.post('/v1/approvals/:id/deny', {
    schema: {
      tags, summary: 'Deny (admin keys, or a tenant key for its own tenant\'s requests): the waiting action is refused; 409 when already decided',
      params: approvalParams, body: decisionBody, response: { 200: approvalInfo, ...errorResponses },
    },
  }, async (req) => engine.denyApproval(callerOf(req), req.params.id, req.body ?? {}));
}
