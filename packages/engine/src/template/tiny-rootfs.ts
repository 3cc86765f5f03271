import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { AirlockError } from '../errors.js';
import { describeFailure, runProgram } from './run-program.js';

export const BUSYBOX_PATH = '/bin/busybox';
const BUSYBOX = BUSYBOX_PATH;

/** Directories of the tiny rootfs and their modes (mkdir's mode is masked by umask; chmod is not). */
const TINY_DIRS: ReadonlyArray<readonly [string, number]> = [
  ['bin', 0o755], ['sbin', 0o755], ['usr', 0o755], ['usr/bin', 0o755], ['usr/sbin', 0o755],
  ['etc', 0o755], ['root', 0o700], ['tmp', 0o1777], ['work', 0o755], ['home', 0o755],
  ['proc', 0o555], ['sys', 0o555], ['dev', 0o755], ['run', 0o755], ['var', 0o755], ['var/tmp', 0o1777],
];

/**
 * A rootfs holding only the host's static busybox and its applet links: enough for a
 * shell and coreutils, built in well under a second. Tests and quick demos use it.
 */
export async function populateTinyRootfs(rootfs: string): Promise<void> {
  await mkdir(rootfs, { mode: 0o755 });
  await chmod(rootfs, 0o755);
  for (const [dir, mode] of TINY_DIRS) {
    const path = join(rootfs, dir);
    await mkdir(path, { recursive: true });
    await chmod(path, mode);
  }
  await copyFile(BUSYBOX, join(rootfs, 'bin/busybox'));
  await chmod(join(rootfs, 'bin/busybox'), 0o755);

  for (const applet of await busyboxAppletPaths()) {
    if (applet === 'bin/busybox') continue;
    const path = join(rootfs, applet);
    await mkdir(dirname(path), { recursive: true });
    await symlink('/bin/busybox', path);
  }

  await writeFile(join(rootfs, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n', { mode: 0o644 });
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\nnobody:x:65534:\n', { mode: 0o644 });
}

/** Applet install paths (`usr/bin/awk`, ...) as this busybox build reports them. */
async function busyboxAppletPaths(): Promise<string[]> {
  const r = await runProgram(BUSYBOX, ['--list-full'], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new AirlockError('unavailable', describeFailure(`${BUSYBOX} --list-full`, r));
  const paths = r.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  for (const p of paths) {
    // The list comes from a host binary, but it still decides where links land: keep them inside.
    if (p.startsWith('/') || normalize(p).startsWith('..')) {
      throw new AirlockError('internal', `busybox reported an applet path outside the rootfs: ${p}`);
    }
  }
  return paths;
}
