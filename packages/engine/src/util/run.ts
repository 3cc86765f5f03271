import { spawn, type SpawnOptions } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(readonly argv: string[], readonly result: RunResult) {
    super(`${argv[0]} ${argv.slice(1, 4).join(' ')}… failed (${result.code ?? result.signal}): ${result.stderr.trim().slice(0, 2000)}`);
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  timeoutMs?: number;
  /** Accept a non-zero exit instead of throwing. */
  allowFailure?: boolean;
  input?: string | Buffer;
  stdio?: SpawnOptions['stdio'];
  env?: NodeJS.ProcessEnv;
}

const MAX_CAPTURE = 4 * 1024 * 1024;

/** Runs a program with an argument array (never a shell), captures bounded output, checks its exit code. */
export function run(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      stdio: opts.stdio ?? [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    child.stdout?.on('data', (b: Buffer) => { if (outLen < MAX_CAPTURE) { out.push(b); outLen += b.length; } });
    child.stderr?.on('data', (b: Buffer) => { if (errLen < MAX_CAPTURE) { err.push(b); errLen += b.length; } });
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs) timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => { if (timer) clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const result = { code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
      if (code !== 0 && !opts.allowFailure) reject(new CommandError([file, ...args], result));
      else resolve(result);
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}
