/**
 * Exec records and evidence (docs/records.md): a sandbox's timeline, recorded output blobs,
 * and process snapshots on demand.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { errorResponses, idParams } from '../schemas.js';

const tags = ['records'];

const recordedStream = z.object({
  bytes: z.number().int().describe('bytes the command wrote'),
  sha256: z.string().nullable().describe('blob of the recorded part (GET /v1/blobs/{sha256}); null when output is not recorded'),
  stored: z.number().int(),
  truncated: z.boolean().describe('the policy\'s cap cut the recorded part'),
});

const execRecord = z.object({
  execId: z.string(), sandbox: z.string(), tenant: z.string(), cmd: z.array(z.string()),
  envNames: z.array(z.string()).describe('names only; values are never recorded'),
  cwd: z.string(), user: z.string().nullable(), pty: z.boolean(), startedAt: z.string(), endedAt: z.string(),
  exitCode: z.number().int(), reason: z.string(), stdout: recordedStream, stderr: recordedStream,
});

export const historyResponse = z.object({
  entries: z.array(z.union([
    z.object({ ts: z.string(), kind: z.literal('exec'), exec: execRecord }),
    z.object({ ts: z.string(), kind: z.literal('event'), seq: z.number().int(), type: z.string(), data: z.record(z.string(), z.unknown()) }),
  ])),
});

const blobParams = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be a lowercase hex SHA-256') });

const processSnapshot = z.object({
  seq: z.number().int().describe('the process.snapshot event'),
  processes: z.array(z.object({ pid: z.number(), execId: z.string().nullable(), cmdline: z.array(z.string()) })),
});

export function recordRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.get('/v1/sandboxes/:id/history', {
    schema: {
      tags, summary: 'The sandbox\'s timeline: lifecycle, exec records, file activity, network refusals, alerts',
      params: idParams, response: { 200: historyResponse, ...errorResponses },
    },
  }, async (req) => ({ entries: engine.sandboxHistory(callerOf(req), req.params.id) }));

  r.get('/v1/blobs/:sha256', {
    schema: {
      tags, summary: 'A recorded output blob (only one the caller\'s tenant\'s records name)',
      params: blobParams,
      response: { 200: { description: 'the blob\'s bytes', content: { 'application/octet-stream': { schema: z.string() } } }, ...errorResponses },
    },
  }, async (req, reply) => {
    const data = engine.readBlob(callerOf(req), req.params.sha256);
    return reply
      .header('content-type', 'application/octet-stream')
      .header('x-content-type-options', 'nosniff')
      // A Buffer bypasses the serializer; the cast only satisfies the per-content-type typing.
      .send(data as unknown as string);
  });

  r.post('/v1/sandboxes/:id/snapshots/processes', {
    schema: {
      tags, summary: 'Store the sandbox\'s process tree now as a process.snapshot event',
      params: idParams, response: { 200: processSnapshot, ...errorResponses },
    },
  }, async (req) => engine.snapshotProcesses(callerOf(req), req.params.id));
}
