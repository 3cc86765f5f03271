import { isIPv4 } from 'node:net';
import { z } from 'zod';

/**
 * The egress allow/deny grammar shared by the DNS resolver and the egress proxy.
 *
 *   example.com            that name, any port
 *   *.example.com          any name below example.com (not example.com itself)
 *   example.com:443        that name, port 443 only (ports: N or N-M)
 *   203.0.113.7            raw TCP to that address, any port (for non-HTTP protocols)
 *   203.0.113.0/24:5432    raw TCP to that range, one port
 *
 * Deny entries use the same grammar and always win. Egress is IPv4 only: the sandbox has no
 * IPv6 route, so IPv6 entries are refused rather than silently ignored.
 */

export interface PortRange { from: number; to: number }

export type EgressRule =
  | { kind: 'name'; name: string; wildcard: boolean; ports: PortRange | null; text: string }
  | { kind: 'cidr'; base: number; prefix: number; ports: PortRange | null; text: string };

const LABEL = '[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?';
const NAME_RE = new RegExp(`^(\\*\\.)?(${LABEL}(?:\\.${LABEL})*)\\.?(?::(\\d{1,5})(?:-(\\d{1,5}))?)?$`);
const CIDR_RE = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?(?::(\d{1,5})(?:-(\d{1,5}))?)?$/;

export class EgressRuleError extends Error {}

function ports(from?: string, to?: string): PortRange | null {
  if (from === undefined) return null;
  const a = Number(from);
  const b = to === undefined ? a : Number(to);
  if (!(a >= 1 && a <= 65_535 && b >= a && b <= 65_535)) throw new EgressRuleError('port must be 1-65535 (or a range N-M)');
  return { from: a, to: b };
}

export function ipv4ToInt(ip: string): number {
  const p = ip.split('.').map(Number);
  return (((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!) >>> 0;
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
}

/** Parses one entry; throws EgressRuleError with a message fit for a 400. */
export function parseEgressRule(raw: string): EgressRule {
  const text = raw.trim().toLowerCase();
  if (text.length === 0 || text.length > 260) throw new EgressRuleError('must be a host name, *.suffix, an IPv4 address or CIDR, optionally with :port');
  const c = CIDR_RE.exec(text);
  if (c) {
    if (!isIPv4(c[1]!)) throw new EgressRuleError(`${raw}: not an IPv4 address`);
    const prefix = c[2] === undefined ? 32 : Number(c[2]);
    if (prefix > 32) throw new EgressRuleError(`${raw}: prefix must be 0-32`);
    const base = (ipv4ToInt(c[1]!) & maskOf(prefix)) >>> 0;
    return { kind: 'cidr', base, prefix, ports: ports(c[3], c[4]), text };
  }
  const n = NAME_RE.exec(text);
  if (!n && (text.startsWith('[') || (text.match(/:/g)?.length ?? 0) > 1)) throw new EgressRuleError(`${raw}: IPv6 egress is not supported (sandboxes have IPv4 only)`);
  if (!n) throw new EgressRuleError(`${raw}: must be a host name, *.suffix, an IPv4 address or CIDR, optionally with :port`);
  const name = n[2]!;
  if (name.length > 253) throw new EgressRuleError(`${raw}: name too long`);
  if (/^\d+(\.\d+)*$/.test(name)) throw new EgressRuleError(`${raw}: not a valid IPv4 address or host name`);
  return { kind: 'name', name, wildcard: n[1] !== undefined, ports: ports(n[3], n[4]), text };
}

/** zod refinement for API/CLI input: same grammar, same messages. */
export const egressRuleSchema = z.string().min(1).max(260).superRefine((s, ctx) => {
  try { parseEgressRule(s); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message }); }
});

export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function nameMatches(rule: EgressRule & { kind: 'name' }, name: string): boolean {
  if (rule.wildcard) return name.length > rule.name.length && name.endsWith(`.${rule.name}`);
  return name === rule.name;
}

function portMatches(r: PortRange | null, port: number | null): boolean {
  if (r === null) return true;
  if (port === null) return true; // DNS: a name allowed on some port may be resolved
  return port >= r.from && port <= r.to;
}

function cidrMatches(rule: EgressRule & { kind: 'cidr' }, ip: string): boolean {
  if (!isIPv4(ip)) return false;
  return ((ipv4ToInt(ip) & maskOf(rule.prefix)) >>> 0) === rule.base;
}

export type NameVerdict = 'allow' | 'deny' | 'not-allowed';

/** A sandbox's compiled egress policy. Immutable: a PATCH builds a new one. */
export class EgressPolicy {
  readonly allow: readonly EgressRule[];
  readonly deny: readonly EgressRule[];

  constructor(allow: readonly string[], deny: readonly string[]) {
    this.allow = allow.map(parseEgressRule);
    this.deny = deny.map(parseEgressRule);
  }

  /** True when the sandbox may reach anything at all (it then gets a network namespace). */
  get hasNetwork(): boolean { return this.allow.length > 0; }

  /**
   * May `name` be used on `port` (null = any port, the DNS question)? A deny entry for the
   * name wins: for DNS, only a deny on every port hides the name.
   */
  checkName(hostname: string, port: number | null): NameVerdict {
    const name = normalizeName(hostname);
    for (const r of this.deny) {
      if (r.kind !== 'name' || !nameMatches(r, name)) continue;
      if (port === null ? r.ports === null : portMatches(r.ports, port)) return 'deny';
    }
    for (const r of this.allow) if (r.kind === 'name' && nameMatches(r, name) && portMatches(r.ports, port)) return 'allow';
    return 'not-allowed';
  }

  /** Raw TCP to an address (no name involved): only CIDR entries can allow it. */
  checkAddress(ip: string, port: number): NameVerdict {
    if (this.addressDenied(ip, port)) return 'deny';
    for (const r of this.allow) if (r.kind === 'cidr' && cidrMatches(r, ip) && portMatches(r.ports, port)) return 'allow';
    return 'not-allowed';
  }

  /** Deny CIDR entries also apply to the addresses an allowed name resolves to. */
  addressDenied(ip: string, port: number): boolean {
    return this.deny.some((r) => r.kind === 'cidr' && cidrMatches(r, ip) && portMatches(r.ports, port));
  }
}
