/**
 * Interactive terminal sessions: one exec on a new pseudo-terminal inside the sandbox (the
 * agent's PTY exec), with input, resize, signals and per-session flow control. The engine
 * hands startPtySession a PtyContext for a running, reachable sandbox.
 */
import { newExecId } from '../util/ids.js';
import { z } from 'zod';
import { AgentError, type AgentExecHandle, type AgentExecSpec, type AgentExit, type AgentLink } from '../agent/agent-link.js';
import { AirlockError, badRequest } from '../errors.js';
import type { ExecReason } from '../types.js';
import { mapAgentError } from './agent-errors.js';
import { execRequestSchema } from './exec-schema.js';
import { firstIssue } from './spec.js';

export const PTY_MIN_SIZE = 1;
export const PTY_MAX_SIZE = 1000;
export const DEFAULT_PTY_COLS = 80;
export const DEFAULT_PTY_ROWS = 24;
/** Output held for a session with no listener (or a paused one) before the agent is told to stop reading it. */
const BACKLOG_HIGH = 1024 * 1024;
/**
 * What an agent that honours FLOW can still deliver after it (its 8 MiB queue, socket buffers)
 * stays far below this; past it the agent is not holding back, so the session is killed and
 * the excess dropped rather than held in the daemon's memory.
 */
const BACKLOG_MAX = 32 * 1024 * 1024;

export interface PtyOptions {
  /** Default: the sandbox's shell, /bin/bash when it has one, else /bin/sh. */
  cmd?: string[];
  /** Terminal size, 1..1000 each; default 80 × 24. */
  cols?: number;
  rows?: number;
  /** Added to the template's and the sandbox's environment; TERM defaults to xterm-256color. */
  env?: Record<string, string>;
  /** Default: the sandbox's workdir. */
  cwd?: string;
  /** Kill the session's process after this long (exit 124); default: bounded by the sandbox lifetime. */
  timeoutSeconds?: number;
  user?: { uid: number; gid: number };
}

export interface PtyExit {
  /** The process's exit status; 128+n when killed by signal n; 124 timed out; 137 when the sandbox ended. */
  exitCode: number;
  reason: ExecReason;
  durationMs: number;
  signal?: number;
}

export interface PtySession {
  /** The exec id (as in audit events and the process list). */
  readonly execId: string;
  /** In-sandbox pid of the session's process. */
  readonly pid: number;
  readonly cmd: string[];
  /**
   * Input, as if typed (a string is sent as UTF-8). Returns false when it was dropped: the
   * session ended, or input is arriving far faster than the sandbox takes it.
   */
  write(data: Buffer | string): boolean;
  /** New terminal size (1..1000 each); the program gets SIGWINCH. */
  resize(cols: number, rows: number): void;
  /** Signals the session's process group (default SIGKILL); no-op once it ended. */
  kill(signal?: number): void;
  /**
   * Terminal output. Output produced before the first listener is handed to it at once, in
   * order, from inside this call. Returns the function that removes the listener.
   */
  onData(listener: (chunk: Buffer) => void): () => void;
  /** Flow control: while paused the sandbox's writer blocks; nothing else on the sandbox waits. */
  pause(): void;
  resume(): void;
  /** Settles (never rejects) once the process ended, with why; `exec.exited` is recorded by then. */
  readonly exited: Promise<PtyExit>;
}

export interface PtyContext {
  link: AgentLink;
  /** The exec to start, with `pty` set. */
  spec: AgentExecSpec & { pty: { rows: number; cols: number } };
  sandbox: string;
  /** Names of the variables the caller set (for the audit record; values are never logged). */
  envNames: string[];
  /** The sandbox's channel → exec id map (for the process list). */
  execIds: Map<number, string>;
  audit(type: string, data: Record<string, unknown>): void;
  /** Terminal output to keep for the exec record: the tenant's output cap (0: sizes only). */
  outputCap: number;
  /** Records the ended session: its exec record and exec.exited event, with the kept output. */
  recordExit(x: { execId: string; startedAt: number; endedAt: number; exit: { exitCode: number; reason: ExecReason }; output: { total: number; bytes(): Buffer } }): void;
  /** How an exit the agent reported maps to an exit code and reason (timeouts, OOM, signals). */
  classify(res: AgentExit, killed: boolean): { exitCode: number; reason: ExecReason; signal?: number };
  /** Null while the sandbox lives on; once it is ending, settles when that end is recorded, with what its execs report. */
  sandboxEnding(): Promise<{ exitCode: number; reason: ExecReason }> | null;
  /** After the process ended (disk accounting). */
  afterExit(): void;
}

