import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ipv4ToInt } from './egress-policy.js';

/**
 * Host-wide allocation of sandbox link addresses: one /30 per sandbox from a pool (default
 * 10.213.0.0/16): .1 is the host's end (gateway, resolver, proxy), .2 the sandbox's.
 * Host-wide because several engines (airlockd, embedded CLIs with other data dirs) share the
 * host's routing table. A lease is a file made with O_EXCL under /run, so two processes can
 * never hold the same subnet, and a reboot (which also removes every veth) frees them all.
 */

export const DEFAULT_ADDRESS_POOL = '10.213.0.0/16';
export const LEASE_DIR = '/run/airlock/net-leases';

export interface NetworkLease {
  /** Subnet index in the pool; the lease file is named after gatewayIp. */
  index: number;
  subnet: string;
  gatewayIp: string;
  sandboxIp: string;
  prefixLength: 30;
}

export interface LeaseOwner { dataDir: string; sandboxId: string }

export function intToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export class AddressPool {
  private readonly base: number;
  private readonly size: number;

  constructor(readonly cidr: string = DEFAULT_ADDRESS_POOL, private readonly leaseDir = LEASE_DIR) {
    const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr);
    const prefix = m ? Number(m[2]) : NaN;
    if (!m || !(prefix >= 8 && prefix <= 30)) throw new Error(`network address pool must be an IPv4 CIDR between /8 and /30, got ${cidr}`);
    this.base = ipv4ToInt(m[1]!) & (prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0);
    this.size = 2 ** (32 - prefix) / 4;
    mkdirSync(leaseDir, { recursive: true, mode: 0o700 });
  }

  private leaseAt(index: number): NetworkLease {
    const net = (this.base + index * 4) >>> 0;
    return { index, subnet: `${intToIpv4(net)}/30`, gatewayIp: intToIpv4(net + 1), sandboxIp: intToIpv4(net + 2), prefixLength: 30 };
  }

  /** Takes a free /30; throws when the pool is exhausted. */
  allocate(owner: LeaseOwner): NetworkLease {
    // Start at a random index so concurrent engines rarely race for the same file.
    const start = Math.floor(Math.random() * this.size);
    for (let i = 0; i < this.size; i++) {
      const lease = this.leaseAt((start + i) % this.size);
      let fd: number;
      try {
        fd = openSync(join(this.leaseDir, lease.gatewayIp), 'wx', 0o600);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      try { writeSync(fd, `${owner.dataDir}\n${owner.sandboxId}\n`); } finally { closeSync(fd); }
      return lease;
    }
    throw new Error(`network address pool ${this.cidr} is exhausted`);
  }

  release(lease: NetworkLease): void {
    try { unlinkSync(join(this.leaseDir, lease.gatewayIp)); } catch { /* already free */ }
  }

  /** Every lease on the host, with its owner (any pool: files are named by gateway address). */
  static listLeases(leaseDir = LEASE_DIR): Array<{ lease: NetworkLease; owner: LeaseOwner | null }> {
    let names: string[];
    try { names = readdirSync(leaseDir); } catch { return []; }
    const out: Array<{ lease: NetworkLease; owner: LeaseOwner | null }> = [];
    for (const name of names) {
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(name)) continue;
      const gw = ipv4ToInt(name);
      const lease: NetworkLease = { index: -1, subnet: `${intToIpv4(gw - 1)}/30`, gatewayIp: name, sandboxIp: intToIpv4(gw + 1), prefixLength: 30 };
      let owner: LeaseOwner | null = null;
      try {
        const [dataDir, sandboxId] = readFileSync(join(leaseDir, name), 'utf8').split('\n');
        if (dataDir && sandboxId) owner = { dataDir, sandboxId };
      } catch { /* unreadable: treated as ownerless */ }
      out.push({ lease, owner });
    }
    return out;
  }
}
