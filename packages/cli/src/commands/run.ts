/** `airlock run [flags] -- CMD [ARG...]`: create a sandbox, run CMD in it, destroy it, exit with CMD's status. */
import type { Backend, ExecRequest, SandboxInfo } from '../backend.js';
import { watchInterrupts } from '../interrupt.js';
import { needsSandboxRecord, outcomeOf, sandboxEnded, type Outcome } from '../outcome.js';
import { EXIT, ExitError, explainError, warn } from '../output.js';
import { openBackend } from '../select-backend.js';
import { specFromFlags, type SandboxFlags } from '../spec.js';
import { readStdinIfPiped } from '../stdin.js';

export interface RunFlags extends SandboxFlags {
  execTimeout?: number;
  /** false with --no-stdin. */
  stdin?: boolean;
  /** --outputs: extract the sandbox's outputs here once CMD exited. */
  outputs?: string;
}

export async function runCommand(cmd: string[], flags: RunFlags): Promise<number> {
  const spec = specFromFlags(flags);
  const stdin = flags.stdin === false ? undefined : await readStdinIfPiped();
  const interrupt = watchInterrupts();
  let backend: Backend | undefined;
  let sandbox: SandboxInfo | undefined;
  let destroying: Promise<void> | undefined;
  const destroy = (): Promise<void> => {
    if (!destroying && backend && sandbox) destroying = destroySandbox(backend, sandbox.id);
    return destroying ?? Promise.resolve();
  };
  // Ctrl-C: kill the sandbox now; that ends the command, and the code below reports 130.
  interrupt.signal.addEventListener('abort', () => void destroy());
  try {
    backend = await openBackend(flags);
    if (interrupt.received()) return interrupted(null);
    sandbox = await backend.createSandbox(spec);
    if (interrupt.received()) {
      await destroy();
      return interrupted(sandbox.id);
    }
    const req: ExecRequest = { cmd };
    if (stdin && stdin.length > 0) req.stdin = stdin;
    if (flags.execTimeout !== undefined) req.timeoutSeconds = flags.execTimeout;
    const outcome = await execute(backend, sandbox, req, flags, interrupt.signal);
    if (interrupt.received()) return interrupted(sandbox.id);
    if (outcome.message) warn(outcome.message);
    if (flags.outputs !== undefined) {
      // Before the sandbox is destroyed; a failure is Airlock's (125) unless CMD failed already.
      const collected = await collectRunOutputs(backend, sandbox.id, flags.outputs);
      if (!collected && outcome.exitCode === 0) return EXIT.runFailure;
    }
    return outcome.exitCode;
  } catch (e) {
    if (interrupt.received()) return interrupted(sandbox?.id ?? null);
    throw new ExitError(reportRunError(e), '');
  } finally {
    await destroy();
    interrupt.dispose();
    await backend?.close().catch(() => undefined);
  }
}

/** Runs the command, streaming (or capturing with --json), and works out how it ended. */
async function execute(backend: Backend, sandbox: SandboxInfo, req: ExecRequest, flags: RunFlags, signal: AbortSignal): Promise<Outcome> {
  const ctx = {
    memoryMiB: sandbox.resources.memoryMiB,
    ...(flags.timeout !== undefined ? { sandboxTimeoutSeconds: flags.timeout } : {}),
    ...(flags.execTimeout !== undefined ? { execTimeoutSeconds: flags.execTimeout } : {}),
  };
  const endedSandbox = async () => backend.getSandbox(sandbox.id).catch(() => null);
  try {
    if (flags.json) {
      const r = await backend.exec(sandbox.id, req);
      const s = needsSandboxRecord(r.reason) ? await endedSandbox() : null;
      const outcome = outcomeOf(r, { ...ctx, sandbox: s });
      process.stdout.write(
        `${JSON.stringify({
          sandboxId: sandbox.id,
          exitCode: outcome.exitCode,
          stdout: r.stdout,
          stderr: r.stderr,
          durationMs: r.durationMs,
          reason: outcome.reason,
        })}\n`,
      );
      return outcome;
    }
    const r = await backend.execStream(sandbox.id, req, {
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
      signal,
    });
    const s = needsSandboxRecord(r.reason) ? await endedSandbox() : null;
    return outcomeOf(r, { ...ctx, sandbox: s });
  } catch (e) {
    // The sandbox may have expired or been OOM-killed before or while the command ran.
    const s = await endedSandbox();
    if (s && s.state !== 'running' && s.state !== 'creating') {
      const outcome = sandboxEnded({ ...ctx, sandbox: s });
      if (flags.json) {
        process.stdout.write(
          `${JSON.stringify({ sandboxId: sandbox.id, exitCode: outcome.exitCode, stdout: '', stderr: '', durationMs: 0, reason: outcome.reason })}\n`,
        );
      }
      return outcome;
    }
    throw e;
  }
}

async function collectRunOutputs(backend: Backend, id: string, dir: string): Promise<boolean> {
  try {
    const { collectOutputs } = await import('./files.js');
    await collectOutputs(backend, id, dir);
    return true;
  } catch (e) {
    warn(`could not collect the outputs into ${dir}: ${explainError(e).message}`);
    return false;
  }
}

async function destroySandbox(backend: Backend, id: string): Promise<void> {
  try {
    await backend.killSandbox(id);
  } catch (e) {
    // Already ended (expired, OOM) or gone: nothing left to destroy.
    const code = (e as { code?: unknown }).code;
    if (code === 'conflict' || code === 'not_found') return;
    warn(`could not destroy sandbox ${id}: ${explainError(e).message}`);
  }
}

function interrupted(id: string | null): number {
  warn(id ? `interrupted: sandbox ${id} destroyed` : 'interrupted');
  return EXIT.interrupted;
}

/** Airlock's own failures exit 125 so they cannot be mistaken for the command's status. */
function reportRunError(e: unknown): number {
  const { message, exitCode } = explainError(e, EXIT.runFailure);
  if (message) warn(message);
  if (process.env.AIRLOCK_DEBUG && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  return exitCode;
}
