/** Writing to the terminal: tables, JSON, the one-line error format, and exiting without losing output. */
import { UsageError } from './flags.js';

/** Exit statuses the CLI itself uses (a command's own status passes through `airlock run`). */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  /** `airlock run`: Airlock failed, not the command (as timeout(1) and docker use 125). */
  runFailure: 125,
  timeout: 124,
  killed: 137,
  interrupted: 130,
} as const;

/** A failure that has already been explained (or needs no more words) and just sets the status. */
export class ExitError extends Error {
  constructor(readonly exitCode: number, message = '') {
    super(message);
    this.name = 'ExitError';
  }
}

/** One `airlock: …` line on stderr. */
export function warn(message: string): void {
  process.stderr.write(`airlock: ${message}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Left-aligned columns separated by two spaces, header first; an empty list prints only the header. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** `2025-11-27T03:16:02.123Z` → `2025-11-27 03:16:02` (UTC); null → `-`. */
export function shortTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  return iso.replace('T', ' ').replace(/\.\d+Z$|Z$/, '');
}

export function humanBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

interface CodedError {
  code: string;
  message: string;
  field?: string;
  status?: number;
}

function isCoded(e: unknown): e is CodedError {
  return typeof e === 'object' && e !== null && typeof (e as CodedError).code === 'string' && typeof (e as CodedError).message === 'string';
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'EAI_AGAIN']);

/**
 * Any error → the line to print and the exit status. Input mistakes (ours or the engine's
 * bad_request) exit 2; everything else `fallback`. No stack traces unless AIRLOCK_DEBUG is set.
 */
export function explainError(e: unknown, fallback: number = EXIT.failure): { message: string; exitCode: number } {
  if (e instanceof ExitError) return { message: e.message, exitCode: e.exitCode };
  if (e instanceof UsageError) return { message: e.message, exitCode: EXIT.usage };
  // fetch wraps socket errors in `cause`.
  const cause = (e as { cause?: unknown } | null)?.cause;
  const sys = isCoded(cause) ? cause : isCoded(e) ? e : null;
  if (sys && NETWORK_CODES.has(sys.code)) {
    return { message: `cannot reach the Airlock daemon: ${sys.message} (check AIRLOCK_URL)`, exitCode: fallback };
  }
  if (isCoded(e)) {
    let message = e.field && !e.message.includes(e.field) ? `${e.field}: ${e.message}` : e.message;
    if (e.code === 'unauthorized') message += ' (set AIRLOCK_API_KEY to a valid key)';
    return { message, exitCode: e.code === 'bad_request' ? EXIT.usage : fallback };
  }
  if (e instanceof Error) return { message: e.message || e.name, exitCode: fallback };
  return { message: String(e), exitCode: fallback };
}

export function reportError(e: unknown, fallback: number = EXIT.failure): number {
  const { message, exitCode } = explainError(e, fallback);
  if (message) warn(message);
  if (process.env.AIRLOCK_DEBUG && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  return exitCode;
}

/** Waits until stdout and stderr have taken everything written, then exits: process.exit can cut pipes short. */
export async function exitAfterFlush(code: number): Promise<never> {
  const flush = (s: NodeJS.WriteStream) =>
    new Promise<void>((resolve) => {
      if (s.destroyed || !s.writable) return resolve();
      s.write('', () => resolve());
    });
  await Promise.all([flush(process.stdout), flush(process.stderr)]);
  process.exit(code);
}
