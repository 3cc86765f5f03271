import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { withFileLock } from '../storage/file-lock.js';
import { AddressPool, LEASE_DIR, type NetworkLease } from './address-pool.js';
import { BlockedAddresses, HostAddresses } from './blocked-addresses.js';
import { DnsUpstream } from './dns-upstream.js';
import { SandboxDnsServer } from './dns-server.js';
import { EgressPolicy } from './egress-policy.js';
import { EgressProxy } from './egress-proxy.js';
import { SpliceRelay } from './splice-relay.js';
import type { EgressBroker } from './tls-terminate.js';
import {
  applySandboxRules, createLink, DEFAULT_FWMARK, NETNS_DIR, netnsName, DEFAULT_ROUTE_TABLE, ensureBaseRules, hostInterfaces, namedNamespaces,
  removeBaseRulesIfUnused, removeLink, removeSandboxRules, sandboxChains, setBandwidth,
} from './host-network.js';

/**
 * Egress control for one engine: the per-sandbox host plumbing (host-network.ts), one DNS
 * resolver per sandbox on its gateway address, and one transparent proxy on 127.0.0.1 that
 * every sandbox's TCP is TPROXY'd to. Everything lives on the host; the sandbox only ever
 * sees eth0, a default route, and /etc/resolv.conf pointing at its gateway.
 */

export interface NetworkPolicySpec { allow: string[]; deny: string[]; bandwidthMbps?: number }

export type NetEventType = 'net.dns' | 'net.connect';

export interface NetworkManagerOptions {
  dataDir: string;
  /** Directory holding the static helpers (airlock-netsock next to the agent). */
  helperDir: string;
  /** Upstream resolver, 'IP:PORT' or 'IP'; default: the host's first nameserver. */
  dnsUpstream?: string;
  /** Sandbox link addresses; default 10.213.0.0/16. */
  addressPool?: string;
  /** Replaces the default refused ranges (DEFAULT_BLOCKED_RANGES). The pool is always refused. */
  blockedRanges?: string[];
  /** Port on the gateway address where the HTTP(S)_PROXY-style proxy answers; default 3128. */
  explicitProxyPort?: number;
  fwmark?: number;
  routeTable?: number;
  onEvent(sandboxId: string, type: NetEventType, data: Record<string, unknown>): void;
  /**
   * A name a sandbox's policy neither allows nor denies (a DNS question, port null, or a proxied
   * connection): null to refuse it now, else the approval's decision (docs/approvals.md).
   */
  askEgress?(sandboxId: string, host: string, port: number | null): Promise<{ approved: boolean; reason?: string }> | null;
  /** The secret broker: takes connections to sandboxes' secret hosts (secrets/secret-broker.ts). */
  broker?: EgressBroker;
  log?(level: 'info' | 'warn' | 'error', msg: string, data?: Record<string, unknown>): void;
}

interface SandboxNet {
  id: string;
  lease: NetworkLease;
  policy: EgressPolicy;
  dns: SandboxDnsServer;
}

const HOST_LOCK = '/run/airlock/network.lock';
export const EXPLICIT_PROXY_PORT = 3128;

export function parseHostPort(text: string, defaultPort: number): { host: string; port: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+)(?::(\d{1,5}))?$/.exec(text.trim());
  const port = m?.[2] === undefined ? defaultPort : Number(m[2]);
  if (!m || !(port >= 1 && port <= 65_535)) throw new Error(`DNS upstream must be IPv4[:PORT], got ${text}`);
  return { host: m[1]!, port };
}

/** The host's resolver: the first IPv4 nameserver of /etc/resolv.conf. */
export function hostResolver(): string {
  try {
    for (const line of readFileSync('/etc/resolv.conf', 'utf8').split('\n')) {
      const m = /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
      if (m) return m[1]!;
    }
  } catch { /* no resolv.conf */ }
  return '127.0.0.1';
}

export class NetworkManager {
  readonly explicitProxyPort: number;
  private readonly pool: AddressPool;
  private readonly upstream: DnsUpstream;
  private readonly blocked: BlockedAddresses;
  private readonly routing: { fwmark: number; routeTable: number };
  private readonly sandboxes = new Map<string, SandboxNet>();
  private readonly byAddress = new Map<string, SandboxNet>();
  private proxy: EgressProxy | null = null;
  /** Kernel relay for allowed connections; null: the proxy pipes in Node (slower, same result). */
  private relay: SpliceRelay | null = null;
  private proxyPort = 0;
  private proxyStarting: Promise<void> | null = null;

  constructor(private readonly o: NetworkManagerOptions) {
    this.explicitProxyPort = o.explicitProxyPort ?? EXPLICIT_PROXY_PORT;
    this.pool = new AddressPool(o.addressPool);
    this.upstream = new DnsUpstream({ upstream: parseHostPort(o.dnsUpstream ?? hostResolver(), 53) });
    this.blocked = new BlockedAddresses({
      ranges: o.blockedRanges,
      // Sandbox links are never a destination, whatever the operator's list says.
      extraRanges: [[this.pool.cidr, 'sandbox-network']],
    });
    this.routing = { fwmark: o.fwmark ?? DEFAULT_FWMARK, routeTable: o.routeTable ?? DEFAULT_ROUTE_TABLE };
  }

