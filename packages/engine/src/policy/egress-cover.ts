/** Whether an allowlist entry stays inside a policy's egress ceiling. */
import { parseEgressRule, type EgressRule, type PortRange } from '../network/egress-policy.js';

function portsCovered(ceiling: PortRange | null, entry: PortRange | null): boolean {
  if (ceiling === null) return true;
  return entry !== null && entry.from >= ceiling.from && entry.to <= ceiling.to;
}

function ruleCovers(c: EgressRule, e: EgressRule): boolean {
  if (!portsCovered(c.ports, e.ports)) return false;
  if (c.kind === 'cidr' && e.kind === 'cidr') {
    if (e.prefix < c.prefix) return false;
    const mask = c.prefix === 0 ? 0 : (0xffff_ffff << (32 - c.prefix)) >>> 0;
    return ((e.base & mask) >>> 0) === c.base;
  }
  if (c.kind === 'name' && e.kind === 'name') {
    // *.x covers y.x and *.y.x; a plain name covers only itself (not its subdomains).
    if (c.wildcard) return e.name.endsWith(`.${c.name}`) || (e.wildcard && e.name === c.name);
    return !e.wildcard && e.name === c.name;
  }
  return false;
}

/** The entries of `allow` that no ceiling entry covers. */
export function outsideCeiling(allow: readonly string[], ceiling: readonly string[]): string[] {
  const cs = ceiling.map((c) => parseEgressRule(c));
  return allow.filter((a) => {
    const e = parseEgressRule(a);
    return !cs.some((c) => ruleCovers(c, e));
  });
}
