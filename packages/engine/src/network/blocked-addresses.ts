import { isIPv4, isIPv6 } from 'node:net';
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

/** A range as numbers: `net` is the masked address, both unsigned 32-bit. */
interface Ipv4Range { net: number; mask: number; reason: string }

/** a.b.c.d as an unsigned 32-bit number; the caller has checked it with isIPv4. */
function ipv4Number(ip: string): number {
  let n = 0;
  for (const part of ip.split('.')) n = n * 256 + Number(part);
  return n >>> 0;
}

function prefixMask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** Parses "addr/len" (len optional); throws on anything else. */
function parseRange(cidr: string): { family: 'ipv4' | 'ipv6'; addr: string; len: number } {
  const [addr, len, ...rest] = cidr.split('/');
  const family = isIPv4(addr!) ? 'ipv4' : isIPv6(addr!) ? 'ipv6' : null;
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = len === undefined ? max : /^\d{1,3}$/.test(len) ? Number(len) : NaN;
  if (family === null || rest.length > 0 || !(prefix >= 0 && prefix <= max)) throw new Error(`not an IP range: ${cidr}`);
  return { family, addr: addr!, len: prefix };
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

/**
 * Checked on every dial, so IPv4 ranges are plain mask-and-compare on numbers (node's BlockList
 * builds a SocketAddress per check and per list). IPv6 ranges are only validated: egress is
 * IPv4 only, and every IPv6 destination is refused before any range is consulted.
 */
export class BlockedAddresses {
  private readonly ranges: Ipv4Range[] = [];

  constructor(o: BlockedAddressesOptions = {}) {
    const base: ReadonlyArray<readonly [string, string]> = o.ranges ? o.ranges.map((r) => [r, 'blocked-range'] as const) : DEFAULT_BLOCKED_RANGES;
    for (const [cidr, reason] of [...base, ...(o.extraRanges ?? [])]) {
      const r = parseRange(cidr);
      if (r.family !== 'ipv4') continue;
      const mask = prefixMask(r.len);
      this.ranges.push({ net: (ipv4Number(r.addr) & mask) >>> 0, mask, reason });
    }
  }

  /** Why `ip` must not be dialled, or null when it may be. Anything unparsable is refused. */
  reason(ip: string): string | null {
    const v4 = embeddedIPv4(ip);
    if (v4 !== null) return this.reason(v4);
    if (isIPv6(ip)) return 'ipv6'; // egress is IPv4 only: refused whatever it is
    if (!isIPv4(ip)) return 'not-an-address';
    const n = ipv4Number(ip);
    for (const r of this.ranges) if (((n & r.mask) >>> 0) === r.net) return r.reason;
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
