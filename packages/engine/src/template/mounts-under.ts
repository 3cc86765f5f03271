import { readFileSync } from 'node:fs';
import { AirlockError } from '../errors.js';
import { describeFailure, runProgram } from './run-program.js';

/** Mount points at or below `dir` (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const points: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    const point = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (point === dir || point.startsWith(prefix)) points.push(point);
  }
  return points.sort((a, b) => b.length - a.length);
}

/**
 * Detaches every mount at or below `dir`. An interrupted debootstrap leaves /proc and
 * /sys mounted inside its target, and a recursive delete must never walk into those.
 */
export async function unmountUnder(dir: string): Promise<void> {
  for (const point of mountsUnder(dir)) {
    const r = await runProgram('umount', ['--lazy', point], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new AirlockError('internal', describeFailure(`umount ${point}`, r));
  }
}
