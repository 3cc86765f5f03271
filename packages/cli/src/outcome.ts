/**
 * How a command's end becomes the CLI's exit status and its one `airlock: …` line.
 * Conventions of timeout(1) and shells: 124 timed out, 137 killed (SIGKILL, incl. OOM), 130 interrupted.
 */
import type { ExecReason, SandboxInfo } from './backend.js';
import { formatDuration } from './flags.js';
import { EXIT } from './output.js';

export interface Outcome {
  exitCode: number;
  /** The reason as the CLI reports it: `sandbox_ended` is resolved to why the sandbox ended when known. */
  reason: string;
  /** The `airlock: …` line (without the prefix), or null when the command simply exited. */
  message: string | null;
}

export interface OutcomeContext {
  /** The sandbox after the command ended (looked up only when the command did not simply exit). */
  sandbox?: SandboxInfo | null;
  /** The per-command timeout that was asked for, in seconds. */
  execTimeoutSeconds?: number;
  /** The sandbox lifetime that was asked for, in seconds. */
  sandboxTimeoutSeconds?: number;
  /** The memory limit the sandbox got, for the OOM message. */
  memoryMiB?: number;
}

export function sandboxLifetimeSeconds(info: SandboxInfo): number | undefined {
  const ms = Date.parse(info.expiresAt) - Date.parse(info.createdAt);
  return Number.isFinite(ms) && ms > 0 ? Math.round(ms / 1000) : undefined;
}

function oomMessage(memoryMiB: number | undefined): string {
  return memoryMiB ? `command killed: out of memory (limit ${memoryMiB} MiB)` : 'command killed: out of memory';
}

function sandboxTimeoutMessage(ctx: OutcomeContext): string {
  const s = ctx.sandboxTimeoutSeconds ?? (ctx.sandbox ? sandboxLifetimeSeconds(ctx.sandbox) : undefined);
  return s ? `sandbox timed out after ${formatDuration(s)}` : 'sandbox timed out';
}

/** Why a sandbox ended, from its record: `timeout`, `oom`, or its state. */
function sandboxEndReason(s: SandboxInfo): string {
  if (s.state === 'expired') return 'timeout';
  if (s.reason && /out of memory|\boom\b/i.test(s.reason)) return 'oom';
  return s.state;
}

export function outcomeOf(result: { exitCode: number; reason: ExecReason }, ctx: OutcomeContext = {}): Outcome {
  const memoryMiB = ctx.memoryMiB ?? ctx.sandbox?.resources.memoryMiB;
  switch (result.reason) {
    case 'exited':
    case 'signaled':
      return { exitCode: result.exitCode, reason: result.reason, message: null };
    case 'timeout': {
      // The engine says `timeout` for both clocks. Without a per-command timeout only the sandbox's
      // lifetime can have run out (its record may not say `expired` yet when the exec returns).
      const s = ctx.execTimeoutSeconds;
      if (s === undefined || ctx.sandbox?.state === 'expired') {
        return { exitCode: EXIT.timeout, reason: 'timeout', message: sandboxTimeoutMessage(ctx) };
      }
      return { exitCode: EXIT.timeout, reason: 'timeout', message: `command timed out after ${formatDuration(s)}` };
    }
    case 'oom':
      return { exitCode: EXIT.killed, reason: 'oom', message: oomMessage(memoryMiB) };
    case 'sandbox_ended':
      return sandboxEnded(ctx);
    case 'killed':
      return { exitCode: result.exitCode > 0 ? result.exitCode : EXIT.killed, reason: 'killed', message: 'command killed' };
    case 'error':
    default:
      // The engine reports "could not start" (not found, not executable) with a shell-like status.
      return {
        exitCode: result.exitCode > 0 && result.exitCode < 256 ? result.exitCode : EXIT.runFailure,
        reason: result.reason,
        message: null,
      };
  }
}

/** The command died because its sandbox ended: say why the sandbox ended. */
export function sandboxEnded(ctx: OutcomeContext): Outcome {
  const s = ctx.sandbox;
  const why = s ? sandboxEndReason(s) : 'unknown';
  const memoryMiB = ctx.memoryMiB ?? s?.resources.memoryMiB;
  if (why === 'timeout') return { exitCode: EXIT.timeout, reason: 'timeout', message: sandboxTimeoutMessage(ctx) };
  if (why === 'oom') return { exitCode: EXIT.killed, reason: 'oom', message: oomMessage(memoryMiB) };
  const detail = s ? `sandbox ${s.id} ended (${s.state}${s.reason && s.reason !== s.state ? `: ${s.reason}` : ''})` : 'sandbox ended';
  return { exitCode: EXIT.killed, reason: 'sandbox_ended', message: detail };
}

/** Whether explaining this end needs the sandbox's record (why it ended, its limits). */
export function needsSandboxRecord(reason: ExecReason): boolean {
  return reason !== 'exited' && reason !== 'signaled' && reason !== 'error';
}
