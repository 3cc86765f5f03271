import { mountsUnder } from '../util/mounts.js';
import { AirlockError } from '../errors.js';
import { describeFailure, runProgram } from './run-program.js';

export { mountsUnder };

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