const size = z.coerce.number().int().min(PTY_MIN_SIZE).max(PTY_MAX_SIZE);

export const ptyOptionsSchema = execRequestSchema
  .pick({ cwd: true, env: true, timeoutSeconds: true, user: true })
  .extend({
    cmd: execRequestSchema.shape.cmd.optional(),
    cols: size.default(DEFAULT_PTY_COLS),
    rows: size.default(DEFAULT_PTY_ROWS),
  })
  .strict();

export type ParsedPtyOptions = z.output<typeof ptyOptionsSchema>;

export function parsePtyOptions(input: unknown): ParsedPtyOptions {
  const r = ptyOptionsSchema.safeParse(input ?? {});
  if (!r.success) {
    const { field, message } = firstIssue(r.error);
    throw badRequest(message, field);
  }
  if (r.data.cmd && r.data.cmd[0] === '') throw badRequest('cmd.0: must not be empty', 'cmd.0');
  return r.data;
}

function checkSize(cols: unknown, rows: unknown): { cols: number; rows: number } {
  const ok = (n: unknown) => Number.isInteger(n) && (n as number) >= PTY_MIN_SIZE && (n as number) <= PTY_MAX_SIZE;
  if (!ok(cols) || !ok(rows)) throw badRequest(`cols and rows must be integers from ${PTY_MIN_SIZE} to ${PTY_MAX_SIZE}`, ok(cols) ? 'rows' : 'cols');
  return { cols: cols as number, rows: rows as number };
}

/** The shell a session runs when no command is given: bash where the template has it. */
export async function defaultShell(link: AgentLink): Promise<string[]> {
  try {
    const st = await link.stat('/bin/bash');
    if (st.type === 'file' || st.type === 'symlink') return ['/bin/bash'];
  } catch (e) {
    if (!(e instanceof AgentError)) throw mapAgentError(e);
  }
  return ['/bin/sh'];
}

/** Errors of a pty exec that mean "no terminal device here", not "no such file" (which would read as 404). */
const NO_PTY_ERRNOS = new Set([2 /* ENOENT */, 5 /* EIO */, 6 /* ENXIO */, 19 /* ENODEV */]);

function startError(e: unknown, cmd: string): AirlockError {
  if (e instanceof AgentError && NO_PTY_ERRNOS.has(e.errno)) {
    return new AirlockError('conflict', `${cmd}: the sandbox has no usable terminal device (/dev/ptmx): ${e.message}`);
  }
  return mapAgentError(e);
}

