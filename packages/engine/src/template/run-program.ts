import { spawn } from 'node:child_process';

export interface ProgramResult {
  /** Exit status, or null when the program was killed by a signal or never started. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Set when the program could not be started at all (ENOENT, EACCES). */
  spawnError: Error | null;
}

export interface RunProgramOptions {
  timeoutMs?: number;
  /** Receives every complete output line (stdout and stderr) as it arrives. */
  onLine?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Output kept per stream; probes print a few lines, debootstrap a few thousand. */
const CAPTURE_CAP = 1 << 20;

/**
 * Runs a program (argument array, no shell) to completion and never rejects: callers
 * inspect `code`, `timedOut` and `spawnError`. On timeout the whole process group is
 * killed, so helpers the program forked do not outlive it.
 */
export function runProgram(cmd: string, args: readonly string[], opts: RunProgramOptions = {}): Promise<ProgramResult> {
  return new Promise((resolve) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const sizes = { out: 0, err: 0 };
    let timedOut = false;
    let spawnError: Error | null = null;
    let pending = '';

    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });

    const emitLines = (chunk: Buffer) => {
      if (!opts.onLine) return;
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) opts.onLine(line);
    };
    const keep = (into: Buffer[], key: 'out' | 'err', chunk: Buffer) => {
      if (sizes[key] < CAPTURE_CAP) into.push(chunk.subarray(0, CAPTURE_CAP - sizes[key]));
      sizes[key] += chunk.length;
      emitLines(chunk);
    };
    child.stdout.on('data', (c: Buffer) => keep(out, 'out', c));
    child.stderr.on('data', (c: Buffer) => keep(err, 'err', c));

    const timer = opts.timeoutMs === undefined ? null : setTimeout(() => {
      timedOut = true;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, opts.timeoutMs);

    child.on('error', (e) => {
      spawnError = e;
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (pending && opts.onLine) opts.onLine(pending);
      resolve({
        code: spawnError ? null : code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        timedOut,
        spawnError,
      });
    });
  });
}

/** One line describing why a program failed, for error messages and doctor details. */
export function describeFailure(cmd: string, r: ProgramResult): string {
  if (r.spawnError) return `${cmd}: ${r.spawnError.message}`;
  if (r.timedOut) return `${cmd}: timed out`;
  const why = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  const lastLine = (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? '';
  return lastLine ? `${cmd}: ${why}: ${lastLine}` : `${cmd}: ${why}`;
}
