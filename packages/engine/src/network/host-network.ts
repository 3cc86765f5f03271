import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { run } from '../util/run.js';
import type { NetworkLease } from './address-pool.js';

/**
 * The host side of a sandbox's network: its named network namespace, the veth pair into it,
 * addresses and route, the bandwidth cap, and nftables. Nothing here lives inside the
 * sandbox in a form it could change: the namespace is configured from the host, and the
 * sandbox holds no CAP_NET_ADMIN over it.
 *
 * nftables: one table, `inet airlock`, shared by every engine on the host. Its base chains are
 * static and fail closed for any interface named alk*: whatever has no per-sandbox chain is
 * dropped. Each sandbox adds one chain (sbx_<id>) reached through a verdict map keyed by its
 * host-side interface; every change is one `nft -f` transaction.
 */

export const NFT_TABLE = 'airlock';
export const NETNS_DIR = '/run/netns';
/** Marks TPROXY'd packets so the policy route delivers them locally. */
export const DEFAULT_FWMARK = 0x4a11;
export const DEFAULT_ROUTE_TABLE = 4711;

/**
 * The sandbox link's MTU (both veth ends). Every packet on it ends at the host (the proxy, the
 * resolver) and is never forwarded, so the size is internal to this machine: 64 KiB segments
 * need a fraction of the per-packet work of 1500-byte ones on the sandbox leg of a proxied
 * download. A tier whose guest keeps its own 1500 (microvm) asks for that instead.
 */
export const SANDBOX_LINK_MTU = 65520;
export const ETHERNET_MTU = 1500;

export const netnsName = (id: string) => `airlock-${id}`;
/** Kernel interface names hold 15 characters: "alk" + the 12-character sandbox id. */
export const hostIfName = (id: string) => `alk${id}`;
const chainName = (id: string) => `sbx_${id}`;
const SANDBOX_ID_RE = /^[a-z0-9]{12}$/;

function checkId(id: string): void {
  if (!SANDBOX_ID_RE.test(id)) throw new Error(`not a sandbox id: ${id}`);
}

async function ip(args: string[], input?: string): Promise<void> {
  await run('ip', input === undefined ? args : [...args, '-batch', '-'], { input, timeoutMs: 15_000 });
}

async function nft(script: string): Promise<void> {
  await run('nft', ['-f', '-'], { input: script, timeoutMs: 15_000 });
}

export interface PolicyRouting { fwmark: number; routeTable: number }

/** Base table and chains; idempotent (the static chains are flushed and refilled in one transaction). */
export async function ensureBaseRules(r: PolicyRouting): Promise<void> {
  const mark = `0x${r.fwmark.toString(16)}`;
  await nft(`
table inet ${NFT_TABLE} {
  map sandbox_pre { type ifname : verdict; }
  chain prerouting { type filter hook prerouting priority mangle; policy accept; }
  chain input { type filter hook input priority filter; policy accept; }
  chain forward { type filter hook forward priority filter; policy accept; }
  chain output { type filter hook output priority filter; policy accept; }
}
flush chain inet ${NFT_TABLE} prerouting
flush chain inet ${NFT_TABLE} input
flush chain inet ${NFT_TABLE} forward
flush chain inet ${NFT_TABLE} output
add rule inet ${NFT_TABLE} prerouting iifname "alk*" iifname vmap @sandbox_pre
add rule inet ${NFT_TABLE} prerouting iifname "alk*" drop
add rule inet ${NFT_TABLE} input iifname "alk*" meta mark ${mark} meta l4proto tcp accept
add rule inet ${NFT_TABLE} input iifname "alk*" meta l4proto { udp, tcp } th dport 53 fib daddr type local accept
add rule inet ${NFT_TABLE} input iifname "alk*" drop
add rule inet ${NFT_TABLE} forward iifname "alk*" drop
add rule inet ${NFT_TABLE} forward oifname "alk*" drop
add rule inet ${NFT_TABLE} output oifname "alk*" ct state established,related accept
add rule inet ${NFT_TABLE} output oifname "alk*" drop
`);
  await ensurePolicyRouting(r);
}

