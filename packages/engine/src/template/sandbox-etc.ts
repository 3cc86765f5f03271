import { resolveDirInRoot, writeFileInRoot } from './fs-in-root.js';

export const SANDBOX_HOSTNAME = 'airlock';

/**
 * Files every template gets whatever its recipe or image: its own hostname and hosts file,
 * an empty resolv.conf (debootstrap copies the host's; a sandbox must not inherit the host's
 * resolver, and runtimes bind their own over this file when the sandbox has network), and
 * the working directory. Paths resolve inside `rootfs` (an image's /etc may be a link), and
 * what is written belongs to the sandbox's root.
 */
export async function writeSandboxEtc(rootfs: string, workdir: string): Promise<void> {
  const files: Array<[string, string]> = [
    ['hostname', `${SANDBOX_HOSTNAME}\n`],
    ['hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`],
    ['resolv.conf', ''],
  ];
  // Replace whatever was there: a symlink (systemd-resolved), odd modes or the host's copy.
  for (const [name, content] of files) await writeFileInRoot(rootfs, `/etc/${name}`, content, 0o644);

  // Created 0755 and owned by the sandbox's root when missing; an image's own directory is kept as it is.
  await resolveDirInRoot(rootfs, workdir, true);
}
