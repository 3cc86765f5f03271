import { chmod, lchown, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
import { AirlockError } from '../errors.js';
import { ROOTFS_DIR } from './layout.js';
import { describeFailure, runProgram } from './run-program.js';

export interface BuildOverlay {
  /** The merged view a step works on. */
  merged: string;
  /** What the step changed: becomes the new layer (whiteouts and opaque dirs included). */
  upper: string;
  /** Unmounts and drops overlayfs's work directory; the upper stays. Idempotent. */
  close(): Promise<void>;
}

/**
 * Mounts `lowers` (topmost first, read-only, the new layer's parents) under a fresh upper
 * directory in `workDir`, so a step writes only its own changes. The kernel records deletions
 * as whiteouts and replaced directories as opaque ones, which a sandbox's overlay honours
 * when it stacks the same layers in the same order. redirect_dir and metacopy stay off: a
 * layer must hold whole files and plain directories, readable without those features.
 */
export async function mountBuildOverlay(workDir: string, lowers: string[]): Promise<BuildOverlay> {
  if (lowers.length === 0) throw new AirlockError('internal', 'a build overlay needs at least one lower layer');
  if (lowers.some((l) => /[,:\\]/.test(l))) throw new AirlockError('internal', 'layer paths must not contain , : or \\');
  const upper = join(workDir, ROOTFS_DIR);
  const work = join(workDir, 'ovl-work');
  const merged = join(workDir, 'merged');
  for (const d of [upper, work, merged]) await mkdir(d, { mode: 0o755 });
  // The merged root takes the upper's owner and mode: root inside the sandbox owns "/".
  await lchown(upper, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
  await chmod(upper, 0o755);
  const opts = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work},redirect_dir=off,index=off,metacopy=off`;
  const r = await runProgram('mount', ['-t', 'overlay', '-o', opts, `airlock-build`, merged], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new AirlockError('internal', describeFailure('mount overlay', r));
  let open = true;
  return {
    merged,
    upper,
    async close() {
      if (!open) return;
      const u = await runProgram('umount', [merged], { timeoutMs: 60_000 });
      if (u.code !== 0) {
        // Something still holds the merged tree: detach it, and do not make a layer of an upper still in use.
        await runProgram('umount', ['--lazy', merged], { timeoutMs: 60_000 });
        open = false;
        throw new AirlockError('internal', describeFailure(`umount ${merged}`, u));
      }
      open = false;
      await rm(work, { recursive: true, force: true });
      await rm(merged, { recursive: true, force: true });
    },
  };
}
