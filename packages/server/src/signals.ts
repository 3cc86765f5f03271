import { constants } from 'node:os';

const SIGNALS = constants.signals as Record<string, number>;

/**
 * "SIGTERM", "TERM" or "15" → 15. Linux numbers, which are what the sandbox's kernel uses
 * (the server and the sandbox share a kernel, or the microvm guest is Linux too).
 */
export function parseSignal(input: string | undefined): number | null {
  if (input === undefined || input === '') return 9;
  if (/^[0-9]+$/.test(input)) {
    const n = Number(input);
    return n >= 1 && n <= 64 ? n : null;
  }
  const name = input.toUpperCase();
  const n = SIGNALS[name.startsWith('SIG') ? name : `SIG${name}`];
  return typeof n === 'number' ? n : null;
}
