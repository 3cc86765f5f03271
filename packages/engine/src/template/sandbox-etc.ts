import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const SANDBOX_HOSTNAME = 'airlock';

/**
 * Files every template gets whatever its recipe: its own hostname and hosts file, an
 * empty resolv.conf (debootstrap copies the host's; a sandbox must not inherit the host's
 * resolver, and runtimes bind their own over this file when the sandbox has network),
 * and the default working directory.
 */
export async function writeSandboxEtc(rootfs: string, workdir: string): Promise<void> {
  const etc = join(rootfs, 'etc');
  await mkdir(etc, { recursive: true });
  const files: Array<[string, string]> = [
    ['hostname', `${SANDBOX_HOSTNAME}\n`],
    ['hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`],
    ['resolv.conf', ''],
  ];
  for (const [name, content] of files) {
    const path = join(etc, name);
    // Replace whatever debootstrap copied from the host: a symlink (systemd-resolved) or odd modes included.
    await rm(path, { force: true });
    await writeFile(path, content);
    await chmod(path, 0o644);
  }

  const work = join(rootfs, workdir);
  await mkdir(work, { recursive: true });
  await chmod(work, 0o755);
}
