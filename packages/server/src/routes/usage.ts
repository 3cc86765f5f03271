/** GET /v1/usage: metered usage and cost (docs/metering.md). */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { errorResponses } from '../schemas.js';

const totals = {
  cpuSeconds: z.number().describe('CPU time used (cgroup accounting), seconds'),
  memoryGiBSeconds: z.number().describe('sampled memory in use, integrated over time'),
  diskGiBHours: z.number().describe('reserved disk (the quota) over the lifetime'),
  netBytesIn: z.number().int(),
  netBytesOut: z.number().int(),
  cost: z.number().describe('by the server\'s price sheet, in its (unnamed) currency'),
};

export const usageQuery = z.object({
  sandbox: z.string().max(64).optional(),
  tenant: z.string().max(128).optional(),
  from: z.string().max(40).optional().describe('first UTC day, YYYY-MM-DD (inclusive)'),
  to: z.string().max(40).optional().describe('last UTC day, YYYY-MM-DD (inclusive)'),
}).refine((q) => !(q.sandbox && q.tenant), { message: 'give sandbox or tenant, not both' });

export const usageReport = z.object({
  from: z.string().nullable(),
  to: z.string().nullable(),
  ...totals,
  sandboxes: z.array(z.object({ sandbox: z.string(), tenant: z.string(), ...totals })),
  days: z.array(z.object({ day: z.string(), tenant: z.string(), ...totals })).describe('daily rollups per tenant'),
});

export function usageRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  app.withTypeProvider<ZodTypeProvider>().get('/v1/usage', {
    schema: {
      tags: ['usage'],
      summary: 'Usage and cost: totals, per sandbox and per day (a tenant key sees its own tenant; admins any)',
      querystring: usageQuery, response: { 200: usageReport, ...errorResponses },
    },
  }, async (req) => engine.usage(callerOf(req), req.query));
}
