/**
 * Interactive terminals, shaped like E2B's `sandbox.pty`: a pseudo-terminal in the sandbox
 * over `GET /v1/sandboxes/:id/pty` upgraded to a WebSocket (docs/rest-api.md). Node only:
 * the `ws` package is loaded when the first terminal is opened, so the rest of the SDK still
 * loads where it is absent.
 */
import type WebSocket from 'ws';
import type { ApiClient } from './client.js';
import { ApiError, errorFromResponse } from './errors.js';
import type { ExecReason } from './types.js';

export interface PtyCreateOptions {
  /** Terminal size, 1..1000 each; default 80 × 24. */
  cols?: number;
  rows?: number;
  /** Terminal output as it comes (UTF-8 bytes, escape sequences included). */
  onData?: (data: Uint8Array) => void;
  /** Default: /bin/bash in the sandbox, else /bin/sh. */
  cmd?: string[];
  cwd?: string;
  envs?: Record<string, string>;
  /** Kill the process after this long (exit 124); default: bounded by the sandbox lifetime. */
  timeoutMs?: number;
}

export interface PtyResult {
  /** Exit status; 128+n when killed by signal n, 124 timed out, 137 when the sandbox ended. */
  exitCode: number;
  reason: ExecReason;
  durationMs: number;
  signal?: number;
}

export interface PtySize {
  cols: number;
  rows: number;
}

/** Input is sent in messages of at most this many bytes (the server takes up to 1 MiB). */
const INPUT_CHUNK = 64 * 1024;
const OPEN = 1;

function checkSize(size: PtySize): void {
  const ok = (n: unknown) => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 1000;
  if (!size || !ok(size.cols) || !ok(size.rows)) throw new ApiError(400, 'bad_request', 'cols and rows must be integers from 1 to 1000', ok(size?.cols) ? 'rows' : 'cols');
}

/** One terminal session. The session ends when its process exits; `disconnect()` hangs it up. */
export class PtyHandle {
  private exit: PtyResult | null = null;

  /** @internal */
  constructor(
    private readonly ws: WebSocket,
    /** In-sandbox pid of the terminal's process. */
    readonly pid: number,
    /** Its exec id (audit events, the process list). */
    readonly execId: string,
    private readonly exited: Promise<PtyResult>,
  ) {
    void exited.then((r) => { this.exit = r; }, () => {});
  }

  /** The exit, once known (null while running). */
  get exitResult(): PtyResult | null {
    return this.exit;
  }

  /** Input, as if typed: `'ls\r'`, `'\x03'` for ^C. */
  async sendInput(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    if (this.ws.readyState !== OPEN) throw new ApiError(409, 'conflict', 'the terminal session has ended');
    for (let off = 0; off < bytes.byteLength; off += INPUT_CHUNK) {
      const chunk = bytes.subarray(off, off + INPUT_CHUNK);
      await new Promise<void>((resolve, reject) => {
        this.ws.send(chunk, { binary: true }, (err) => (err ? reject(new ApiError(0, 'unreachable', `terminal connection failed: ${err.message}`)) : resolve()));
      });
    }
  }

  /** New terminal size; the program gets SIGWINCH. */
  async resize(size: PtySize): Promise<void> {
    checkSize(size);
    this.control({ type: 'resize', cols: size.cols, rows: size.rows });
  }

  /**
   * Signals the terminal's process group (default SIGKILL; a name like 'INT' or a number).
   * Resolves false when the session had already ended.
   */
  async kill(signal: string | number = 'KILL'): Promise<boolean> {
    if (this.exit || this.ws.readyState !== OPEN) return false;
    this.control({ type: 'signal', signal });
    return true;
  }

  /** Resolves with how the process ended (a non-zero exit is a result, not an error). */
  wait(): Promise<PtyResult> {
    return this.exited;
  }

  /** Stop reading output for a while (it waits in the sandbox, whose writer blocks); resume() to go on. */
  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }

  /** Leaves the session: the server hangs it up (SIGHUP, then SIGKILL). */
  disconnect(): void {
    if (this.ws.readyState === OPEN) this.ws.close(1000);
  }

  private control(msg: object): void {
    if (this.ws.readyState !== OPEN) throw new ApiError(409, 'conflict', 'the terminal session has ended');
    this.ws.send(JSON.stringify(msg));
  }
}

