import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AirlockEngine, Caller } from '@airlock/engine';
import { AuthFailureLimiter, type AuthRateLimitOptions } from './auth-rate-limit.js';
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
 * probing without a key learns nothing about which routes exist. Failures are rate-limited
 * per client address (auth-rate-limit.ts) and recorded by the engine as auth.denied events.
 */
export function registerAuth(app: FastifyInstance, engine: AirlockEngine, limits: AuthRateLimitOptions = {}): void {
  const limiter = new AuthFailureLimiter(limits);
  app.decorateRequest('caller', null);
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    if (req.routeOptions?.config?.public) return;
    const address = req.ip;
    const wait = limiter.retryAfter(address);
    if (wait > 0) {
      engine.recordAuthDenied('rate_limited', { address });
      reply.header('retry-after', String(wait));
      throw new HttpError(429, 'rate_limited', `too many failed authentications from ${address}; retry in ${wait} s`);
    }
    const key = bearerKey(req.headers.authorization);
    const caller = engine.authenticate(key, { address });
    if (!caller) {
      limiter.fail(address);
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
