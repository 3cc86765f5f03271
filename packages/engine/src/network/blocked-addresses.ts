import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';

/**
 * Addresses the egress proxy never dials, whatever name led to them (DNS rebinding): a name
 * on the allowlist that resolves to 127.0.0.1 or 169.254.169.254 is still refused. The
 * documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are deliberately not
 * here, so test "internets" can live there inside their own namespaces.
 */
export const DEFAULT_BLOCKED_RANGES: ReadonlyArray<readonly [string, string]> = [
  ['0.0.0.0/8', 'this-network'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'cgnat'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'],
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'ietf-protocol'],
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'benchmarking'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved'],
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'ula'],
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
];

function addTo(list: BlockList, cidr: string): void {
  const [addr, len] = cidr.split('/');
  const family = isIPv4(addr!) ? 'ipv4' : 'ipv6';
  if (!isIPv4(addr!) && !isIPv6(addr!)) throw new Error(`not an IP range: ${cidr}`);
  const prefix = len === undefined ? (family === 'ipv4' ? 32 : 128) : Number(len);
  list.addSubnet(addr!, prefix, family);
}

/** IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) forms name an IPv4 host. */
export function embeddedIPv4(ip: string): string | null {
  const m = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return m ? m[1]! : null;
}

export interface BlockedAddressesOptions {
  /** Replaces DEFAULT_BLOCKED_RANGES when given (an operator's list, CIDR strings). */
  ranges?: readonly string[];
  /** Also blocked, always: the sandbox address pool, the host's own addresses. */
  extraRanges?: ReadonlyArray<readonly [string, string]>;
}

export class BlockedAddresses {
  private readonly lists: Array<{ list: BlockList; reason: string }> = [];

  constructor(o: BlockedAddressesOptions = {}) {
    const base: ReadonlyArray<readonly [string, string]> = o.ranges ? o.ranges.map((r) => [r, 'blocked-range'] as const) : DEFAULT_BLOCKED_RANGES;
    for (const [cidr, reason] of [...base, ...(o.extraRanges ?? [])]) {
      let entry = this.lists.find((l) => l.reason === reason);
      if (!entry) { entry = { list: new BlockList(), reason }; this.lists.push(entry); }
      addTo(entry.list, cidr);
    }
  }

  /** Why `ip` must not be dialled, or null when it may be. Anything unparsable is refused. */
  reason(ip: string): string | null {
    const v4 = embeddedIPv4(ip);
    if (v4 !== null) return this.reason(v4);
    const family = isIPv4(ip) ? 'ipv4' : isIPv6(ip) ? 'ipv6' : null;
    if (family === null) return 'not-an-address';
    // Egress is IPv4 only; an IPv6 destination is refused whatever it is.
    if (family === 'ipv6') return 'ipv6';
    for (const { list, reason } of this.lists) if (list.check(ip, family)) return reason;
    return null;
  }
}

/** Every address configured on the host right now, as /32 and /128 ranges. */
export function hostAddressRanges(): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      const ip = a.address.split('%')[0]!;
      out.push([a.family === 'IPv4' ? `${ip}/32` : `${ip}/128`, 'host-address']);
    }
  }
  return out;
}

/**
 * The host's own addresses, re-read at most once a second: interfaces come and go (every
 * sandbox adds a veth), and a stale list must not let a new host address through for long.
 */
export class HostAddresses {
  private cached = new Set<string>();
  private readAt = 0;

  constructor(private readonly maxAgeMs = 1_000) {}

  has(ip: string): boolean {
    const now = Date.now();
    if (now - this.readAt > this.maxAgeMs) {
      this.cached = new Set(hostAddressRanges().map(([r]) => r.split('/')[0]!.toLowerCase()));
      this.readAt = now;
    }
    return this.cached.has((embeddedIPv4(ip) ?? ip).toLowerCase());
  }
}
