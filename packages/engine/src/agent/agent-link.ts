/**
 * Host side of the agent protocol: a unix-socket server that the in-sandbox agent dials.
 *
 * One AgentLink per sandbox. The agent is untrusted: it must authenticate within 2 s,
 * only one authenticated connection is held at a time (a second is refused, since code in
 * the sandbox could try to impersonate the agent), every frame is bounded and validated,
 * and any violation drops that connection. Nothing here throws out of a socket event.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import {
  FrameDecoder, LWALK_MAX_ENTRIES, MAX_AGENT_TYPE, MAX_PAYLOAD, MsgType, PROTOCOL_VERSION, ProtocolError,
  decodeError, decodeExit, decodeFileEvent, decodeHello, decodeLayerEntries, decodeListEntries, decodePsLines, decodeStarted, decodeStat,
  decodeWalkEntry, encodeExec, encodeFrame, encodeHeader, encodePathRequest, encodeRename, encodeResize, encodeU32s,
  isPtySize, isSafeRelativePath,
} from './protocol.js';
import type {
  AgentDirEntry, AgentExecSpec, AgentExit, AgentFileEvent, AgentFileStat, AgentLayerEntry, AgentProcess, AgentWalkEntry, Frame,
  PtySize,
} from './protocol.js';

export type {
  AgentDirEntry, AgentEventKind, AgentExecSpec, AgentExit, AgentFileEvent, AgentFileStat, AgentLayerEntry, AgentProcess,
  AgentWalkEntry, PtySize,
} from './protocol.js';

/** A request the agent answered with an ERROR frame (errno as in Linux: ENOENT=2, ELOOP=40 …). */
export class AgentError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.name = 'AgentError';
    this.errno = errno;
  }
}

/** No agent is connected, or the connection dropped before the operation finished. */
export class AgentDisconnectedError extends Error {
  constructor(message = 'sandbox agent is not connected') {
    super(message);
    this.name = 'AgentDisconnectedError';
  }
}

export interface AgentExecHandle {
  channel: number;
  /** In-sandbox pid; rejects with AgentError when the exec could not start. */
  started: Promise<number>;
  /** Rejects with AgentDisconnectedError when the link drops first. */
  done: Promise<AgentExit>;
  /**
   * Needs `keepStdinOpen` or `pty`; ignored otherwise, and once the exec ended or the link
   * dropped. For a pty, input is dropped (false) while the link's send buffer is over 4 MiB:
   * a terminal's keystrokes must not grow memory without bound.
   */
  writeStdin(data: Buffer): boolean;
  /** EOF after what was written (for a pty: the agent closes its input side; the terminal stays). */
  closeStdin(): void;
  /** Signals the exec's whole process group (1..64). */
  signal(signo: number): void;
  /** A pty's new size (1..1000 each; RangeError otherwise); ignored for other execs. */
  resize(size: PtySize): void;
  /**
   * Flow control for this exec alone: while held, the agent stops reading its output, so a
   * writer blocks in the sandbox instead of this side buffering, and other channels flow on.
   */
  holdOutput(held: boolean): void;
}

/** A running FWATCH. */
export interface AgentWatch {
  /** Resolves with the agent's normalized path once the watch is in place; rejects like any op. */
  ready: Promise<string>;
  /** Resolves when the watch ends: stop(), or its directory was removed or moved ('ended'). */
  done: Promise<void>;
  /** Ends the watch (CANCEL); no event is delivered after it. */
  stop(): void;
}

/** What FWALK yields: an entry, then (for a file) exactly `size` bytes of Buffers. */
export type AgentWalkItem = AgentWalkEntry | Buffer;

export interface AgentExecOutput {
  onStdout?(b: Buffer): void;
  onStderr?(b: Buffer): void;
}

const EINVAL = 22;
const EFBIG = 27;
const E2BIG = 7;
const ETIMEDOUT = 110;

const HELLO_TIMEOUT_MS = 2000;
/** Before authentication only a HELLO is acceptable: keep the buffer for it tiny. */
const PRE_AUTH_MAX_PAYLOAD = 4 + 1024 + 1;
const MAX_PENDING_CONNECTIONS = 16;
/** Bound on the total size of one PS or FLIST answer. */
const MAX_RESULT_BYTES = 16 * 1024 * 1024;
/** Frames above this size are sent as header + payload instead of copied into one buffer. */
const COPY_LIMIT = 16 * 1024;
const WRITE_CHUNK = 256 * 1024;
/** A slow readFileStream consumer pauses the socket above this, resumes below the low mark. */
const STREAM_HIGH_WATER = 8 * 1024 * 1024;
const STREAM_LOW_WATER = 1024 * 1024;
const PATH_MAX_BYTES = 4095;
/** A pty's keystrokes are dropped while this much waits to be sent to the agent. */
const PTY_STDIN_BACKLOG = 4 * 1024 * 1024;