  /** Validates a policy (throws with a message fit for a 400). */
  static compile(p: NetworkPolicySpec): EgressPolicy {
    return new EgressPolicy(p.allow, p.deny);
  }

  /** Takes the sandbox's link addresses before it starts (its resolv.conf names the gateway). */
  allocate(id: string): NetworkLease {
    return this.pool.allocate({ dataDir: this.o.dataDir, sandboxId: id });
  }

  static netnsPath(id: string): string {
    return `${NETNS_DIR}/${netnsName(id)}`;
  }

  /** The /etc/resolv.conf a networked sandbox gets, read-only. */
  static resolvConf(lease: NetworkLease): string {
    return `# Airlock: the sandbox's only resolver; it answers the names its policy allows.\nnameserver ${lease.gatewayIp}\noptions edns0 attempts:2 timeout:2\n`;
  }

  /**
   * Plumbs a started sandbox: names the namespace of `pid` airlock-<id>, adds its veth pair,
   * rules, resolver and proxy registration. On failure everything made is removed.
   */
  async attach(id: string, lease: NetworkLease, pid: number | undefined, spec: NetworkPolicySpec, link: { mtu?: number } = {}): Promise<void> {
    const policy = NetworkManager.compile(spec);
    await this.startProxy();
    const dns = new SandboxDnsServer({
      sandboxId: id,
      listen: { host: lease.gatewayIp, port: 53 },
      policy: () => this.sandboxes.get(id)?.policy ?? policy,
      upstream: this.upstream,
      onEvent: (sid, type, data) => this.o.onEvent(sid, type, data),
      ...(this.o.askEgress ? { askName: (name: string) => this.o.askEgress!(id, name, null) } : {}),
    });
    const net: SandboxNet = { id, lease, policy, dns };
    try {
      await withFileLock(HOST_LOCK, async () => {
        await ensureBaseRules(this.routing);
        await createLink({ id, lease, pid, bandwidthMbps: spec.bandwidthMbps, ...(link.mtu ? { mtu: link.mtu } : {}) });
        await applySandboxRules({ id, lease, proxyPort: this.proxyPort, fwmark: this.routing.fwmark });
      });
      await dns.start();
      this.sandboxes.set(id, net);
      this.byAddress.set(lease.sandboxIp, net);
    } catch (e) {
      await dns.close().catch(() => {});
      await this.teardown(id, lease).catch(() => {});
      throw e;
    }
  }

  /**
   * Takes over a live sandbox whose engine died: its link and namespace exist, its rules point
   * at a dead proxy port and nobody answers its DNS. Re-points both at this engine.
   */
  async adopt(id: string, spec: NetworkPolicySpec): Promise<void> {
    const lease = this.leaseOf(id);
    if (!lease) throw new Error(`sandbox ${id} has no network lease`);
    const policy = NetworkManager.compile(spec);
    await this.startProxy();
    const dns = new SandboxDnsServer({
      sandboxId: id,
      listen: { host: lease.gatewayIp, port: 53 },
      policy: () => this.sandboxes.get(id)?.policy ?? policy,
      upstream: this.upstream,
      onEvent: (sid, type, data) => this.o.onEvent(sid, type, data),
      ...(this.o.askEgress ? { askName: (name: string) => this.o.askEgress!(id, name, null) } : {}),
    });
    await withFileLock(HOST_LOCK, async () => {
      await ensureBaseRules(this.routing);
      await applySandboxRules({ id, lease, proxyPort: this.proxyPort, fwmark: this.routing.fwmark });
    });
    await dns.start();
    const net: SandboxNet = { id, lease, policy, dns };
    this.sandboxes.set(id, net);
    this.byAddress.set(lease.sandboxIp, net);
  }

  has(id: string): boolean {
    return this.sandboxes.has(id);
  }

  /** Live policy change: deny wins; connections the new policy refuses are cut. Returns how many. */
  async update(id: string, spec: NetworkPolicySpec, bandwidthChanged: boolean): Promise<number> {
    const net = this.sandboxes.get(id);
    if (!net) throw new Error(`sandbox ${id} has no network`);
    net.policy = NetworkManager.compile(spec);
    if (bandwidthChanged) await setBandwidth(id, spec.bandwidthMbps ?? null);
    return this.proxy?.recheck(id) ?? 0;
  }

  /** Removes everything the sandbox had on the host. Idempotent. */
  async teardown(id: string, lease?: NetworkLease | null): Promise<void> {
    const net = this.sandboxes.get(id);
    this.sandboxes.delete(id);
    if (net) {
      this.byAddress.delete(net.lease.sandboxIp);
      this.proxy?.closeSandbox(id);
      await net.dns.close().catch(() => {});
    }
    const l = lease ?? net?.lease ?? this.leaseOf(id);
    await withFileLock(HOST_LOCK, async () => {
      await removeSandboxRules(id);
      await removeLink(id);
      if (l) this.pool.release(l);
      await removeBaseRulesIfUnused(this.routing);
    });
  }

