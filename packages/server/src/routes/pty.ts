/**
 * GET /v1/sandboxes/:id/pty, upgraded to a WebSocket: an interactive terminal in the sandbox.
 *
 * The session is opened before the upgrade, so every failure is an ordinary HTTP error
 * (401, 404, 409, 400). Then, client → server: binary = keystrokes, text = JSON control
 * ({"type":"resize","cols","rows"} or {"type":"signal","signal"}); server → client: a text
 * {"type":"started"} first, binary terminal output, and a final text {"type":"exit"} before
 * the close (1000). A client that goes away hangs the session up (SIGHUP, then SIGKILL).
 * Output waits in the sandbox (the agent stops reading the pty) while the client reads slowly.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fastifyWebsocket from '@fastify/websocket';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { AirlockEngine, PtyOptions, PtySession } from '@airlock/engine';
import type { RawData, WebSocket } from 'ws';
import { z } from 'zod';
import { callerOf } from '../auth.js';
import { HttpError } from '../errors.js';
import type { LiveRequests } from '../live-requests.js';
import { absolutePath, errorResponses, idParams } from '../schemas.js';
import { parseSignal } from '../signals.js';

/** Largest WebSocket message a client may send (a paste is split by the SDK into smaller ones). */
export const PTY_MAX_MESSAGE_BYTES = 1024 * 1024;
/** Output waiting for the client above this pauses the session; below the low mark it resumes. */
const OUTPUT_HIGH_WATER = 1024 * 1024;
const OUTPUT_LOW_WATER = 256 * 1024;
/** After a hangup (SIGHUP), how long the process gets before SIGKILL. */
const HANGUP_GRACE_MS = 2000;
/** A ping this often; a client that did not answer the last one is cut off. */
const PING_INTERVAL_MS = 30_000;
const MAX_CONTROL_BYTES = 4096;
const MAX_ARG_BYTES = 128 * 1024;
const OPEN = 1;

const arg = z.string()
  .refine((s) => !s.includes('\0'), 'must not contain NUL')
  .refine((s) => Buffer.byteLength(s) <= MAX_ARG_BYTES, `must be at most ${MAX_ARG_BYTES} bytes`);
const envPair = arg.regex(/^[A-Za-z_][A-Za-z0-9_]{0,255}=/, 'must be K=V with a shell-style name');
const termSize = z.coerce.number().int().min(1).max(1000);

export const ptyQuery = z.strictObject({
  cols: termSize.optional().describe('terminal width, 1..1000 (default 80)'),
  rows: termSize.optional().describe('terminal height, 1..1000 (default 24)'),
  cmd: z.union([arg, z.array(arg).min(1).max(4096)]).optional()
    .describe('program and arguments, one cmd= each, in order (default: /bin/bash, else /bin/sh)'),
  cwd: absolutePath.optional(),
  env: z.union([envPair, z.array(envPair).max(1024)]).optional().describe('K=V, repeatable'),
  timeoutSeconds: z.coerce.number().min(0).max(86_400).optional().describe('kill the process after this long (exit 124)'),
});

const controlMessage = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('resize'), cols: z.number().int().min(1).max(1000), rows: z.number().int().min(1).max(1000) }),
  z.strictObject({ type: z.literal('signal'), signal: z.union([z.string().min(1).max(16), z.number().int().min(1).max(64)]) }),
]);

/** Registers the WebSocket plugin; must run before any route is added, so each route knows upgrades. */
export async function registerWebsocket(app: FastifyInstance): Promise<void> {
  await app.register(fastifyWebsocket, { options: { maxPayload: PTY_MAX_MESSAGE_BYTES } });
}

const asList = (v: string | string[] | undefined): string[] | undefined => (v === undefined ? undefined : Array.isArray(v) ? v : [v]);

