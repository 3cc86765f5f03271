import { readFileSync } from 'node:fs';

/** A process's start time in clock ticks since boot: with the pid it names one process, even after pid reuse. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22, counted after the ")" that ends the command name (which may itself contain spaces).
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

export function processAlive(pid: number, startTime: string | null): boolean {
  if (!pid) return false;
  const st = processStartTime(pid);
  return st !== null && (startTime === null || st === startTime);
}
