import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AirlockEngine, Caller } from '@airlock/engine';
import { HttpError } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the auth hook on every non-public route. */
    caller: Caller | null;
  }
  interface FastifyContextConfig {
    /** Reachable without a key (/healthz, /openapi.json). */
    public?: boolean;
  }
}

const MAX_KEY_LENGTH = 512;

function bearerKey(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  const key = m?.[1];
  return key && key.length <= MAX_KEY_LENGTH ? key : null;
}

/**
 * Authenticates in onRequest, before the body is read: a client without a key cannot make
 * the server buffer a 256 MiB upload or parse JSON. Unknown routes are behind it too, so
 * probing without a key learns nothing about which routes exist.
 */
export function registerAuth(app: FastifyInstance, engine: AirlockEngine): void {
  app.decorateRequest('caller', null);
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    if (req.routeOptions?.config?.public) return;
    const key = bearerKey(req.headers.authorization);
    const caller = key ? engine.authenticate(key) : null;
    if (!caller) {
      reply.header('www-authenticate', 'Bearer');
      throw new HttpError(401, 'unauthorized', key ? 'API key is not valid' : 'missing Authorization: Bearer KEY header');
    }
    req.caller = caller;
  });
}

export function callerOf(req: FastifyRequest): Caller {
  if (!req.caller) throw new HttpError(401, 'unauthorized', 'not authenticated');
  return req.caller;
}