interface ChannelHandler {
  onFrame(f: Frame): void;
  fail(err: Error): void;
}

interface OpControl<T> {
  resolve(v: T): void;
  /** Ends the op with an error; `cancel` also tells the agent to stop. */
  reject(err: Error, cancel?: boolean): void;
}

const noop = (): void => {};

function safeCall(fn: ((b: Buffer) => void) | undefined, b: Buffer): void {
  if (!fn) return;
  try {
    fn(b);
  } catch {
    // A consumer's exception must not tear down the link that other operations share.
  }
}

function pathProblem(path: unknown): string | null {
  if (typeof path !== 'string') return 'path must be a string';
  if (!path.startsWith('/')) return `path must be absolute: ${JSON.stringify(path)}`;
  if (path.includes('\0')) return 'path must not contain NUL';
  if (Buffer.byteLength(path) > PATH_MAX_BYTES) return 'path too long';
  return null;
}

const isU32 = (n: unknown): n is number => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
const noNul = (s: unknown): boolean => typeof s === 'string' && !s.includes('\0');

function execSpecProblem(spec: AgentExecSpec): string | null {
  if (!spec || !Array.isArray(spec.argv) || spec.argv.length === 0) return 'argv must be a non-empty array';
  if (!spec.argv.every(noNul) || spec.argv[0] === '') return 'argv entries must be strings without NUL, argv[0] non-empty';
  if (!Array.isArray(spec.env) || !spec.env.every((e) => noNul(e) && e.indexOf('=') > 0)) return 'env entries must be "K=V" strings';
  if (!noNul(spec.cwd) || !spec.cwd.startsWith('/')) return 'cwd must be an absolute path';
  if (!isU32(spec.uid) || !isU32(spec.gid)) return 'uid and gid must be u32';
  if (!isU32(spec.timeoutMs)) return 'timeoutMs must be an integer from 0 to 2^32-1';
  if (spec.pty !== undefined && !isPtySize(spec.pty)) return 'pty rows and cols must be integers from 1 to 1000';
  if (spec.pty && spec.background) return 'a pty exec cannot run in the background';
  return null;
}

function rejectedHandle(err: Error): AgentExecHandle {
  const started = Promise.reject<number>(err);
  const done = Promise.reject<AgentExit>(err);
  started.catch(noop);
  done.catch(noop);
  return { channel: 0, started, done, writeStdin: () => false, closeStdin: noop, signal: noop, resize: noop, holdOutput: noop };
}

/** Events: 'connected' (an authenticated agent), 'disconnected' (err: AgentDisconnectedError). */
export class AgentLink extends EventEmitter {
  private conn: net.Socket | null = null;
  private readonly pending = new Set<net.Socket>();
  private readonly channels = new Map<number, ChannelHandler>();
  private readonly pauseHolders = new Set<symbol>();
  private readonly waiters = new Set<{ resolve(): void; reject(e: Error): void }>();
  private nextChannel = 1;
  private closed = false;
  private closing: Promise<void> | null = null;

  private constructor(
    readonly socketPath: string,
    private readonly token: Buffer,
    private readonly server: net.Server,
    private readonly helloTimeoutMs: number,
  ) {
    super();
    server.on('connection', (s) => this.onConnection(s));
    server.on('error', noop); // accept() failures (EMFILE …) must not crash the daemon
  }