export async function startPtySession(ctx: PtyContext): Promise<PtySession> {
  const startedAt = Date.now();
  const listeners = new Set<(chunk: Buffer) => void>();
  let backlog: Buffer[] = [];
  let backlogBytes = 0;
  let outputBytes = 0;
  // The first outputCap bytes, copied (the link's frames are not ours to hold), for the record.
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let userPaused = false;
  let killed = false;
  let ended = false;
  // Assigned before any output can arrive: the link delivers frames from later socket events.
  let handle!: AgentExecHandle;

  const updateHold = () => handle.holdOutput(userPaused || backlogBytes > BACKLOG_HIGH);
  const deliver = (chunk: Buffer) => {
    for (const l of [...listeners]) {
      try {
        l(chunk);
      } catch {
        // A listener's exception must not end the session or the link it shares.
      }
    }
  };
  const onOutput = (chunk: Buffer) => {
    outputBytes += chunk.length;
    if (keptBytes < ctx.outputCap) {
      const part = Buffer.from(chunk.subarray(0, ctx.outputCap - keptBytes));
      kept.push(part);
      keptBytes += part.length;
    }
    if (listeners.size === 0 || backlog.length > 0 || userPaused) {
      if (backlogBytes + chunk.length > BACKLOG_MAX) {
        if (!killed) {
          killed = true;
          handle.signal(9);
        }
        return;
      }
      backlog.push(chunk);
      backlogBytes += chunk.length;
      if (backlogBytes > BACKLOG_HIGH) updateHold();
      return;
    }
    deliver(chunk);
  };
  const flushBacklog = () => {
    const pending = backlog;
    backlog = [];
    backlogBytes = 0;
    for (const chunk of pending) deliver(chunk);
    updateHold();
  };

  handle = ctx.link.exec(ctx.spec, { onStdout: onOutput, onStderr: onOutput });
  const cmd = ctx.spec.argv;
  const execId = newExecId(ctx.sandbox, handle.channel);
  if (handle.channel) ctx.execIds.set(handle.channel, execId);
  let pid: number;
  try {
    pid = await handle.started;
  } catch (e) {
    ctx.execIds.delete(handle.channel);
    if (ctx.sandboxEnding()) throw new AirlockError('conflict', `sandbox ${ctx.sandbox} is ending`);
    throw startError(e, cmd[0]!);
  }
  ctx.audit('exec.started', {
    execId, cmd, cwd: ctx.spec.cwd, envNames: ctx.envNames, pty: true,
    cols: ctx.spec.pty.cols, rows: ctx.spec.pty.rows, pid,
  });

  const exited = (async (): Promise<PtyExit> => {
    let exit: { exitCode: number; reason: ExecReason; signal?: number };
    try {
      exit = ctx.classify(await handle.done, killed);
    } catch (e) {
      const ending = ctx.sandboxEnding();
      if (ending) exit = await ending;
      else if ((e as Error).name === 'AgentDisconnectedError') exit = { exitCode: 137, reason: 'sandbox_ended' };
      else exit = { exitCode: 125, reason: 'error' };
    } finally {
      ended = true;
      ctx.execIds.delete(handle.channel);
    }
    if (backlog.length > 0 && listeners.size > 0) flushBacklog();
    const endedAt = Date.now();
    const durationMs = endedAt - startedAt;
    try {
      ctx.afterExit();
    } catch {
      // Accounting must not keep the session's end from being reported.
    }
    // exec.exited (pty: true, outputBytes, the output's blob) is appended with the record.
    ctx.recordExit({ execId, startedAt, endedAt, exit, output: { total: outputBytes, bytes: () => Buffer.concat(kept, keptBytes) } });
    const result: PtyExit = { exitCode: exit.exitCode, reason: exit.reason, durationMs };
    if (exit.signal) result.signal = exit.signal;
    return result;
  })();

  return {
    execId,
    pid,
    cmd: [...cmd],
    write(data: Buffer | string): boolean {
      if (ended) return false;
      const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      if (!Buffer.isBuffer(buf)) throw badRequest('input must be a string or bytes', 'data');
      return buf.length === 0 || handle.writeStdin(buf);
    },
    resize(cols: number, rows: number): void {
      const s = checkSize(cols, rows);
      if (!ended) handle.resize({ rows: s.rows, cols: s.cols });
    },
    kill(signal = 9): void {
      if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw badRequest('signal: must be 1..64', 'signal');
      if (ended) return;
      killed = true;
      handle.signal(signal);
    },
    onData(listener: (chunk: Buffer) => void): () => void {
      if (typeof listener !== 'function') throw new TypeError('onData needs a function');
      listeners.add(listener);
      if (backlog.length > 0 && !userPaused) flushBacklog();
      return () => { listeners.delete(listener); };
    },
    pause(): void {
      if (userPaused) return;
      userPaused = true;
      if (!ended) updateHold();
    },
    resume(): void {
      if (!userPaused) return;
      userPaused = false;
      if (backlog.length > 0 && listeners.size > 0) flushBacklog();
      else if (!ended) updateHold();
    },
    exited,
  };
}