async function ensurePolicyRouting(r: PolicyRouting): Promise<void> {
  const rules = await run('ip', ['-4', 'rule', 'show', 'fwmark', `0x${r.fwmark.toString(16)}`], { timeoutMs: 15_000 });
  if (!rules.stdout.includes(`lookup ${r.routeTable}`)) {
    await ip(['-4', 'rule', 'add', 'fwmark', `0x${r.fwmark.toString(16)}`, 'lookup', String(r.routeTable)]);
  }
  // "replace" is idempotent: TPROXY'd packets are for a foreign address and must be taken as local.
  await ip(['-4', 'route', 'replace', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', String(r.routeTable)]);
}

/** Removes the table, the policy rule and its route when no sandbox chain is left. Returns whether it did. */
export async function removeBaseRulesIfUnused(r: PolicyRouting): Promise<boolean> {
  if ((await sandboxChains()).length > 0) return false;
  if (hostInterfaces().length > 0) return false;
  await run('nft', ['delete', 'table', 'inet', NFT_TABLE], { allowFailure: true, timeoutMs: 15_000 });
  await run('ip', ['-4', 'rule', 'del', 'fwmark', `0x${r.fwmark.toString(16)}`, 'lookup', String(r.routeTable)], { allowFailure: true, timeoutMs: 15_000 });
  await run('ip', ['-4', 'route', 'flush', 'table', String(r.routeTable)], { allowFailure: true, timeoutMs: 15_000 });
  return true;
}

/** Ids that have a chain in the airlock table. */
export async function sandboxChains(): Promise<string[]> {
  const r = await run('nft', ['list', 'chains', 'inet'], { allowFailure: true, timeoutMs: 15_000 });
  if (r.code !== 0) return [];
  const ids: string[] = [];
  let inTable = false;
  for (const line of r.stdout.split('\n')) {
    const t = /^table inet (\S+)/.exec(line);
    if (t) { inTable = t[1] === NFT_TABLE; continue; }
    const c = /^\s*chain sbx_([a-z0-9]{12}) /.exec(line);
    if (inTable && c) ids.push(c[1]!);
  }
  return ids;
}

/** Ids of sandboxes that have a host-side interface. */
export function hostInterfaces(): string[] {
  let names: string[];
  try { names = readdirSync('/sys/class/net'); } catch { return []; }
  return names.filter((n) => /^alk[a-z0-9]{12}$/.test(n)).map((n) => n.slice(3));
}

/** Ids with a named network namespace. */
export function namedNamespaces(): string[] {
  let names: string[];
  try { names = readdirSync(NETNS_DIR); } catch { return []; }
  return names.filter((n) => /^airlock-[a-z0-9]{12}$/.test(n)).map((n) => n.slice('airlock-'.length));
}

export interface SandboxRules {
  id: string;
  lease: NetworkLease;
  /** The engine's transparent proxy listener on 127.0.0.1. */
  proxyPort: number;
  fwmark: number;
}

/**
 * The sandbox's chain: its own source address only (no spoofing), IPv4 only, DNS to its
 * gateway, every TCP connection TPROXY'd to the engine's proxy, everything else dropped.
 * Re-running it re-points the sandbox at another proxy port (adoption by a new engine).
 */
export async function applySandboxRules(s: SandboxRules): Promise<void> {
  checkId(s.id);
  const c = chainName(s.id);
  const t = `inet ${NFT_TABLE}`;
  await nft(`
add chain ${t} ${c}
flush chain ${t} ${c}
add rule ${t} ${c} meta nfproto != ipv4 drop
add rule ${t} ${c} ip saddr != ${s.lease.sandboxIp} drop
add rule ${t} ${c} ip daddr ${s.lease.gatewayIp} meta l4proto { udp, tcp } th dport 53 accept
add rule ${t} ${c} meta l4proto tcp tproxy ip to 127.0.0.1:${s.proxyPort} meta mark set 0x${s.fwmark.toString(16)} accept
add rule ${t} ${c} drop
add element ${t} sandbox_pre { "${hostIfName(s.id)}" : jump ${c} }
`);
}

export async function removeSandboxRules(id: string): Promise<void> {
  checkId(id);
  const t = `inet ${NFT_TABLE}`;
  // One transaction when both exist; otherwise remove whichever part is left.
  const all = await run('nft', ['-f', '-'], { input: `delete element ${t} sandbox_pre { "${hostIfName(id)}" }\ndelete chain ${t} ${chainName(id)}\n`, allowFailure: true, timeoutMs: 15_000 });
  if (all.code === 0) return;
  await run('nft', ['delete', 'element', 'inet', NFT_TABLE, 'sandbox_pre', `{ "${hostIfName(id)}" }`], { allowFailure: true, timeoutMs: 15_000 });
  await run('nft', ['delete', 'chain', 'inet', NFT_TABLE, chainName(id)], { allowFailure: true, timeoutMs: 15_000 });
}

export interface LinkOptions {
  id: string;
  lease: NetworkLease;
  /** Join the network namespace of this process (the sandbox's init) under the name airlock-<id>. */
  pid?: number;
  /** Per-direction cap in megabits per second; none when absent. */
  bandwidthMbps?: number;
  /** Both ends' MTU; default SANDBOX_LINK_MTU. */
  mtu?: number;
}

/**
 * Names the sandbox's namespace, adds the veth pair (peer created directly inside as eth0),
 * addresses, route. No IPv6: link-local generation is off on both ends.
 */
export async function createLink(o: LinkOptions): Promise<void> {
  checkId(o.id);
  const ns = netnsName(o.id);
  const hostIf = hostIfName(o.id);
  if (o.pid !== undefined) await ip(['netns', 'attach', ns, String(o.pid)]);
  else if (!existsSync(`${NETNS_DIR}/${ns}`)) await ip(['netns', 'add', ns]);
  const gw = `${o.lease.gatewayIp}/${o.lease.prefixLength}`;
  const mtu = o.mtu ?? SANDBOX_LINK_MTU;
  if (!Number.isInteger(mtu) || mtu < 1280 || mtu > SANDBOX_LINK_MTU) throw new Error(`bad link MTU ${mtu}`);
  await ip([], [
    `link add ${hostIf} type veth peer name eth0 netns ${ns}`,
    `link set dev ${hostIf} addrgenmode none`,
    `link set dev ${hostIf} mtu ${mtu}`,
    `addr add ${gw} dev ${hostIf}`,
    `link set dev ${hostIf} up`,
    '',
  ].join('\n'));
  await ip(['-n', ns], [
    'link set dev eth0 addrgenmode none',
    `link set dev eth0 mtu ${mtu}`,
    `addr add ${o.lease.sandboxIp}/${o.lease.prefixLength} dev eth0`,
    'link set dev lo up',
    'link set dev eth0 up',
    `route add default via ${o.lease.gatewayIp} dev eth0`,
    '',
  ].join('\n'));
  if (o.bandwidthMbps !== undefined) await setBandwidth(o.id, o.bandwidthMbps);
}

/** Token-bucket cap on both directions: host→sandbox on the host end, sandbox→host on eth0 inside. */
export async function setBandwidth(id: string, mbps: number | null): Promise<void> {
  checkId(id);
  const hostIf = hostIfName(id);
  const ns = netnsName(id);
  if (mbps === null) {
    await run('tc', ['qdisc', 'del', 'dev', hostIf, 'root'], { allowFailure: true, timeoutMs: 15_000 });
    await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', 'eth0', 'root'], { allowFailure: true, timeoutMs: 15_000 });
    return;
  }
  const rate = `${Math.round(mbps * 1000)}kbit`;
  // Burst: 10 ms at the rate, at least 32 KiB (the kernel needs more than one MTU per tick), and
  // never below one whole frame of the link: tbf drops a packet larger than its bucket.
  const frame = linkMtu(hostIf) + 64;
  const burst = `${Math.max(32 * 1024, frame, Math.round((mbps * 1e6) / 8 / 100))}`;
  const args = ['qdisc', 'replace', 'dev', 'IF', 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', '50ms'];
  await run('tc', args.map((a) => (a === 'IF' ? hostIf : a)), { timeoutMs: 15_000 });
  await run('tc', ['-n', ns, ...args.map((a) => (a === 'IF' ? 'eth0' : a))], { timeoutMs: 15_000 });
}

/** The link's MTU as the kernel has it (both ends are set alike); 1500 when unreadable. */
function linkMtu(ifName: string): number {
  try {
    const mtu = Number(readFileSync(`/sys/class/net/${ifName}/mtu`, 'utf8').trim());
    return Number.isInteger(mtu) && mtu > 0 ? mtu : ETHERNET_MTU;
  } catch {
    return ETHERNET_MTU;
  }
}

/** Removes the veth pair and the namespace name; tolerant of either being gone already. */
export async function removeLink(id: string): Promise<void> {
  checkId(id);
  if (existsSync(`/sys/class/net/${hostIfName(id)}`)) {
    await run('ip', ['link', 'del', hostIfName(id)], { allowFailure: true, timeoutMs: 15_000 });
  }
  if (existsSync(`${NETNS_DIR}/${netnsName(id)}`)) {
    const r = await run('ip', ['netns', 'del', netnsName(id)], { allowFailure: true, timeoutMs: 15_000 });
    if (r.code !== 0 && existsSync(`${NETNS_DIR}/${netnsName(id)}`)) throw new Error(`could not remove network namespace ${netnsName(id)}: ${r.stderr.trim()}`);
  }
  if (existsSync(`/sys/class/net/${hostIfName(id)}`)) throw new Error(`could not remove interface ${hostIfName(id)}`);
}