  /** The lease file of a sandbox of this data dir, if any. */
  leaseOf(id: string): NetworkLease | null {
    for (const { lease, owner } of AddressPool.listLeases(LEASE_DIR)) {
      if (owner?.sandboxId === id && owner.dataDir === this.o.dataDir) return lease;
    }
    return null;
  }

  /**
   * At engine start: removes the network leftovers of this data dir's sandboxes that are not
   * live, and of data dirs that no longer exist (their engines cannot clean up any more).
   */
  async reconcile(isLive: (id: string) => boolean, dataDirExists: (dir: string) => boolean): Promise<string[]> {
    const removed: string[] = [];
    const leases = AddressPool.listLeases(LEASE_DIR);
    const owned = new Set<string>();
    for (const { lease, owner } of leases) {
      if (!owner) continue;
      owned.add(owner.sandboxId);
      const mine = owner.dataDir === this.o.dataDir;
      if ((mine && !isLive(owner.sandboxId)) || (!mine && !dataDirExists(owner.dataDir))) {
        await this.teardown(owner.sandboxId, lease);
        removed.push(owner.sandboxId);
      }
    }
    // Interfaces, namespaces and chains without any lease: a crash between allocation steps.
    const orphans = new Set([...hostInterfaces(), ...namedNamespaces(), ...(await sandboxChains())].filter((id) => !owned.has(id)));
    for (const id of orphans) {
      await this.teardown(id, null);
      removed.push(id);
    }
    if (removed.length > 0) await withFileLock(HOST_LOCK, () => removeBaseRulesIfUnused(this.routing));
    return removed;
  }

  async close(): Promise<void> {
    for (const net of this.sandboxes.values()) await net.dns.close().catch(() => {});
    this.sandboxes.clear();
    this.byAddress.clear();
    await this.proxy?.close().catch(() => {});
    this.proxy = null;
    await this.relay?.close().catch(() => {});
    this.relay = null;
    this.upstream.close();
  }

  private async startProxy(): Promise<void> {
    if (this.proxy) return;
    this.proxyStarting ??= (async () => {
      const proxy = new EgressProxy({
        lookupSandbox: (ip) => {
          const net = this.byAddress.get(ip);
          return net ? { sandboxId: net.id, policy: () => net.policy, gatewayIp: net.lease.gatewayIp } : null;
        },
        resolve4: (name) => this.upstream.resolve4(name),
        blocked: this.blocked,
        hostAddresses: new HostAddresses(),
        onEvent: (sid, type, data) => this.o.onEvent(sid, type, data),
        explicitProxyPort: this.explicitProxyPort,
        relay: () => this.relay,
        ...(this.o.askEgress ? { askEgress: (sid: string, name: string, port: number) => this.o.askEgress!(sid, name, port) } : {}),
        ...(this.o.broker ? { broker: this.o.broker } : {}),
      });
      const port = await proxy.listen('127.0.0.1', 0);
      try {
        const cc = await makeTransparent(join(this.o.helperDir, 'airlock-netsock'), proxy.listenerFd());
        if (!cc.chosen) this.o.log?.('warn', 'sandbox-facing proxy sockets keep the host TCP congestion control', { detail: cc.detail });
      } catch (e) {
        await proxy.close();
        throw e;
      }
      try {
        this.relay = await SpliceRelay.start(join(this.o.helperDir, 'airlock-splice'));
      } catch (e) {
        this.o.log?.('warn', 'kernel relay unavailable; the egress proxy copies bytes itself', { error: (e as Error).message });
      }
      this.proxy = proxy;
      this.proxyPort = port;
    })().finally(() => { this.proxyStarting = null; });
    await this.proxyStarting;
  }
}

/**
 * Congestion controls for the sandbox-facing leg of proxied connections, first available wins.
 * That leg is a veth inside this machine: pacing (BBR, a common host default) only adds a timer
 * per burst there, which cost about two thirds of a proxied download's CPU. The internet-facing
 * sockets keep the host's default.
 */
const SANDBOX_LEG_CONGESTION = 'cubic,reno';

/**
 * TPROXY only delivers to IP_TRANSPARENT sockets; Node cannot set that, the helper can. It also
 * sets the listener's congestion control, which accepted connections inherit.
 */
function makeTransparent(helper: string, fd: number): Promise<{ chosen: string | null; detail: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(helper, ['transparent', '3', '--congestion', SANDBOX_LEG_CONGESTION], { stdio: ['ignore', 'pipe', 'pipe', fd] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    child.on('error', reject);
    child.on('close', (code) => (code === 0
      ? resolve({ chosen: out.trim() || null, detail: err.trim() })
      : reject(new Error(`airlock-netsock failed (${code}): ${err.trim()}`))));
  });
}
