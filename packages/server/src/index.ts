/** airlockd: the HTTP API over the Airlock engine. Handlers stay thin; the engine does the work. */
import { readFileSync } from 'node:fs';
import fastifySwagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { AirlockEngine } from '@airlock/engine';
import { registerAuth } from './auth.js';
import { mapError } from './errors.js';
import { LiveRequests } from './live-requests.js';
import { requestIdFrom } from './request-id.js';
import { eventRoutes } from './routes/events.js';
import { auditRoutes } from './routes/audit.js';
import { execRoutes } from './routes/exec.js';
import { fileRoutes } from './routes/files.js';
import { metaRoutes } from './routes/meta.js';
import { ptyRoutes, registerWebsocket } from './routes/pty.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { volumeRoutes } from './routes/volumes.js';
import { secretRoutes } from './routes/secrets.js';
import { templateRoutes } from './routes/templates.js';
import { tenantRoutes } from './routes/tenants.js';
import { policyRoutes } from './routes/policies.js';
import { approvalRoutes } from './routes/approvals.js';
import { usageRoutes } from './routes/usage.js';
import { recordRoutes } from './routes/records.js';
import { AirlockMetrics, metricsRoute } from './metrics.js';
import type { AuthRateLimitOptions } from './auth-rate-limit.js';

export interface ServerOptions {
  engine: AirlockEngine;
  /** false: silent; true (default): JSON logs at info; an object: pino options. */
  logger?: boolean | object;
  /** JSON request bodies; default 1 MiB. */
  bodyLimitBytes?: number;
  /** File uploads (PUT /files, streamed: this bounds the sandbox's disk use, not memory); default 8 GiB. */
  uploadLimitBytes?: number;
  /** Reported by /healthz and /openapi.json; default this package's version. */
  version?: string;
  /** Failed authentications allowed per client address (default burst 20, 10 a minute). */
  authRateLimit?: AuthRateLimitOptions;
  /** Prometheus metrics: pass one to also count the engine's log lines (reconcile); default a fresh one. */
  metrics?: AirlockMetrics;
  /** GET /metrics without a key (a scraper on a trusted network); default: admin keys only. */
  metricsPublic?: boolean;
}

export { AirlockMetrics };

export const DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024;
export const DEFAULT_UPLOAD_LIMIT_BYTES = 8 * 1024 * 1024 * 1024;
const CLOSE_GRACE_MS = 3000;

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const version = opts.version ?? packageVersion();
  const live = new LiveRequests();
  const app = Fastify({
    logger: opts.logger ?? true,
    bodyLimit: opts.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES,
    genReqId: requestIdFrom,
    requestIdHeader: false,
    return503OnClosing: true,
    // Errors raised before routing (an undecodable URL) skip the error handler: same body anyway.
    frameworkErrors: (err, req, reply: FastifyReply) => {
      const mapped = mapError(err);
      void reply.code(mapped.status).header('x-request-id', req.id).send(mapped.body);
    },
  }) as unknown as FastifyInstance;

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.setErrorHandler((err, req, reply) => {
    const mapped = mapError(err);
    if (mapped.internal) {
      req.log.error({ err }, 'request failed');
      // The detail stays in the log (it may name host paths); the id lets an operator find it.
      mapped.body.error.message = `internal error (request ${req.id}; details in the airlockd log)`;
    }
    if (reply.sent || reply.raw.headersSent) return;
    return reply.code(mapped.status).send(mapped.body);
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({
    error: { code: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` },
  }));

  // First hook: even a 401 or a 404 carries the id a client can quote.
  app.addHook('onRequest', async (req, reply) => { reply.header('x-request-id', req.id); });
  // Before auth and the routes: its onRequest hook marks upgrade requests (so a refused one's
  // socket is closed after the answer), and each route added later learns whether it takes upgrades.
  await registerWebsocket(app);
  registerAuth(app, opts.engine, opts.authRateLimit);
  app.addHook('preClose', async () => {
    live.stopAll();
    // Streams just ended may still be draining; a client that never reads must not hold close() forever.
    setTimeout(() => app.server.closeAllConnections(), CLOSE_GRACE_MS).unref();
  });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Airlock API', description: 'Self-hosted sandboxes for AI agents', version },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });

  sandboxRoutes(app, opts.engine);
  volumeRoutes(app, opts.engine);
  secretRoutes(app, opts.engine);
  execRoutes(app, opts.engine, live);
  ptyRoutes(app, opts.engine, live);
  fileRoutes(app, opts.engine, opts.uploadLimitBytes ?? DEFAULT_UPLOAD_LIMIT_BYTES, live);
  eventRoutes(app, opts.engine, live);
  auditRoutes(app, opts.engine);
  metaRoutes(app, opts.engine, version);
  templateRoutes(app, opts.engine);
  tenantRoutes(app, opts.engine);
  policyRoutes(app, opts.engine);
  approvalRoutes(app, opts.engine);
  usageRoutes(app, opts.engine);
  recordRoutes(app, opts.engine);
  metricsRoute(app, opts.engine, opts.metrics ?? new AirlockMetrics(), opts.metricsPublic ?? false);
  return app;
}

/**
 * "127.0.0.1:7070", "[::1]:7070", ":7070" (every interface, as in Go) or a bare "7070"
 * (loopback: exposing the API must be asked for).
 */
export function parseListen(listen: string): { host: string; port: number } {
  const bare = /^([0-9]{1,5})$/.exec(listen);
  if (bare) return { host: '127.0.0.1', port: checkPort(bare[1]!, listen) };
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):([0-9]{1,5})$/.exec(listen);
  if (!m) throw new Error(`listen address must look like 127.0.0.1:7070, got ${JSON.stringify(listen)}`);
  return { host: m[1] || m[2] || '0.0.0.0', port: checkPort(m[3]!, listen) };
}

function checkPort(digits: string, listen: string): number {
  const port = Number(digits);
  if (port > 65_535) throw new Error(`port out of range in ${JSON.stringify(listen)}`);
  return port;
}

export async function startServer(opts: ServerOptions & { listen: string }): Promise<{
  app: FastifyInstance;
  /** host:port actually bound (the port filled in when :0 was asked for). */
  address: string;
  /** http://host:port, ready for AIRLOCK_URL. */
  url: string;
  close(): Promise<void>;
}> {
  const { host, port } = parseListen(opts.listen);
  const app = await buildServer(opts);
  await app.listen({ host, port });
  const bound = app.server.address();
  const boundPort = bound && typeof bound === 'object' ? bound.port : port;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const address = `${hostPart}:${boundPort}`;
  return { app, address, url: `http://${address}`, close: () => app.close() };
}