/** Opens a terminal session in sandbox `sandboxId`; resolves once its process runs. */
export async function openPty(api: ApiClient, sandboxId: string, opts: PtyCreateOptions = {}): Promise<PtyHandle> {
  checkSize({ cols: opts.cols ?? 80, rows: opts.rows ?? 24 });
  const url = new URL(`${api.url}/v1/sandboxes/${encodeURIComponent(sandboxId)}/pty`);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (opts.cols !== undefined) url.searchParams.set('cols', String(opts.cols));
  if (opts.rows !== undefined) url.searchParams.set('rows', String(opts.rows));
  for (const a of opts.cmd ?? []) url.searchParams.append('cmd', a);
  if (opts.cwd !== undefined) url.searchParams.set('cwd', opts.cwd);
  for (const [k, v] of Object.entries(opts.envs ?? {})) url.searchParams.append('env', `${k}=${v}`);
  if (opts.timeoutMs !== undefined) url.searchParams.set('timeoutSeconds', String(opts.timeoutMs / 1000));

  const { default: WebSocketImpl } = await import('ws');
  const ws = new WebSocketImpl(url, { headers: api.authHeaders() });

  let settleStart!: (v: { pid: number; execId: string } | Error) => void;
  const start = new Promise<{ pid: number; execId: string } | Error>((r) => { settleStart = r; });
  let resolveExit!: (r: PtyResult) => void;
  let rejectExit!: (e: Error) => void;
  const exited = new Promise<PtyResult>((res, rej) => { resolveExit = res; rejectExit = rej; });
  exited.catch(() => {}); // the caller may never wait()
  let exit: PtyResult | null = null;

  ws.on('unexpected-response', (_req, res) => {
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (d: string) => { if (text.length < 64 * 1024) text += d; });
    res.on('end', () => {
      settleStart(errorFromResponse(res.statusCode ?? 0, text));
      ws.terminate();
    });
  });
  ws.on('error', (e: Error) => settleStart(new ApiError(0, 'unreachable', `cannot reach ${api.url}: ${e.message}`, undefined, { cause: e })));
  ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
    const bytes = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (isBinary) {
      try {
        opts.onData?.(bytes);
      } catch {
        // The consumer's exception must not end the session.
      }
      return;
    }
    let msg: { type?: unknown; [k: string]: unknown };
    try {
      msg = JSON.parse(bytes.toString('utf8')) as typeof msg;
    } catch {
      return; // not ours to break on; the server only sends JSON text
    }
    if (msg.type === 'started') {
      settleStart({ pid: Number(msg['pid']), execId: String(msg['execId']) });
    } else if (msg.type === 'exit') {
      exit = { exitCode: Number(msg['exitCode']), reason: msg['reason'] as ExecReason, durationMs: Number(msg['durationMs']) };
      if (typeof msg['signal'] === 'number') exit.signal = msg['signal'];
      resolveExit(exit);
    }
  });
  ws.on('close', (code: number, reason: Buffer) => {
    const why = new ApiError(0, 'unreachable', `terminal connection closed (${code}${reason.length ? `: ${reason.toString()}` : ''}) before the session ended`);
    settleStart(why);
    if (!exit) rejectExit(why);
  });

  const started = await start;
  if (started instanceof Error) {
    ws.terminate();
    throw started;
  }
  return new PtyHandle(ws, started.pid, started.execId, exited);
}

/** `sbx.pty`: E2B's shape; the handle methods and the pid-based ones do the same. */
export class Pty {
  private readonly handles = new Map<number, PtyHandle>();

  constructor(private readonly api: ApiClient, private readonly sandboxId: string) {}

  async create(opts: PtyCreateOptions = {}): Promise<PtyHandle> {
    const h = await openPty(this.api, this.sandboxId, opts);
    this.handles.set(h.pid, h);
    void h.wait().finally(() => this.handles.delete(h.pid)).catch(() => {});
    return h;
  }

  sendInput(pid: number, data: string | Uint8Array): Promise<void> {
    return this.handle(pid).sendInput(data);
  }

  resize(pid: number, size: PtySize): Promise<void> {
    return this.handle(pid).resize(size);
  }

  /** False when no session of this object has that pid (any more). */
  async kill(pid: number, signal?: string | number): Promise<boolean> {
    const h = this.handles.get(pid);
    return h ? h.kill(signal) : false;
  }

  private handle(pid: number): PtyHandle {
    const h = this.handles.get(pid);
    if (!h) throw new ApiError(404, 'not_found', `no terminal session with pid ${pid}`);
    return h;
  }
}
