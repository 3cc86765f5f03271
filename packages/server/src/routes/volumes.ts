/** Named volumes: storage with its own quota that outlives sandboxes (attach them at sandbox create). */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { callerOf } from '../auth.js';
import { errorResponses, noContent } from '../schemas.js';
import { createVolumeBody, volumeInfo, volumeList, volumeParams } from '../volume-schemas.js';

const tags = ['volumes'];

export function volumeRoutes(app: FastifyInstance, engine: AirlockEngine): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/volumes', {
    schema: {
      tags, summary: 'Create a volume (409 if the name is taken, 429 if the data dir\'s storage is promised)',
      body: createVolumeBody, response: { 201: volumeInfo, ...errorResponses },
    },
  }, async (req, reply) => reply.code(201).send(await engine.createVolume(callerOf(req), req.body)));

  r.get('/v1/volumes', {
    schema: { tags, summary: 'List volumes', response: { 200: volumeList, ...errorResponses } },
  }, async (req) => ({ volumes: engine.listVolumes(callerOf(req)) }));

  r.get('/v1/volumes/:name', {
    schema: { tags, summary: 'Get one volume, with its use and attachments', params: volumeParams, response: { 200: volumeInfo, ...errorResponses } },
  }, async (req) => engine.getVolume(callerOf(req), req.params.name));

  r.delete('/v1/volumes/:name', {
    schema: {
      tags, summary: 'Delete a volume and its data (409 while attached to a live sandbox)',
      params: volumeParams, response: { 204: noContent, ...errorResponses },
    },
  }, async (req, reply) => {
    await engine.deleteVolume(callerOf(req), req.params.name);
    return reply.code(204).send();
  });
}