function toOptions(q: z.output<typeof ptyQuery>): PtyOptions {
  const opts: PtyOptions = {};
  if (q.cols !== undefined) opts.cols = q.cols;
  if (q.rows !== undefined) opts.rows = q.rows;
  const cmd = asList(q.cmd);
  if (cmd) {
    if (cmd[0] === '') throw new HttpError(400, 'bad_request', 'cmd: the program name must not be empty', 'cmd');
    opts.cmd = cmd;
  }
  if (q.cwd !== undefined) opts.cwd = q.cwd;
  const env = asList(q.env);
  if (env) opts.env = Object.fromEntries(env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  if (q.timeoutSeconds !== undefined) opts.timeoutSeconds = q.timeoutSeconds;
  return opts;
}

function rawToBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

export function ptyRoutes(app: FastifyInstance, engine: AirlockEngine, live: LiveRequests): void {
  const sessions = new WeakMap<FastifyRequest, PtySession>();

  app.withTypeProvider<ZodTypeProvider>().route({
    method: 'GET',
    url: '/v1/sandboxes/:id/pty',
    schema: {
      tags: ['exec'],
      summary: 'Interactive terminal (WebSocket): GET with Upgrade: websocket',
      description: 'Opens a pseudo-terminal in the running sandbox running `cmd` (default /bin/bash, else /bin/sh), '
        + 'then upgrades to a WebSocket. Errors (401, 404, 409 not running, 400) are answered before the upgrade. '
        + 'Client → server: binary messages are input; text messages are JSON control: '
        + '{"type":"resize","cols":N,"rows":N} or {"type":"signal","signal":"INT"|N}. '
        + 'Server → client: {"type":"started","pid","execId"} (text), terminal output (binary), '
        + 'then {"type":"exit","exitCode","reason","durationMs"} (text) and close 1000. A malformed control '
        + 'message gets {"type":"error","error":{code,message}} and is ignored. Closing the WebSocket hangs the '
        + 'session up (SIGHUP, SIGKILL 2 s later). Messages are at most 1 MiB. A plain GET gets 426.',
      params: idParams,
      querystring: ptyQuery,
      response: {
        101: z.undefined().describe('Switching Protocols: the terminal session is open'),
        ...errorResponses,
      },
    },
    preHandler: async (req) => {
      if (!req.ws) throw new HttpError(426, 'upgrade_required', 'this route is a WebSocket: connect with Upgrade: websocket');
      const caller = callerOf(req);
      const info = engine.getSandbox(caller, req.params.id); // 404, also for another tenant's id
      if (info.state !== 'running') throw new HttpError(409, 'conflict', `sandbox ${info.id} is ${info.state}, not running`);
      const session = await engine.openPty(caller, req.params.id, toOptions(req.query));
      sessions.set(req, session);
      // Whatever ends the connection (the client leaves, the upgrade fails) hangs the session up.
      const hangup = () => hangUp(session);
      const stop = live.add(hangup);
      req.raw.socket.once('close', () => { stop(); hangup(); });
      if (req.raw.socket.destroyed) hangup();
    },
    handler: async () => {
      throw new HttpError(426, 'upgrade_required', 'this route is a WebSocket: connect with Upgrade: websocket');
    },
    wsHandler: (socket: WebSocket, req: FastifyRequest) => {
      const session = sessions.get(req);
      if (!session) {
        socket.close(1011, 'no session');
        return;
      }
      serve(socket, session);
    },
  });
}

const hungUp = new WeakSet<PtySession>();

/** SIGHUP, as a terminal whose line dropped; SIGKILL for a process that ignores it. */
function hangUp(session: PtySession): void {
  if (hungUp.has(session)) return;
  hungUp.add(session);
  session.kill(1);
  const timer = setTimeout(() => session.kill(9), HANGUP_GRACE_MS);
  timer.unref();
  void session.exited.then(() => clearTimeout(timer));
}

function serve(socket: WebSocket, session: PtySession): void {
  const sendJson = (msg: object) => {
    if (socket.readyState === OPEN) socket.send(JSON.stringify(msg));
  };
  const sendError = (message: string) => sendJson({ type: 'error', error: { code: 'bad_request', message } });

  sendJson({ type: 'started', pid: session.pid, execId: session.execId, cmd: session.cmd });

  let paused = false;
  const onFlushed = () => {
    if (paused && socket.bufferedAmount < OUTPUT_LOW_WATER) {
      paused = false;
      session.resume();
    }
  };
  session.onData((chunk) => {
    if (socket.readyState !== OPEN) return;
    socket.send(chunk, { binary: true }, onFlushed);
    if (!paused && socket.bufferedAmount > OUTPUT_HIGH_WATER) {
      paused = true;
      session.pause();
    }
  });

  socket.on('message', (data: RawData, isBinary: boolean) => {
    const bytes = rawToBuffer(data);
    if (isBinary) {
      session.write(bytes);
      return;
    }
    if (bytes.length > MAX_CONTROL_BYTES) {
      sendError(`control messages are at most ${MAX_CONTROL_BYTES} bytes; send input as binary messages`);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(bytes.toString('utf8'));
    } catch {
      sendError('a text message must be JSON: {"type":"resize","cols":N,"rows":N} or {"type":"signal","signal":"INT"}');
      return;
    }
    const r = controlMessage.safeParse(parsed);
    if (!r.success) {
      const issue = r.error.issues[0];
      sendError(`bad control message${issue?.path.length ? ` (${issue.path.join('.')})` : ''}: ${issue?.message ?? 'invalid'}`);
      return;
    }
    const msg = r.data;
    if (msg.type === 'resize') {
      session.resize(msg.cols, msg.rows);
      return;
    }
    const signo = typeof msg.signal === 'number' ? msg.signal : parseSignal(msg.signal);
    if (signo === null) {
      sendError(`unknown signal ${JSON.stringify(msg.signal)}`);
      return;
    }
    session.kill(signo);
  });

  let alive = true;
  socket.on('pong', () => { alive = true; });
  const pinger = setInterval(() => {
    if (!alive) {
      socket.terminate();
      return;
    }
    alive = false;
    socket.ping();
  }, PING_INTERVAL_MS);
  pinger.unref();
  socket.on('close', () => clearInterval(pinger));

  void session.exited.then((exit) => {
    sendJson({ type: 'exit', exitCode: exit.exitCode, reason: exit.reason, durationMs: exit.durationMs, ...(exit.signal ? { signal: exit.signal } : {}) });
    if (socket.readyState === OPEN) socket.close(1000, 'exited');
  });
}
