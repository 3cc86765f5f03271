import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, AuditEvent, Caller, EventFilter } from '@airlock/engine';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { LiveRequests } from '../live-requests.js';
import { errorResponses, eventList, eventsQuery } from '../schemas.js';
import { parseLastEventId, SSE_HEARTBEAT, sseMessage } from '../sse.js';

const HEARTBEAT_MS = 15_000;
const REPLAY_PAGE = 1000;
/** Unsent bytes after which a follower is cut off; it resumes with Last-Event-ID. */
const MAX_PENDING_BYTES = 8 * 1024 * 1024;

export function eventRoutes(app: FastifyInstance, engine: AirlockEngine, live: LiveRequests): void {
  app.withTypeProvider<ZodTypeProvider>().get('/v1/events', {
    schema: {
      tags: ['events'],
      summary: 'Audit events; follow=1 streams them as Server-Sent Events',
      description: 'With follow=1: events after `after` (or Last-Event-ID) first, then live ones; '
        + 'without either, live ones only. A comment line is sent every 15 s.',
      querystring: eventsQuery,
      response: {
        200: {
          description: 'JSON list, or text/event-stream when follow=1',
          content: {
            'application/json': { schema: eventList },
            'text/event-stream': { schema: z.string().describe('id: SEQ / event: TYPE / data: AuditEvent JSON') },
          },
        },
        ...errorResponses,
      },
    },
  }, async (req, reply) => {
    const caller = callerOf(req);
    const { sandbox, type, tenant, after, limit, follow } = req.query;
    const filter: EventFilter = {};
    if (sandbox !== undefined) filter.sandbox = sandbox;
    if (tenant !== undefined) filter.tenant = tenant;
    if (type !== undefined) filter.type = type;
    if (!follow) {
      return reply.send({ events: engine.listEvents(caller, { ...filter, afterSeq: after, limit: limit ?? 1000 }) });
    }
    const resumeAfter = parseLastEventId(req.headers['last-event-id']) ?? after;
    followEvents(reply, engine, caller, filter, resumeAfter, live);
    return reply;
  });
}

function followEvents(
  reply: FastifyReply, engine: AirlockEngine, caller: Caller, filter: EventFilter,
  resumeAfter: number | undefined, live: LiveRequests,
): void {
  const out = new PassThrough();
  out.on('error', () => { /* client gone */ });
  let lastSent = resumeAfter ?? 0;
  // Replay reads the store page by page; events committed meanwhile are in the store too, so
  // live events are ignored until the last page, read in the same tick as the switch.
  let replaying = resumeAfter !== undefined;
  let stopped = false;

  const stop = () => {
    if (stopped) return;
    stopped = true;
    unsubscribe();
    clearInterval(heartbeat);
    unregister();
    out.end();
  };
  const send = (e: AuditEvent) => {
    if (stopped || e.seq <= lastSent) return;
    lastSent = e.seq;
    out.write(sseMessage(e));
    if (out.writableLength + out.readableLength > MAX_PENDING_BYTES) stop();
  };

  const unsubscribe = engine.subscribeEvents(caller, filter, (e) => { if (!replaying) send(e); });
  const heartbeat = setInterval(() => { if (!stopped) out.write(SSE_HEARTBEAT); }, HEARTBEAT_MS);
  heartbeat.unref();
  const unregister = live.add(stop);
  reply.raw.once('close', stop);

  reply.code(200)
    .header('content-type', 'text/event-stream; charset=utf-8')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
    .send(out);
  out.write(': connected\n\n');

  if (!replaying) return;
  void (async () => {
    try {
      for (;;) {
        const page = engine.listEvents(caller, { ...filter, afterSeq: lastSent, limit: REPLAY_PAGE });
        for (const e of page) send(e);
        if (page.length < REPLAY_PAGE || stopped) break;
        if (out.writableNeedDrain) await Promise.race([once(out, 'drain'), once(out, 'close')]);
      }
    } catch (err) {
      reply.log.error({ err }, 'event replay failed');
      stop();
    } finally {
      replaying = false;
    }
  })();
}
