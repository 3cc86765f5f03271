/** GET /v1/sandboxes/:id/outputs: what the sandbox left in its output directory. */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { outputsList, outputsQuery } from '../file-schemas.js';
import { errorResponses, idParams } from '../schemas.js';

export function outputRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  app.withTypeProvider<ZodTypeProvider>().get('/v1/sandboxes/:id/outputs', {
    schema: {
      tags: ['files'],
      summary: 'The sandbox\'s outputs (its outputPath, default /work/out) as a tar stream or a JSON list',
      description: 'Regular files, directories and symlinks, paths relative to the output directory. '
        + 'Links are recorded as links and never followed; nothing outside the output directory is read. '
        + 'A missing output directory is no outputs (an empty tar or list).',
      params: idParams,
      querystring: outputsQuery,
      response: {
        200: {
          description: 'application/x-tar (format=tar, default) or JSON (format=list)',
          content: {
            'application/x-tar': { schema: z.string().describe('tar stream') },
            'application/json': { schema: outputsList },
          },
        },
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const caller = callerOf(req);
    const { id } = req.params;
    if (req.query.format === 'list') return reply.send(await engine.outputsList(caller, id));
    const tar = await engine.outputsTar(caller, id);
    return reply
      .header('content-type', 'application/x-tar')
      .header('content-disposition', `attachment; filename="${id}-outputs.tar"`)
      .send(tar as unknown as string);
  });
}