  /**
   * Listens on `socketPath` (a stale socket there is replaced; anything else is an error).
   * `helloTimeoutMs`: how long a connection may stay silent before its HELLO (default 2 s; a
   * microVM's QEMU connects at launch, long before the guest's agent speaks).
   */
  static async listen(socketPath: string, token: string, opts: { helloTimeoutMs?: number } = {}): Promise<AgentLink> {
    if (typeof token !== 'string' || token === '' || token.includes('\0') || Buffer.byteLength(token) > 1024) {
      throw new Error('agent token must be 1..1024 bytes without NUL');
    }
    let existing: import('node:fs').Stats | null = null;
    try {
      existing = await fsp.lstat(socketPath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (existing) {
      if (!existing.isSocket()) throw new Error(`${socketPath} exists and is not a socket`);
      await fsp.unlink(socketPath);
    }
    const server = net.createServer();
    const link = new AgentLink(socketPath, Buffer.from(token, 'utf8'), server, opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // The agent runs as the sandbox's (mapped) root, not as the daemon's user.
    await fsp.chmod(socketPath, 0o666);
    return link;
  }

  get connected(): boolean {
    return this.conn !== null;
  }

  waitConnected(timeoutMs: number): Promise<void> {
    if (this.conn) return Promise.resolve();
    if (this.closed) return Promise.reject(new AgentDisconnectedError('agent link is closed'));
    return new Promise<void>((resolve, reject) => {
      const w = {
        resolve: () => {
          clearTimeout(timer);
          this.waiters.delete(w);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          this.waiters.delete(w);
          reject(e);
        },
      };
      const timer = setTimeout(() => w.reject(new AgentDisconnectedError(`agent did not connect within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.add(w);
    });
  }

  // ---- connections ----

  private onConnection(sock: net.Socket): void {
    sock.on('error', noop);
    if (this.closed || this.pending.size >= MAX_PENDING_CONNECTIONS) {
      sock.destroy();
      return;
    }
    this.pending.add(sock);
    const decoder = new FrameDecoder(PRE_AUTH_MAX_PAYLOAD);
    const timer = setTimeout(() => sock.destroy(), this.helloTimeoutMs);
    const onPreAuthData = (chunk: Buffer): void => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        sock.destroy();
        return;
      }
      if (frames.length === 0) return;
      clearTimeout(timer);
      this.pending.delete(sock);
      sock.off('data', onPreAuthData);
      if (!this.authenticate(frames[0]!)) {
        sock.destroy();
        return;
      }
      if (this.conn && !this.conn.destroyed) {
        sock.destroy(); // one agent per sandbox: a second "agent" is an impersonation attempt
        return;
      }
      if (this.conn) this.onAgentClose(this.conn);
      this.adopt(sock, decoder, frames.slice(1));
    };
    sock.on('data', onPreAuthData);
    sock.on('close', () => {
      clearTimeout(timer);
      this.pending.delete(sock);
      this.onAgentClose(sock);
    });
  }

  private authenticate(f: Frame): boolean {
    if (f.type !== MsgType.HELLO || f.channel !== 0) return false;
    try {
      const { version, token } = decodeHello(f.payload);
      return version === PROTOCOL_VERSION && token.length === this.token.length && timingSafeEqual(token, this.token);
    } catch {
      return false;
    }
  }

  private adopt(sock: net.Socket, decoder: FrameDecoder, early: Frame[]): void {
    decoder.setMaxPayload(MAX_PAYLOAD);
    this.conn = sock;
    sock.on('data', (chunk: Buffer) => this.onAgentData(sock, decoder, chunk));
    for (const w of [...this.waiters]) w.resolve();
    this.safeEmit('connected');
    this.dispatchAll(sock, early);
  }

  private onAgentData(sock: net.Socket, decoder: FrameDecoder, chunk: Buffer): void {
    if (sock !== this.conn) return;
    let frames: Frame[];
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      this.drop(sock, e);
      return;
    }
    this.dispatchAll(sock, frames);
  }

  private dispatchAll(sock: net.Socket, frames: Frame[]): void {
    for (const f of frames) {
      if (sock !== this.conn) return;
      try {
        if (f.type < MsgType.STARTED || f.type > MAX_AGENT_TYPE) {
          throw new ProtocolError(`unexpected frame type ${f.type}`);
        }
        // Unknown channels: an op that finished, failed or was cancelled; late frames are dropped.
        if (f.channel !== 0) this.channels.get(f.channel)?.onFrame(f);
      } catch (e) {
        this.drop(sock, e);
        return;
      }
    }
  }

  private drop(sock: net.Socket, reason: unknown): void {
    sock.destroy();
    this.onAgentClose(sock, reason);
  }

  private onAgentClose(sock: net.Socket, reason?: unknown): void {
    if (sock !== this.conn) return;
    this.conn = null;
    this.pauseHolders.clear();
    const err = new AgentDisconnectedError(
      reason instanceof Error ? `agent connection dropped: ${reason.message}` : 'agent disconnected',
    );
    const handlers = [...this.channels.values()];
    this.channels.clear();
    for (const h of handlers) h.fail(err);
    this.safeEmit('disconnected', err);
  }

  private safeEmit(event: string, ...args: unknown[]): void {
    try {
      this.emit(event, ...args);
    } catch {
      // Listener errors are the listener's; the link keeps serving.
    }
  }

  // ---- sending ----

  private allocChannel(): number {
    for (;;) {
      const c = this.nextChannel;
      this.nextChannel = c >= 0xffffffff ? 1 : c + 1;
      if (!this.channels.has(c)) return c;
    }
  }

  /** Writes one frame; returns false when the socket's buffer is full (wait for 'drain'). */
  private writeFrame(sock: net.Socket, type: number, channel: number, payload?: Buffer): boolean {
    if (sock.destroyed) return true;
    if (!payload || payload.length <= COPY_LIMIT) return sock.write(encodeFrame(type, channel, payload));
    sock.cork();
    sock.write(encodeHeader(type, channel, payload.length));
    const ok = sock.write(payload);
    sock.uncork();
    return ok;
  }

  private holdPause(tok: symbol): void {
    if (!this.conn || this.pauseHolders.has(tok)) return;
    this.pauseHolders.add(tok);
    this.conn.pause();
  }

  private releasePause(tok: symbol): void {
    if (!this.pauseHolders.delete(tok)) return;
    if (this.pauseHolders.size === 0) this.conn?.resume();
  }

  /**
   * One request on a fresh channel; `onFrame` sees every frame but ERROR. With `timeoutMs`, an
   * answer not complete by then fails with AgentError ETIMEDOUT and the agent gets CANCEL.
   */
  private request<T>(type: number, payload: Buffer | undefined, onFrame: (f: Frame, ctl: OpControl<T>) => void, timeoutMs?: number): Promise<T> {
    const sock = this.conn;
    if (!sock) return Promise.reject(new AgentDisconnectedError());
    const channel = this.allocChannel();
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const ctl: OpControl<T> = {
        resolve: (v) => {
          clearTimeout(timer);
          this.channels.delete(channel);
          resolve(v);
        },
        reject: (e, cancel = false) => {
          clearTimeout(timer);
          this.channels.delete(channel);
          if (cancel && this.conn === sock) this.writeFrame(sock, MsgType.CANCEL, channel);
          reject(e);
        },
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          if (this.channels.has(channel)) ctl.reject(new AgentError(ETIMEDOUT, 'the agent did not answer in time'), true);
        }, timeoutMs);
        timer.unref();
      }
      this.channels.set(channel, {
        onFrame: (f) => {
          if (f.type === MsgType.ERROR) {
            const e = decodeError(f.payload);
            ctl.reject(new AgentError(e.errno, e.message));
            return;
          }
          onFrame(f, ctl);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.writeFrame(sock, type, channel, payload);
    });
  }

  private static expectEmptyOk(f: Frame, what: string): void {
    if (f.type !== MsgType.FOK || f.payload.length !== 0) throw new ProtocolError(`${what}: unexpected frame ${f.type}`);
  }

  // ---- execs ----

  exec(spec: AgentExecSpec, out: AgentExecOutput = {}): AgentExecHandle {
    const problem = execSpecProblem(spec);
    if (problem) return rejectedHandle(new AgentError(EINVAL, problem));
    const sock = this.conn;
    if (!sock) return rejectedHandle(new AgentDisconnectedError());
    let payload: Buffer;
    try {
      payload = encodeExec(spec);
    } catch (e) {
      return rejectedHandle(new AgentError(E2BIG, (e as Error).message));
    }

    let resolveStarted!: (pid: number) => void;
    let rejectStarted!: (e: Error) => void;
    let resolveDone!: (x: AgentExit) => void;
    let rejectDone!: (e: Error) => void;
    const started = new Promise<number>((res, rej) => {
      resolveStarted = res;
      rejectStarted = rej;
    });
    const done = new Promise<AgentExit>((res, rej) => {
      resolveDone = res;
      rejectDone = rej;
    });
    // Callers often await only one of the two: the other must not become an unhandled rejection.
    started.catch(noop);
    done.catch(noop);

    let isStarted = false;
    let finished = false;
    let stdinOpen = (spec.keepStdinOpen || spec.pty !== undefined) && !spec.background;
    let held = false;
    const channel = this.allocChannel();
    const fail = (err: Error): void => {
      finished = true;
      if (!isStarted) rejectStarted(err);
      rejectDone(err);
    };
    this.channels.set(channel, {
      onFrame: (f) => {
        switch (f.type) {
          case MsgType.STARTED: {
            const pid = decodeStarted(f.payload);
            if (isStarted) throw new ProtocolError('duplicate STARTED');
            isStarted = true;
            resolveStarted(pid);
            return;
          }
          case MsgType.STDOUT:
            if (f.payload.length) safeCall(out.onStdout, f.payload);
            return;
          case MsgType.STDERR:
            if (f.payload.length) safeCall(out.onStderr, f.payload);
            return;
          case MsgType.EXIT: {
            const exit = decodeExit(f.payload);
            if (!isStarted) throw new ProtocolError('EXIT before STARTED');
            this.channels.delete(channel);
            finished = true;
            resolveDone(exit);
            return;
          }
          case MsgType.ERROR: {
            const e = decodeError(f.payload);
            if (isStarted) throw new ProtocolError('ERROR after STARTED');
            this.channels.delete(channel);
            fail(new AgentError(e.errno, e.message));
            return;
          }
          default:
            throw new ProtocolError(`unexpected frame ${f.type} on an exec channel`);
        }
      },
      fail,
    });
    this.writeFrame(sock, MsgType.EXEC, channel, payload);

    const live = (): boolean => !finished && this.conn === sock;
    return {
      channel,
      started,
      done,
      writeStdin: (data: Buffer) => {
        if (!stdinOpen || !live()) return false;
        if (spec.pty && sock.writableLength > PTY_STDIN_BACKLOG) return false;
        for (let off = 0; off < data.length; off += MAX_PAYLOAD) {
          this.writeFrame(sock, MsgType.STDIN, channel, data.subarray(off, off + MAX_PAYLOAD));
        }
        return true;
      },
      closeStdin: () => {
        if (!stdinOpen) return;
        stdinOpen = false;
        if (live()) this.writeFrame(sock, MsgType.STDIN, channel);
      },
      signal: (signo: number) => {
        if (!Number.isInteger(signo) || signo < 1 || signo > 64) throw new RangeError(`bad signal ${signo}`);
        if (live()) this.writeFrame(sock, MsgType.SIGNAL, channel, encodeU32s(signo));
      },
      resize: (size: PtySize) => {
        const payload = encodeResize(size); // throws RangeError on a bad size
        // A resize storm at a stalled agent is dropped like input: only the last size matters anyway.
        if (spec.pty && live() && sock.writableLength <= PTY_STDIN_BACKLOG) this.writeFrame(sock, MsgType.RESIZE, channel, payload);
      },
      holdOutput: (hold: boolean) => {
        if (hold === held || !live()) return;
        held = hold;
        this.writeFrame(sock, MsgType.FLOW, channel, encodeU32s(hold ? 1 : 0));
      },
    };
  }

  ps(): Promise<AgentProcess[]> {
    const parts: Buffer[] = [];
    let total = 0;
    return this.request<AgentProcess[]>(MsgType.PS, undefined, (f, ctl) => {
      if (f.type === MsgType.PS_RESULT) {
        total += f.payload.length;
        if (total > MAX_RESULT_BYTES) ctl.reject(new AgentError(E2BIG, 'process list exceeds 16 MiB'), true);
        else parts.push(f.payload);
        return;
      }
      AgentLink.expectEmptyOk(f, 'PS');
      ctl.resolve(decodePsLines(Buffer.concat(parts).toString('utf8')));
    });
  }

  killPid(pid: number, signo: number): Promise<void> {
    if (!Number.isInteger(pid) || pid < 1 || pid > 0x7fffffff) return Promise.reject(new AgentError(EINVAL, `bad pid ${pid}`));
    if (!Number.isInteger(signo) || signo < 0 || signo > 64) return Promise.reject(new AgentError(EINVAL, `bad signal ${signo}`));
    return this.request<void>(MsgType.KILLPID, encodeU32s(pid, signo), (f, ctl) => {
      AgentLink.expectEmptyOk(f, 'KILLPID');
      ctl.resolve();
    });
  }

  ping(): Promise<void> {
    const nonce = randomBytes(8);
    return this.request<void>(MsgType.PING, nonce, (f, ctl) => {
      if (f.type !== MsgType.PONG || !f.payload.equals(nonce)) throw new ProtocolError('bad PONG');
      ctl.resolve();
    });
  }

  // ---- files ----

  readFile(path: string, maxBytes: number): Promise<Buffer> {
    const bad = pathProblem(path);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) return Promise.reject(new AgentError(EINVAL, 'bad maxBytes'));
    const parts: Buffer[] = [];
    let total = 0;
    return this.request<Buffer>(MsgType.FREAD, encodePathRequest(path), (f, ctl) => {
      if (f.type !== MsgType.FDATA) throw new ProtocolError(`FREAD: unexpected frame ${f.type}`);
      if (f.payload.length === 0) {
        ctl.resolve(Buffer.concat(parts, total));
        return;
      }
      total += f.payload.length;
      if (total > maxBytes) ctl.reject(new AgentError(EFBIG, `${path} is larger than ${maxBytes} bytes`), true);
      else parts.push(f.payload);
    });
  }

  /**
   * One request whose answer is a stream of items. A consumer that falls more than 8 MiB
   * behind pauses the whole link (all channels) until it catches up: memory stays bounded, at
   * the cost of head-of-line blocking. Leaving the loop early sends CANCEL to the agent.
   * `onFrame` turns a frame into items (`push`, with the bytes each costs) or ends the stream.
   */
  private async *streamRequest<T>(
    type: number,
    payload: Buffer,
    onFrame: (f: Frame, push: (item: T, bytes: number) => void, end: () => void) => void,
  ): AsyncGenerator<T> {
    const sock = this.conn;
    if (!sock) throw new AgentDisconnectedError();
    const channel = this.allocChannel();
    const pauseToken = Symbol('stream');
    const queue: { item: T; bytes: number }[] = [];
    let head = 0;
    let queued = 0;
    let ended = false;
    let error: Error | null = null;
    let wake: (() => void) | null = null;
    const notify = (): void => {
      const w = wake;
      wake = null;
      w?.();
    };
    const push = (item: T, bytes: number): void => {
      queue.push({ item, bytes });
      queued += bytes;
      if (queued > STREAM_HIGH_WATER) this.holdPause(pauseToken);
    };
    const end = (): void => {
      this.channels.delete(channel);
      ended = true;
    };
    this.channels.set(channel, {
      onFrame: (f) => {
        if (f.type === MsgType.ERROR) {
          const e = decodeError(f.payload);
          this.channels.delete(channel);
          error = new AgentError(e.errno, e.message);
        } else {
          onFrame(f, push, end);
        }
        notify();
      },
      fail: (e) => {
        error = e;
        notify();
      },
    });
    this.writeFrame(sock, type, channel, payload);
    try {
      for (;;) {
        if (head < queue.length) {
          const { item, bytes } = queue[head]!;
          queue[head++] = undefined as never;
          if (head > 1024 && head * 2 > queue.length) {
            queue.splice(0, head);
            head = 0;
          }
          queued -= bytes;
          if (queued < STREAM_LOW_WATER) this.releasePause(pauseToken);
          yield item;
          continue;
        }
        if (error) throw error;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    } finally {
      this.releasePause(pauseToken);
      if (this.channels.has(channel)) {
        this.channels.delete(channel);
        if (this.conn === sock) this.writeFrame(sock, MsgType.CANCEL, channel);
      }
    }
  }

  /** Streams a file (see streamRequest for the memory bound). Breaking out cancels the read. */
  async *readFileStream(path: string): AsyncIterable<Buffer> {
    const bad = pathProblem(path);
    if (bad) throw new AgentError(EINVAL, bad);
    yield* this.streamRequest<Buffer>(MsgType.FREAD, encodePathRequest(path), (f, push, end) => {
      if (f.type !== MsgType.FDATA) throw new ProtocolError(`FREAD: unexpected frame ${f.type}`);
      if (f.payload.length === 0) end();
      else push(f.payload, f.payload.length);
    });
  }

  /**
   * Walks a directory tree inside the agent without following any link: entries (paths
   * relative to `path`), each regular file's entry followed by exactly its size in Buffers.
   * The agent enforces the size (a file that shrinks is padded with zeros, one that grows is
   * cut); more or fewer bytes from it break the protocol and drop the connection.
   */
  async *walk(path: string): AsyncIterable<AgentWalkItem> {
    const bad = pathProblem(path);
    if (bad) throw new AgentError(EINVAL, bad);
    let remaining = 0;
    yield* this.streamRequest<AgentWalkItem>(MsgType.FWALK, encodePathRequest(path), (f, push, end) => {
      if (f.type === MsgType.FDATA) {
        if (f.payload.length === 0 || f.payload.length > remaining) throw new ProtocolError('FWALK: file data beyond its size');
        remaining -= f.payload.length;
        push(f.payload, f.payload.length);
        return;
      }
      if (remaining > 0) throw new ProtocolError('FWALK: file data shorter than its size');
      if (f.type === MsgType.FWALK_ENTRY) {
        const entry = decodeWalkEntry(f.payload);
        if (entry.type === 'file') remaining = entry.size;
        push(entry, 64 + entry.path.length + entry.linkTarget.length);
        return;
      }
      AgentLink.expectEmptyOk(f, 'FWALK');
      end();
    });
  }

  /**
   * LWALK (microvm): the guest agent's walk of the sandbox's writable layer (its overlay upper
   * dir, which only the guest can read), every entry at once. The guest is hostile: more than
   * LWALK_MAX_ENTRIES entries or a bad entry (unsafe path, unknown type) drops the link; more
   * than 16 MiB of entries is AgentError E2BIG (and so is the agent's own entry bound);
   * `timeoutMs` bounds the whole answer (ETIMEDOUT). ENOTSUP: the agent has no layer.
   */
  layerWalk(timeoutMs: number): Promise<AgentLayerEntry[]> {
    const entries: AgentLayerEntry[] = [];
    let total = 0;
    return this.request<AgentLayerEntry[]>(MsgType.LWALK, undefined, (f, ctl) => {
      if (f.type === MsgType.LWALK_RESULT) {
        total += f.payload.length;
        if (total > MAX_RESULT_BYTES) {
          ctl.reject(new AgentError(E2BIG, 'layer walk exceeds 16 MiB'), true);
          return;
        }
        const got = decodeLayerEntries(f.payload);
        if (entries.length + got.length > LWALK_MAX_ENTRIES) throw new ProtocolError('LWALK: more entries than its bound');
        for (const e of got) entries.push(e);
        return;
      }
      AgentLink.expectEmptyOk(f, 'LWALK');
      ctl.resolve(entries);
    }, timeoutMs);
  }

  /**
   * LREAD (microvm): streams a regular file of the writable layer, `path` relative to its upper
   * dir (the agent opens it beneath the layer, never following a link). Like readFileStream:
   * leaving the loop early sends CANCEL.
   */
  async *readLayerFileStream(path: string): AsyncIterable<Buffer> {
    if (typeof path !== 'string' || path.includes('\0') || !isSafeRelativePath(path)) throw new AgentError(EINVAL, 'bad layer path');
    yield* this.streamRequest<Buffer>(MsgType.LREAD, encodePathRequest(path), (f, push, end) => {
      if (f.type !== MsgType.FDATA) throw new ProtocolError(`LREAD: unexpected frame ${f.type}`);
      if (f.payload.length === 0) end();
      else push(f.payload, f.payload.length);
    });
  }

  /** Writes via a temp file renamed into place; resolves with the new file's stat. */
  async writeFile(path: string, data: Buffer | AsyncIterable<Buffer>, opts: { mode?: number; mkdirs?: boolean } = {}): Promise<AgentFileStat> {
    const bad = pathProblem(path);
    if (bad) throw new AgentError(EINVAL, bad);
    const mode = opts.mode ?? 0o644;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new AgentError(EINVAL, 'mode must be within 0o777');
    const sock = this.conn;
    if (!sock) throw new AgentDisconnectedError();
    const channel = this.allocChannel();
    let settled = false;
    const result = new Promise<AgentFileStat>((resolve, reject) => {
      this.channels.set(channel, {
        onFrame: (f) => {
          if (f.type === MsgType.ERROR) {
            const e = decodeError(f.payload);
            this.channels.delete(channel);
            settled = true;
            reject(new AgentError(e.errno, e.message));
            return;
          }
          if (f.type !== MsgType.FOK) throw new ProtocolError(`FWRITE: unexpected frame ${f.type}`);
          const st = decodeStat(f.payload);
          this.channels.delete(channel);
          settled = true;
          resolve(st);
        },
        fail: (e) => {
          settled = true;
          reject(e);
        },
      });
    });
    result.catch(noop); // observed below; the agent may fail it while we are still sending
    const live = (): boolean => !settled && this.conn === sock;
    this.writeFrame(sock, MsgType.FWRITE_BEGIN, channel, encodePathRequest(path, mode, opts.mkdirs ? 1 : 0));
    const sendChunk = async (b: Buffer): Promise<void> => {
      for (let off = 0; off < b.length && live(); off += WRITE_CHUNK) {
        if (!this.writeFrame(sock, MsgType.FWRITE_DATA, channel, b.subarray(off, off + WRITE_CHUNK)) && !Buffer.isBuffer(data)) {
          await waitDrain(sock);
        }
      }
    };
    if (Buffer.isBuffer(data)) {
      await sendChunk(data);
    } else {
      try {
        for await (const chunk of data) {
          if (!live()) break;
          const u: unknown = chunk;
          if (!(u instanceof Uint8Array)) throw new TypeError('writeFile data must yield Buffers');
          await sendChunk(Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength));
        }
      } catch (e) {
        if (this.channels.delete(channel) && this.conn === sock) this.writeFrame(sock, MsgType.CANCEL, channel);
        throw e;
      }
    }
    if (live()) this.writeFrame(sock, MsgType.FWRITE_DATA, channel);
    return result;
  }

  list(path: string): Promise<AgentDirEntry[]> {
    const bad = pathProblem(path);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    const entries: AgentDirEntry[] = [];
    let total = 0;
    return this.request<AgentDirEntry[]>(MsgType.FLIST, encodePathRequest(path), (f, ctl) => {
      if (f.type === MsgType.FLIST_RESULT) {
        total += f.payload.length;
        if (total > MAX_RESULT_BYTES) ctl.reject(new AgentError(E2BIG, `listing of ${path} exceeds 16 MiB`), true);
        else entries.push(...decodeListEntries(f.payload));
        return;
      }
      AgentLink.expectEmptyOk(f, 'FLIST');
      ctl.resolve(entries);
    });
  }

  stat(path: string): Promise<AgentFileStat> {
    const bad = pathProblem(path);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    return this.request<AgentFileStat>(MsgType.FSTAT, encodePathRequest(path), (f, ctl) => {
      if (f.type !== MsgType.FOK) throw new ProtocolError(`FSTAT: unexpected frame ${f.type}`);
      ctl.resolve(decodeStat(f.payload));
    });
  }

  remove(path: string, recursive: boolean): Promise<void> {
    const bad = pathProblem(path);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    return this.request<void>(MsgType.FDELETE, encodePathRequest(path, recursive ? 1 : 0), (f, ctl) => {
      AgentLink.expectEmptyOk(f, 'FDELETE');
      ctl.resolve();
    });
  }

  mkdir(path: string, opts: { mode?: number; parents?: boolean } = {}): Promise<void> {
    const bad = pathProblem(path);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    const mode = opts.mode ?? 0o755;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) return Promise.reject(new AgentError(EINVAL, 'mode must be within 0o777'));
    return this.request<void>(MsgType.FMKDIR, encodePathRequest(path, mode, opts.parents ? 1 : 0), (f, ctl) => {
      AgentLink.expectEmptyOk(f, 'FMKDIR');
      ctl.resolve();
    });
  }

  /** Renames inside the sandbox; the last component of either path is never followed. */
  rename(from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<AgentFileStat> {
    const bad = pathProblem(from) ?? pathProblem(to);
    if (bad) return Promise.reject(new AgentError(EINVAL, bad));
    return this.request<AgentFileStat>(MsgType.FRENAME, encodeRename(from, to, opts.overwrite ?? false), (f, ctl) => {
      if (f.type !== MsgType.FOK) throw new ProtocolError(`FRENAME: unexpected frame ${f.type}`);
      ctl.resolve(decodeStat(f.payload));
    });
  }

  /**
   * Watches a directory (and with `recursive` every directory below it, also ones created
   * later). The agent coalesces events over 50 ms windows and, past its bounds, drops them
   * for one 'overflow' event. `onEvent` never sees 'ready' or 'ended' (those settle `ready`
   * and `done`); events outside the watched directory break the protocol.
   */
  watch(path: string, opts: { recursive?: boolean }, onEvent: (e: AgentFileEvent) => void): AgentWatch {
    const bad = pathProblem(path);
    const sock = this.conn;
    const failed = (e: Error): AgentWatch => {
      const ready = Promise.reject<string>(e);
      const done = Promise.reject<void>(e);
      ready.catch(noop);
      done.catch(noop);
      return { ready, done, stop: noop };
    };
    if (bad) return failed(new AgentError(EINVAL, bad));
    if (!sock) return failed(new AgentDisconnectedError());
    const channel = this.allocChannel();
    let resolveReady!: (root: string) => void;
    let rejectReady!: (e: Error) => void;
    let resolveDone!: () => void;
    let rejectDone!: (e: Error) => void;
    const ready = new Promise<string>((res, rej) => { resolveReady = res; rejectReady = rej; });
    const done = new Promise<void>((res, rej) => { resolveDone = res; rejectDone = rej; });
    ready.catch(noop);
    done.catch(noop);
    let root: string | null = null;
    const inside = (p: string): boolean => root === '/' || p === root || p.startsWith(`${root}/`);
    const finish = (e?: Error): void => {
      this.channels.delete(channel);
      if (root === null) rejectReady(e ?? new AgentDisconnectedError('watch ended before it started'));
      if (e) rejectDone(e);
      else resolveDone();
    };
    this.channels.set(channel, {
      onFrame: (f) => {
        if (f.type === MsgType.ERROR) {
          const e = decodeError(f.payload);
          finish(new AgentError(e.errno, e.message));
          return;
        }
        if (f.type !== MsgType.FEVENT) throw new ProtocolError(`FWATCH: unexpected frame ${f.type}`);
        const ev = decodeFileEvent(f.payload);
        if (root === null) {
          if (ev.kind !== 'ready') throw new ProtocolError('FWATCH: event before ready');
          root = ev.path;
          resolveReady(root);
          return;
        }
        if (ev.kind === 'ready' || !inside(ev.path) || (ev.from !== undefined && !inside(ev.from))) {
          throw new ProtocolError('FWATCH: event outside the watched directory');
        }
        if (ev.kind === 'ended') {
          finish();
          return;
        }
        try {
          onEvent(ev);
        } catch {
          // The consumer's exception must not tear down the link.
        }
      },
      fail: (e) => finish(e),
    });
    this.writeFrame(sock, MsgType.FWATCH, channel, encodePathRequest(path, opts.recursive ? 1 : 0));
    return {
      ready,
      done,
      stop: () => {
        if (!this.channels.has(channel)) return;
        this.channels.delete(channel);
        if (this.conn === sock) this.writeFrame(sock, MsgType.CANCEL, channel);
        if (root === null) rejectReady(new AgentError(125, 'watch stopped'));
        resolveDone();
      },
    };
  }

  /** Closes the server and any connection, fails pending ops, removes the socket file. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    this.closing = (async () => {
      for (const s of this.pending) s.destroy();
      this.pending.clear();
      const conn = this.conn;
      if (conn) {
        conn.destroy();
        this.onAgentClose(conn, new Error('link closed'));
      }
      for (const w of [...this.waiters]) w.reject(new AgentDisconnectedError('agent link is closed'));
      await new Promise<void>((resolve) => this.server.close(() => resolve()));
      await fsp.unlink(this.socketPath).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    })();
    return this.closing;
  }
}

function waitDrain(sock: net.Socket): Promise<void> {
  if (sock.destroyed || !sock.writableNeedDrain) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = (): void => {
      sock.off('drain', done);
      sock.off('close', done);
      resolve();
    };
    sock.on('drain', done);
    sock.on('close', done);
  });
}
