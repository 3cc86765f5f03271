import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { errorResponses, sandboxId } from '../schemas.js';

const breakReason = z.string().describe('hash-mismatch | prev-mismatch | seq-gap | reordered | tail-truncated | checkpoint-signature | checkpoint-mismatch | output-mismatch (bundles)');
export const auditVerifyResult = z.object({
  ok: z.boolean(),
  events: z.number().int(),
  checkpoints: z.number().int(),
  headSeq: z.number().int(),
  firstBroken: z.object({ seq: z.number().int(), reason: breakReason, detail: z.string() }).optional(),
});

const exportQuery = z.strictObject({
  sandbox: sandboxId.optional(),
  since: z.string().min(1).max(64).optional().describe('ISO 8601 time: every event at or after it'),
});

/** Tamper evidence (docs/audit.md): verify the log, the checkpoint key, evidence bundles. Admin keys only. */
export function auditRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/audit/verify', {
    schema: {
      tags: ['events'], summary: 'Recompute the event hash chain and check the signed checkpoints',
      description: 'ok=false names the first broken position (seq) and why. Admin keys only.',
      response: { 200: auditVerifyResult, ...errorResponses },
    },
  }, async (req) => engine.verifyAudit(callerOf(req)));

  r.get('/v1/audit/public-key', {
    schema: {
      tags: ['events'], summary: 'The ed25519 public key (SPKI PEM) that signs audit checkpoints',
      response: { 200: z.object({ publicKey: z.string() }), ...errorResponses },
    },
  }, async (req) => ({ publicKey: engine.auditPublicKey(callerOf(req)) }));

  r.get('/v1/audit/export', {
    schema: {
      tags: ['events'], summary: 'Evidence bundle (tar.gz) of a sandbox, or of every event since a time',
      description: 'Check it offline with `airlock audit verify --bundle FILE`. Admin keys only.',
      querystring: exportQuery,
      response: {
        200: { description: 'application/gzip', content: { 'application/gzip': { schema: z.string().describe('tar.gz') } } },
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const { sandbox, since } = req.query;
    const bundle = engine.exportAudit(callerOf(req), { ...(sandbox !== undefined ? { sandbox } : {}), ...(since !== undefined ? { since } : {}) });
    return reply
      .header('content-type', 'application/gzip')
      .header('content-disposition', `attachment; filename="airlock-audit-${sandbox ?? 'since'}.tar.gz"`)
      .send(bundle as unknown as string);
  });
}
