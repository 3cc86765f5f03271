import { run } from '../../util/run.js';

/**
 * The guest's NIC, spliced onto the sandbox's veth: inside the namespace the engine plumbed
 * (`airlock-<id>`, eth0 holding the sandbox's address), a TAP device for QEMU and two tc
 * `mirred` redirects, eth0 ingress → tap egress and tap ingress → eth0 egress (what Kata
 * Containers does). The guest's NIC takes eth0's MAC and address, so to the host the VM is
 * the same peer the veth always had: the nftables rules, the resolver and the egress proxy
 * apply unchanged, and the namespace's own stack never sees a packet.
 */
export const TAP_NAME = 'tap0';

export interface GuestNic {
  mac: string;
  address: string;
  prefix: number;
  gateway: string;
  mtu: number;
}

const NS_RE = /^airlock-[a-z0-9]{12}$/;

function nsName(netnsPath: string): string {
  const name = netnsPath.split('/').pop() ?? '';
  if (!NS_RE.test(name)) throw new Error(`not a sandbox network namespace: ${netnsPath}`);
  return name;
}

/** Reads eth0's MAC, address and the default gateway in the namespace. */
export async function readGuestNic(netnsPath: string): Promise<GuestNic> {
  const ns = nsName(netnsPath);
  const addr = JSON.parse((await run('ip', ['-n', ns, '-j', 'addr', 'show', 'dev', 'eth0'], { timeoutMs: 10_000 })).stdout) as Array<{
    address: string; mtu: number; addr_info: Array<{ family: string; local: string; prefixlen: number }>;
  }>;
  const link = addr[0];
  const v4 = link?.addr_info.find((a) => a.family === 'inet');
  const routes = JSON.parse((await run('ip', ['-n', ns, '-j', '-4', 'route', 'show', 'default'], { timeoutMs: 10_000 })).stdout) as Array<{ gateway?: string }>;
  const gateway = routes.find((r) => r.gateway)?.gateway;
  if (!link || !v4 || !gateway) throw new Error(`eth0 in ${ns} has no IPv4 address or default route`);
  return { mac: link.address, address: v4.local, prefix: v4.prefixlen, gateway, mtu: link.mtu };
}

/** Creates the TAP and the two redirects (the jail opens the TAP for QEMU). */
export async function spliceTap(netnsPath: string, mtu: number): Promise<void> {
  const ns = nsName(netnsPath);
  await run('ip', ['-n', ns, 'tuntap', 'add', 'dev', TAP_NAME, 'mode', 'tap'], { timeoutMs: 10_000 });
  await run('ip', ['-n', ns, 'link', 'set', 'dev', TAP_NAME, 'mtu', String(mtu), 'up'], { timeoutMs: 10_000 });
  for (const [from, to] of [['eth0', TAP_NAME], [TAP_NAME, 'eth0']] as const) {
    await run('tc', ['-n', ns, 'qdisc', 'add', 'dev', from, 'ingress'], { timeoutMs: 10_000 });
    // u32 matching every packet: `matchall` is not built into every kernel (this host's lacks it).
    await run('tc', ['-n', ns, 'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0',
      'action', 'mirred', 'egress', 'redirect', 'dev', to], { timeoutMs: 10_000 });
  }
}

/** Removes the TAP (its redirects go with it; eth0's ingress qdisc too). Tolerates absence. */
export async function removeTap(id: string): Promise<void> {
  const ns = `airlock-${id}`;
  await run('ip', ['-n', ns, 'link', 'del', 'dev', TAP_NAME], { allowFailure: true, timeoutMs: 10_000 });
  await run('tc', ['-n', ns, 'qdisc', 'del', 'dev', 'eth0', 'ingress'], { allowFailure: true, timeoutMs: 10_000 });
}
