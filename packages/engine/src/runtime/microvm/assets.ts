import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DEFAULT_DATA_DIR } from '../../constants.js';
import { findExecutable } from '../../doctor.js';

/**
 * What the microvm tier needs on the host: QEMU, a guest kernel with the few modules the guest
 * loads (scripts/setup-host.sh extracts Debian's linux-image-cloud-amd64 into
 * /var/lib/airlock/microvm/kernel: vmlinuz, release, modules/*.ko), and the two static helpers
 * built next to the agent (airlock-vminit, the guest's /init; airlock-vmjail, QEMU's launcher).
 */
export interface MicrovmAssets {
  qemu: string;
  kernel: string;
  kernelRelease: string;
  modulesDir: string;
  vminit: string;
  vmjail: string;
  agent: string;
}

/** Modules the guest loads, in dependency order (the cloud kernel builds virtio as modules). */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'overlay',
  'fuse', 'virtiofs',
] as const;

/**
 * QEMU 7.2's virtiofsd (Debian ships it in qemu-system-common), which serves host mounts and
 * volumes to the guest; null when absent (then microvm sandboxes cannot have mounts).
 */
export function findVirtiofsd(): string | null {
  const p = process.env.AIRLOCK_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
  return existsSync(p) ? p : null;
}

/** Host-wide home of the microvm tier's shared files: the guest kernel, template images, the accelerator probe. */
export function microvmHome(): string {
  return process.env.AIRLOCK_MICROVM_DIR ?? join(DEFAULT_DATA_DIR, 'microvm');
}

export function kernelDir(): string {
  return process.env.AIRLOCK_MICROVM_KERNEL_DIR ?? join(microvmHome(), 'kernel');
}

/** The assets, or the reason the tier cannot run here. */
export function findMicrovmAssets(agentBinary: string): MicrovmAssets | { missing: string } {
  const qemu = process.env.AIRLOCK_QEMU ?? findExecutable('qemu-system-x86_64');
  if (!qemu) return { missing: 'qemu-system-x86_64 is not installed (Debian package qemu-system-x86; scripts/setup-host.sh installs it)' };
  const dir = kernelDir();
  const kernel = join(dir, 'vmlinuz');
  const modulesDir = join(dir, 'modules');
  if (!existsSync(kernel) || !existsSync(join(dir, 'release'))) {
    return { missing: `no guest kernel in ${dir} (scripts/setup-host.sh extracts linux-image-cloud-amd64 there)` };
  }
  for (const m of GUEST_MODULES) {
    if (!existsSync(join(modulesDir, `${m}.ko`))) return { missing: `guest kernel module ${m}.ko missing in ${modulesDir}` };
  }
  const helpers = dirname(agentBinary);
  const vminit = join(helpers, 'airlock-vminit');
  const vmjail = join(helpers, 'airlock-vmjail');
  for (const p of [vminit, vmjail]) if (!existsSync(p)) return { missing: `${p} is missing (make -C agent)` };
  const kernelRelease = readFileSync(join(dir, 'release'), 'utf8').trim();
  return { qemu, kernel, kernelRelease, modulesDir, vminit, vmjail, agent: agentBinary };
}
