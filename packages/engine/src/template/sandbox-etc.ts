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
  await writeFile(join(etc, 'hostname'), `${SANDBOX_HOSTNAME}\n`, { mode: 0o644 });
  await writeFile(join(etc, 'hosts'),
    `127.0.0.1\tlocalhost\n127.0.1.1\t${SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`, { mode: 0o644 });
  // resolv.conf may be a symlink (systemd-resolved style); replace whatever is there with a plain file.
  await rm(join(etc, 'resolv.conf'), { force: true });
  await writeFile(join(etc, 'resolv.conf'), '', { mode: 0o644 });

  const work = join(rootfs, workdir);
  await mkdir(work, { recursive: true });
  await chmod(work, 0o755);
}
