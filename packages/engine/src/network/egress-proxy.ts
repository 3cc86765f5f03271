import net, { isIPv4 } from 'node:net';
import { resumeReading, type Handoff, type RelayResult } from './splice-relay.js';
import { embeddedIPv4, type BlockedAddresses } from './blocked-addresses.js';
import { normalizeName, type EgressPolicy, type NameVerdict } from './egress-policy.js';
import { parseAbsoluteTarget, parseAuthority, parseRequestHead } from './http-request-head.js';
import { hostOfRequest, originFormHead, RequestGuard, UpgradeAnswerWatch, type GuardResult } from './http-request-guard.js';
import { looksLikeTls, MAX_CLIENT_HELLO_LENGTH, MAX_CLIENT_HELLO_RECORDS, parseClientHello } from './tls-client-hello.js';
import type { EgressBroker } from './tls-terminate.js';

/**
 * The egress proxy every sandbox TCP connection is TPROXY'd to. It learns where the sandbox
 * wants to go (a CIDR rule on the dialled address, else the TLS SNI or HTTP Host of its first
 * bytes, or an HTTP proxy request on <gateway>:3128), checks that against the sandbox's
 * policy, resolves the name itself and dials only an address it checked, never the address
 * the sandbox picked: a spoofed SNI can only ever reach the real servers of an allowed name.
 * Every connection ends in exactly one net.connect event.
 */

export interface ProxySandbox { sandboxId: string; policy: () => EgressPolicy; gatewayIp: string }

export interface EgressProxyOptions {
  lookupSandbox(remoteIp: string): ProxySandbox | null;
  resolve4(name: string): Promise<{ rcode: string; addresses: string[] }>;
  blocked: BlockedAddresses;
  hostAddresses: { has(ip: string): boolean };
  onEvent(sandboxId: string, type: 'net.connect', data: Record<string, unknown>): void;
  /** A connection whose original destination is <gatewayIp>:<explicitProxyPort> speaks the HTTP proxy protocol (CONNECT / absolute-form GET) instead of being transparent. */
  explicitProxyPort: number;
  /** Where the connection was headed; default: the socket's local address/port (TPROXY). Tests override it. */
  originalDestination?(socket: net.Socket): { address: string; port: number };
  /** Time to wait for the first bytes; default 10000. */
  sniffTimeoutMs?: number;
  /** Default 10000; also bounds the name resolution. */
  connectTimeoutMs?: number;
  /** Default 512. */
  maxConnectionsPerSandbox?: number;
  /**
   * A name the sandbox's policy does not allow (nor deny): null to refuse it now, else the
   * decision of an approval (approvals.egressOutsideAllowlist: ask); the connection waits.
   */
  askEgress?(sandboxId: string, name: string, port: number): Promise<{ approved: boolean; reason?: string }> | null;
  /**
   * Relays an allowed, connected pair in the kernel (splice-relay.ts); null or absent: Node
   * pipes the bytes itself. Asked per connection, so a restarted relay is picked up.
   */
  relay?: () => ConnectionRelay | null;
  /**
   * The secret broker (secrets/secret-broker.ts): connections to a sandbox's secret hosts go to
   * it instead of being relayed, and plaintext to other hosts is watched for placeholders.
   */
  broker?: EgressBroker;
  /* The per-sandbox bandwidth cap is tc's job on the sandbox link, not this proxy's. */
}

export interface ConnectionRelay {
  handOff(a: net.Socket, b: net.Socket): Handoff;
  /** One direction only, `from` to `to` (splice-relay.ts); Node keeps the sockets. */
  handOffOneWay(from: net.Socket, to: net.Socket): Handoff;
  /** Exactly `count` bytes `from` to `to`, then Node reads `from` again (splice-relay.ts). */
  handOffCounted(from: net.Socket, to: net.Socket, count: number): Handoff;
}

export type ConnectMode = 'transparent' | 'explicit' | 'cidr';
type Verdict = 'allow' | 'deny' | 'not-allowed' | 'refused' | 'cut';
type State = 'sniffing' | 'approving' | 'resolving' | 'dialling' | 'open' | 'done';

/** What a connection was allowed to reach; `name` is null when an address rule allowed it. */
interface Target { name: string | null; address: string; port: number }

interface Conn {
  sandbox: ProxySandbox;
  client: net.Socket;
  upstream: net.Socket | null;
  /** Where the sandbox dialled. */
  dst: { address: string; port: number };
  mode: ConnectMode;
  state: State;
  /** The checked name (null: an address was checked) and port, once known. */
  name: string | null;
  port: number;
  /** The address dialled, once chosen. */
  address: string | null;
  startedAt: number;
  timer: NodeJS.Timeout | null;
  clientClosed: boolean;
  upstreamClosed: boolean;
  /** Set once the pair was handed to the kernel relay: it, not the sockets, says when it ends. */
  handoff: Handoff | null;
  /** Bytes Node had moved each way when the pair went to the relay. */
  nodeBytes: RelayResult | null;
  /** The proxy's own answer to the client (explicit CONNECT), not counted as bytes in. */
  replyBytes: number;
  /** Set when the broker takes this connection over once connected ('tls': terminate TLS; 'http': plain HTTP). */
  brokered: 'tls' | 'http' | null;
  /** Sees every byte the client sends (placeholder watch); such a connection stays in Node. */
  inspect: ((chunk: Buffer) => void) | null;
  /** Plaintext HTTP: every request the client sends is checked to name the allowed host. */
  guard: RequestGuard | null;
  /** A guarded connection's server-to-client direction, handed to the kernel relay (Node keeps the other). */
  half: Handoff | null;
  /** Bytes Node had written to the client when the half went to the relay. */
  halfNodeBytesIn: number;
  /** A guarded connection's request body of known length, lent to the kernel relay (counted). */
  upload: UploadLoan | null;
  /** Request body bytes the relay moved to the server on such loans, over the connection's life. */
  uploadRelayed: number;
}

interface UploadLoan {
  handoff: Handoff;
  /** Settles once the loan is over and counted (uploadRelayed updated). */
  settled: Promise<void>;
  /** The connection is ending: cut() was sent, nothing is resumed after. */
  cut: boolean;
}

/** A decision not to connect: becomes the event and, in explicit mode, the HTTP answer. */
class Refusal extends Error {
  constructor(
    readonly verdict: 'deny' | 'not-allowed' | 'refused',
    readonly reason: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(reason);
  }
}

const TLS_SNIFF_LIMIT = MAX_CLIENT_HELLO_LENGTH + 5 * MAX_CLIENT_HELLO_RECORDS + 4;
const LINGER_MS = 2_000;
const KEEPALIVE_MS = 30_000;
/** Bytes (both ways) after which an allowed connection moves to the kernel relay. */
const RELAY_AFTER_BYTES = 256 * 1024;
const HOST_NAME = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/** Lower-cased, without a trailing dot; null when it is no host name (or a non-canonical IPv4). */
export function validHostName(raw: string): string | null {
  const name = normalizeName(raw);
  if (isIPv4(name)) return name;
  if (/^[0-9.]+$/.test(name) || /^0x[0-9a-f]+$/.test(name)) return null; // inet_aton forms: never a name
  return HOST_NAME.test(name) ? name : null;
}

function plainIPv4(ip: string | undefined): string | null {
  if (ip === undefined) return null;
  return embeddedIPv4(ip) ?? ip;
}

/** Grows by doubling, so a ClientHello trickled in byte by byte costs O(n), not O(n²). */
class SniffBuffer {
  private buf = Buffer.allocUnsafe(2048);
  length = 0;
  push(chunk: Buffer): void {
    if (this.length + chunk.length > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + chunk.length));
      this.buf.copy(bigger, 0, 0, this.length);
      this.buf = bigger;
    }
    chunk.copy(this.buf, this.length);
    this.length += chunk.length;
  }
  view(): Buffer { return this.buf.subarray(0, this.length); }
}

type SniffResult =
  | { ok: true; data: Buffer; name: string }
  | { ok: false; reason: string; detail?: string };

export class EgressProxy {
  readonly stats = { active: 0, total: 0, refused: 0 };
  private readonly server: net.Server;
  private readonly bySandbox = new Map<string, Set<Conn>>();
  /** Every client socket still open, refused ones lingering over an HTTP answer included. */
  private readonly sockets = new Set<net.Socket>();
  private readonly sniffTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly maxPerSandbox: number;
  private listening = false;

  constructor(private readonly o: EgressProxyOptions) {
    this.sniffTimeoutMs = o.sniffTimeoutMs ?? 10_000;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
    this.maxPerSandbox = o.maxConnectionsPerSandbox ?? 512;
    // pauseOnConnect: nothing is read before a decision, so an address-allowed connection
    // can be dialled at once and the client's first bytes wait in the kernel meanwhile.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (s) => this.accept(s));
    // Accept errors (EMFILE) must not kill the engine; the kernel keeps the backlog.
    this.server.on('error', () => {});
  }

  /** Listens on host:port (port 0 = ephemeral); returns the port. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      this.server.once('error', onError);
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError);
        this.listening = true;
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  /** The listening socket's fd (the lead passes it to a helper that sets IP_TRANSPARENT). */
  listenerFd(): number {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const fd = (this.server as any)._handle?.fd as number | undefined;
    if (!this.listening || typeof fd !== 'number' || fd < 0) throw new Error('egress proxy is not listening');
    return fd;
  }

  /**
   * Re-checks every live connection of the sandbox against its (new) policy and destroys
   * those no longer allowed (each gets a net.connect event with verdict 'cut'). Returns how
   * many were cut. Connections still sniffing decide later, against the new policy.
   */
  recheck(sandboxId: string): number {
    const conns = this.bySandbox.get(sandboxId);
    if (!conns) return 0;
    let cut = 0;
    for (const c of [...conns]) {
      // Waiting for an approval: it decides against the policy as it is once decided.
      if (c.state === 'sniffing' || c.state === 'approving' || c.state === 'done' || this.stillAllowed(c)) continue;
      this.finish(c, 'cut', { reason: 'policy-changed' }, 'reset');
      cut++;
    }
    return cut;
  }

  /** Destroys every connection of the sandbox (it is being destroyed). Events are emitted before this returns. */
  closeSandbox(sandboxId: string): void {
    for (const c of [...(this.bySandbox.get(sandboxId) ?? [])]) this.endNow(c, 'sandbox-closed');
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (!this.listening) return resolve();
      this.server.close(() => resolve());
    });
    this.listening = false;
    for (const conns of [...this.bySandbox.values()]) for (const c of [...conns]) this.endNow(c, 'proxy-closed');
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
  }

  // ---- accepting -------------------------------------------------------------------------

  private accept(client: net.Socket): void {
    // First of all: an error on this socket must never become an uncaught exception. It
    // destroys the socket (autoDestroy); a relayed pair goes down together.
    let conn: Conn | null = null;
    client.on('error', () => { if (conn?.state === 'open' && !conn.handoff) this.destroyBoth(conn); });
    this.stats.total++;
    let sandbox: ProxySandbox | null = null;
    let dst: { address: string; port: number } | null = null;
    try {
      const remote = plainIPv4(client.remoteAddress);
      sandbox = remote === null ? null : this.o.lookupSandbox(remote);
      if (sandbox) {
        const d = this.o.originalDestination ? this.o.originalDestination(client) : { address: client.localAddress ?? '', port: client.localPort ?? 0 };
        dst = { address: plainIPv4(d.address) ?? '', port: d.port };
      }
    } catch {
      sandbox = null;
    }
    if (!sandbox || !dst) {
      // Not a sandbox (or it is gone): no event, nobody to attribute it to.
      this.stats.refused++;
      client.resetAndDestroy();
      return;
    }
    const explicit = dst.address === sandbox.gatewayIp && dst.port === this.o.explicitProxyPort;
    const c: Conn = conn = {
      sandbox, client, upstream: null, dst, mode: explicit ? 'explicit' : 'transparent', state: 'sniffing',
      name: null, port: dst.port, address: null, startedAt: Date.now(), timer: null, clientClosed: false, upstreamClosed: false,
      handoff: null, nodeBytes: null, replyBytes: 0, brokered: null, inspect: null, guard: null, half: null, halfNodeBytesIn: 0, upload: null, uploadRelayed: 0,
    };
    this.sockets.add(client);
    client.on('close', () => {
      this.sockets.delete(client);
      c.clientClosed = true;
      this.onSocketClosed(c);
    });
    let conns = this.bySandbox.get(sandbox.sandboxId);
    if (!conns) this.bySandbox.set(sandbox.sandboxId, (conns = new Set()));
    if (conns.size >= this.maxPerSandbox) {
      this.refuse(c, new Refusal('refused', 'too-many-connections'), false);
      return;
    }
    conns.add(c);
    this.stats.active++;
    client.setKeepAlive(true, KEEPALIVE_MS);
    void this.run(c, () => this.route(c));
  }

  /** Runs one connection's decision; whatever it throws ends that connection only. */
  private async run(conn: Conn, step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (e) {
      if (e instanceof Refusal) this.refuse(conn, e, true);
      else this.refuse(conn, new Refusal('refused', 'internal-error', { detail: String((e as Error)?.message ?? e) }), true);
    }
  }

  private async route(conn: Conn): Promise<void> {
    const { dst } = conn;
    if (conn.mode === 'explicit') return this.routeExplicit(conn);
    const policy = conn.sandbox.policy();
    let addressRefusal: Refusal | null = null;
    if (policy.checkAddress(dst.address, dst.port) === 'allow') {
      addressRefusal = this.addressRefusal(dst.address, dst.port, policy);
      if (!addressRefusal) {
        // A CIDR rule allows the very address dialled: connect now, so protocols where the
        // server speaks first (SSH, SMTP, PostgreSQL) work.
        conn.mode = 'cidr';
        return this.dial(conn, { name: null, address: dst.address, port: dst.port }, Buffer.alloc(0));
      }
    }
    const sniffed = await this.sniff(conn, 'any');
    if (!sniffed.ok) {
      // The address rule matched but the address is blocked: say that, not "no SNI".
      throw addressRefusal ?? new Refusal('refused', sniffed.reason, sniffed.detail ? { detail: sniffed.detail } : {});
    }
    const target = await this.decide(conn, sniffed.name, dst.port);
    const proto = looksLikeTls(sniffed.data) ? 'tls' : 'http';
    this.brokerOrWatch(conn, target, proto);
    if (proto === 'http' && !conn.brokered) conn.guard = new RequestGuard({ name: target.name ?? target.address, mode: 'transparent' });
    return this.dial(conn, target, sniffed.data);
  }

  private async routeExplicit(conn: Conn): Promise<void> {
    const sniffed = await this.sniff(conn, 'http');
    if (!sniffed.ok) throw new Refusal('refused', sniffed.reason, sniffed.detail ? { detail: sniffed.detail } : {});
    const parsed = parseRequestHead(sniffed.data);
    if (parsed.status !== 'complete') throw new Refusal('refused', 'bad-request');
    const { head } = parsed;
    const rest = sniffed.data.subarray(head.length);
    if (head.method === 'CONNECT') {
      const a = parseAuthority(head.target);
      if (!a.ok) throw new Refusal('refused', a.reason === 'ipv6' ? 'ipv6' : 'bad-request', { detail: head.target });
      if (a.port === null) throw new Refusal('refused', 'bad-request', { detail: 'CONNECT needs host:port' });
      const target = await this.decide(conn, a.host, a.port);
      this.brokerOrWatch(conn, target, 'tls');
      return this.dial(conn, target, rest, Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1'));
    }
    const t = parseAbsoluteTarget(head.target);
    if (!t.ok) throw new Refusal('refused', t.reason === 'ipv6' ? 'ipv6' : 'bad-request', { detail: 'needs CONNECT or an absolute http:// target' });
    if (t.scheme !== 'http') throw new Refusal('refused', 'bad-request', { detail: 'use CONNECT for https' });
    const target = await this.decide(conn, t.host, t.port);
    this.brokerOrWatch(conn, target, 'http');
    if (conn.brokered) return this.dial(conn, target, Buffer.concat([originFormHead(head, t.path, t.authority), rest]));
    // The guard rewrites this request to origin form and refuses any after it.
    conn.guard = new RequestGuard({ name: target.name ?? target.address, mode: 'explicit' });
    return this.dial(conn, target, sniffed.data);
  }

  // ---- learning the name ------------------------------------------------------------------

  /**
   * Collects the client's first bytes until they name a host: a TLS ClientHello's SNI or an
   * HTTP request's Host ('http' mode: a proxy request, whose target the caller reads).
   */
  private sniff(conn: Conn, accept: 'any' | 'http'): Promise<SniffResult> {
    const { client } = conn;
    return new Promise((resolve) => {
      const buf = new SniffBuffer();
      let need = 1;
      const done = (r: SniffResult): void => {
        client.off('data', onData);
        client.off('end', onEnd);
        client.off('close', onClose);
        client.pause();
        this.clearTimer(conn);
        resolve(r);
      };
      const examine = (final: boolean): void => {
        const data = buf.view();
        const tls = looksLikeTls(data);
        if (tls && accept === 'http') return done({ ok: false, reason: 'bad-request', detail: 'TLS sent to the HTTP proxy port' });
        const r = tls ? examineTls(data) : examineHttp(data, accept);
        if ('need' in r) {
          if (!final) { need = r.need; return; }
          return done({ ok: false, reason: tls ? 'no-sni' : accept === 'http' ? 'bad-request' : 'no-host', detail: 'connection ended early' });
        }
        done(r);
      };
      const onData = (chunk: Buffer): void => {
        buf.push(chunk);
        if (buf.length >= need) examine(false);
      };
      const onEnd = (): void => examine(true);
      const onClose = (): void => done({ ok: false, reason: 'client-closed' });
      client.on('data', onData);
      client.on('end', onEnd);
      client.on('close', onClose);
      conn.timer = setTimeout(() => done({ ok: false, reason: 'sniff-timeout' }), this.sniffTimeoutMs);
      client.resume();
    });
  }

  // ---- deciding -----------------------------------------------------------------------------

  /** Checks `rawName` on `port` and picks the address to dial: one this proxy resolved and checked. */
  private async decide(conn: Conn, rawName: string, port: number): Promise<Target> {
    if (conn.state === 'done') throw new Refusal('refused', 'closed'); // ended while sniffing: already reported
    conn.state = 'resolving';
    conn.port = port;
    const name = validHostName(rawName);
    if (name === null) throw new Refusal('refused', 'bad-name', { name: rawName.slice(0, 255) });
    const policy = conn.sandbox.policy();
    if (isIPv4(name)) {
      // An address written as a name: only an address rule can allow it.
      conn.name = null;
      conn.address = name;
      const verdict = policy.checkAddress(name, port);
      if (verdict !== 'allow') throw new Refusal(verdict, verdict === 'deny' ? 'deny-rule' : 'not-on-allowlist', { address: name });
      const refusal = this.addressRefusal(name, port, policy);
      if (refusal) throw refusal;
      return { name: null, address: name, port };
    }
    conn.name = name;
    let verdict = policy.checkName(name, port);
    if (verdict === 'not-allowed') verdict = await this.askApproval(conn, name, port);
    if (verdict !== 'allow') throw new Refusal(verdict, verdict === 'deny' ? 'deny-rule' : 'not-on-allowlist', { name });
    const answer = await this.resolve(name);
    if (conn.state !== 'resolving') throw new Refusal('refused', 'closed'); // cut or closed meanwhile: already reported
    if (answer.rcode !== 'NOERROR' || answer.addresses.length === 0) {
      throw new Refusal('refused', 'resolve-failed', { name, rcode: answer.rcode });
    }
    // The policy may have changed while the name resolved (a PATCH): decide with the current one.
    const current = conn.sandbox.policy();
    const still = current.checkName(name, port);
    if (still !== 'allow') throw new Refusal(still, still === 'deny' ? 'deny-rule' : 'not-on-allowlist', { name });
    let first: Refusal | null = null;
    for (const ip of answer.addresses) {
      const refusal = this.addressRefusal(ip, port, current);
      if (!refusal) return { name, address: ip, port };
      first ??= refusal;
    }
    throw first!;
  }

  /** Holds the connection while a person decides; the policy as it is then answers. */
  private async askApproval(conn: Conn, name: string, port: number): Promise<NameVerdict> {
    const asked = this.o.askEgress?.(conn.sandbox.sandboxId, name, port) ?? null;
    if (asked === null) return 'not-allowed';
    conn.state = 'approving';
    const answer = await asked.catch(() => ({ approved: false, reason: 'error' }));
    if (conn.state !== 'approving') throw new Refusal('refused', 'closed'); // closed or cut meanwhile: already reported
    conn.state = 'resolving';
    if (!answer.approved) throw new Refusal('not-allowed', 'not-on-allowlist', { name, approval: answer.reason ?? 'denied' });
    return conn.sandbox.policy().checkName(name, port);
  }

  private async resolve(name: string): Promise<{ rcode: string; addresses: string[] }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Refusal('refused', 'resolve-failed', { name, detail: 'timeout' })), this.connectTimeoutMs);
    });
    try {
      return await Promise.race([this.o.resolve4(name), timeout]);
    } catch (e) {
      if (e instanceof Refusal) throw e;
      throw new Refusal('refused', 'resolve-failed', { name, detail: String((e as Error)?.message ?? e) });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Why this proxy must not dial `ip` on `port`, whatever allowed the name; null when it may. */
  private addressRefusal(ip: string, port: number, policy: EgressPolicy): Refusal | null {
    const blocked = this.o.blocked.reason(ip);
    if (blocked !== null) return new Refusal('refused', blocked, { address: ip });
    if (this.o.hostAddresses.has(ip)) return new Refusal('refused', 'host-address', { address: ip });
    if (policy.addressDenied(ip, port)) return new Refusal('deny', 'deny-rule', { address: ip });
    return null;
  }

  private stillAllowed(c: Conn): boolean {
    const policy = c.sandbox.policy();
    if (c.name === null) {
      return c.address === null || policy.checkAddress(c.address, c.port) === 'allow';
    }
    if (policy.checkName(c.name, c.port) !== 'allow') return false;
    return c.address === null || !policy.addressDenied(c.address, c.port);
  }

  // ---- connecting -----------------------------------------------------------------------------

  /**
   * Dials the checked target; on success answers the client (`reply`, explicit CONNECT),
   * sends what was read from the client so far (`head`) and relays both ways.
   */
  private dial(conn: Conn, target: Target, head: Buffer, reply?: Buffer): Promise<void> {
    if (conn.state === 'done') return Promise.resolve();
    conn.state = 'dialling';
    conn.name = target.name;
    conn.address = target.address;
    conn.port = target.port;
    return new Promise((resolveDial, rejectDial) => {
      let settled = false;
      const resolve = () => { settled = true; resolveDial(); };
      const reject = (e: Refusal) => { settled = true; rejectDial(e); };
      const upstream = net.connect({ host: target.address, port: target.port, family: 4, allowHalfOpen: true, noDelay: true });
      conn.upstream = upstream;
      upstream.on('error', (e: NodeJS.ErrnoException) => {
        if (conn.state === 'dialling') reject(new Refusal('refused', 'connect-failed', { address: target.address, detail: e.code ?? e.message }));
        else if (!conn.handoff) this.destroyBoth(conn);
      });
      upstream.on('close', () => {
        conn.upstreamClosed = true;
        // Cut or closed while dialling: settle (the event is already out). Only if unsettled:
        // an Error (with its stack) per closed connection is measurable on the connect path.
        if (!settled) reject(new Refusal('refused', 'closed'));
        this.onSocketClosed(conn);
      });
      conn.timer = setTimeout(() => {
        reject(new Refusal('refused', 'connect-timeout', { address: target.address }));
      }, this.connectTimeoutMs);
      upstream.once('connect', () => {
        this.clearTimer(conn);
        if (conn.state !== 'dialling') { upstream.destroy(); resolve(); return; }
        conn.state = 'open';
        upstream.setKeepAlive(true, KEEPALIVE_MS);
        this.relay(conn, upstream, head, reply);
        resolve();
      });
    });
  }

  /**
   * A sandbox's secret host: the broker will take the connection. Plaintext anywhere else, for
   * a sandbox with secrets: watched for placeholders (TLS to other hosts cannot be seen into).
   */
  private brokerOrWatch(conn: Conn, target: Target, proto: 'tls' | 'http'): void {
    const broker = this.o.broker;
    if (!broker || target.name === null) return;
    if (broker.brokers(conn.sandbox.sandboxId, target.name)) conn.brokered = proto;
    else if (proto === 'http') conn.inspect = broker.inspector(conn.sandbox.sandboxId, { host: target.name, port: target.port });
  }

  private relay(conn: Conn, upstream: net.Socket, head: Buffer, reply: Buffer | undefined): void {
    const { client } = conn;
    if (conn.brokered && this.o.broker) {
      // The broker owns both sockets from here; its Handoff says when the connection is over.
      const h = this.o.broker.take({
        sandboxId: conn.sandbox.sandboxId, host: conn.name!, port: conn.port, client, upstream, head, reply, tls: conn.brokered === 'tls',
      });
      conn.handoff = h;
      h.done.then((r) => this.finishRelayed(conn, 'allow', { brokered: true }, r), () => this.finishRelayed(conn, 'allow', { brokered: true, closedBy: 'broker-failed' }, null));
      return;
    }
    if (conn.inspect) {
      const inspect = conn.inspect;
      if (head.length > 0) inspect(head);
      client.on('data', inspect);
    }
    if (conn.guard) {
      this.pipeGuarded(conn, upstream, conn.guard, head);
      return;
    }
    if (reply && conn.name !== null) {
      // CONNECT to a name: what the client sends through the tunnel is checked like a
      // transparent connection's first bytes, or CONNECT a.test:443 + SNI b.test would reach
      // b.test through a.test's front.
      client.write(reply);
      conn.replyBytes = reply.length;
      this.checkTunnel(conn, upstream, conn.name, head);
      return;
    }
    if (reply) client.write(reply);
    if (head.length > 0) upstream.write(head);
    conn.replyBytes = reply?.length ?? 0;
    this.pipeInNode(conn, upstream);
  }

  /**
   * The first bytes through a CONNECT tunnel to `name`: a TLS ClientHello whose SNI is that
   * name, or an HTTP request for it (then guarded like any plaintext connection). Anything
   * else is refused, as on a transparent connection with a name rule (raw protocols need an
   * address rule). Nothing reaches the server before the decision.
   */
  private checkTunnel(conn: Conn, upstream: net.Socket, name: string, head: Buffer): void {
    const { client } = conn;
    const buf = new SniffBuffer();
    if (head.length > 0) buf.push(head);
    let need = 1;
    let decided = false;
    const refuse = (data: Record<string, unknown>): void => this.finish(conn, 'refused', data, 'reset');
    const examine = (final: boolean): void => {
      if (decided || conn.state !== 'open') return;
      const data = buf.view();
      if (data.length < need && !final) return;
      const tls = looksLikeTls(data);
      const r = tls ? examineTls(data) : examineHttp(data, 'any');
      if ('need' in r) {
        if (!final) { need = r.need; return; }
        decided = true;
        return refuse({ reason: tls ? 'no-sni' : 'no-host', detail: 'connection ended early' });
      }
      decided = true;
      client.off('data', onData);
      client.off('end', onEnd);
      this.clearTimer(conn);
      if (!r.ok) return refuse({ reason: r.reason, ...(r.detail ? { detail: r.detail } : {}) });
      const seen = validHostName(r.name) ?? r.name;
      if (seen !== name) return refuse({ reason: tls ? 'sni-mismatch' : 'host-changed', requestedName: seen.slice(0, 255) });
      client.pause();
      if (!tls) {
        conn.guard = new RequestGuard({ name, mode: 'transparent' });
        this.pipeGuarded(conn, upstream, conn.guard, data);
        return;
      }
      upstream.write(data);
      this.pipeInNode(conn, upstream);
    };
    const onData = (chunk: Buffer): void => { buf.push(chunk); examine(false); };
    const onEnd = (): void => examine(true);
    client.on('data', onData);
    client.on('end', onEnd);
    conn.timer = setTimeout(() => { if (!decided) { decided = true; refuse({ reason: 'sniff-timeout' }); } }, this.sniffTimeoutMs);
    examine(false);
    if (!decided) client.resume();
  }

  /**
   * Plaintext HTTP: the client's bytes go through the guard, in Node, for the life of the
   * connection (requests are small; a request naming another host cuts the connection). The
   * server's bytes are piped by Node, and once RELAY_AFTER_BYTES came back, relayed by the
   * kernel in that one direction, so a download runs at the relay's speed.
   */
  private pipeGuarded(conn: Conn, upstream: net.Socket, guard: RequestGuard, head: Buffer): void {
    const { client } = conn;
    let upgrade: UpgradeAnswerWatch | null = null;
    /** Passes what the guard let through; false once the connection is cut. */
    const forward = (r: GuardResult): boolean => {
      if (conn.state !== 'open') return false;
      for (const b of r.out) if (!upstream.write(b)) waitForDrain();
      if (r.refusal) {
        const { reason, detail, name } = r.refusal;
        this.finish(conn, 'cut', { reason, ...(detail ? { detail } : {}), ...(name ? { requestedName: name.slice(0, 255) } : {}) }, 'reset');
        return false;
      }
      if (guard.waitingForUpgrade && !upgrade) {
        // Nothing more from the client until the server says whether it switched.
        upgrade = new UpgradeAnswerWatch();
        client.pause();
      }
      return true;
    };
    let draining = false;
    const waitForDrain = (): void => {
      client.pause();
      if (draining) return;
      draining = true;
      upstream.once('drain', () => {
        draining = false;
        if (!upgrade && !conn.upload) resumeReading(client);
      });
    };
    let clientEnded = false;
    /** The client is done sending: so is the server's side, once what the guard holds went. */
    const endUpstream = (): void => {
      // Not while the relay writes a lent body there: the EOF goes after it (the loan's end calls this again).
      if (clientEnded && !upgrade && !conn.upload && conn.state === 'open' && !upstream.writableEnded) upstream.end();
    };
    /** lendBody() is handing Node's buffered bytes to the 'data' listener: no loan from there. */
    let takingBuffered = false;
    /**
     * A request body of known length, big enough to matter: lent to the kernel relay, which
     * moves exactly that many bytes and stops (the framing was checked; a body is not parsed),
     * so a plaintext upload is not held to Node's pace. The next request head is Node's again.
     */
    const lendBody = (): void => {
      if (!this.o.relay || conn.upload || upgrade || clientEnded || conn.state !== 'open' || guard.bodyLeft() < RELAY_AFTER_BYTES) return;
      const relay = this.o.relay();
      if (!relay) return;
      // What Node has already read is the guard's to pass on (body, and perhaps what follows it):
      // read() hands it to the 'data' listener below, which forwards it.
      client.pause();
      takingBuffered = true;
      try {
        while (conn.state === 'open' && client.read() !== null);
      } finally {
        takingBuffered = false;
      }
      if (conn.state !== 'open') return;
      const count = guard.bodyLeft();
      let h: Handoff | null = null;
      if (count > 0 && !upgrade) {
        try {
          h = relay.handOffCounted(client, upstream, count); // stops Node reading the client, in this tick
        } catch {
          h = null;
        }
      }
      if (!h) {
        if (!draining && !upgrade) client.resume();
        return;
      }
      guard.skipBody(count);
      const loan: UploadLoan = { handoff: h, cut: false, settled: Promise.resolve() };
      loan.settled = h.done.then((r) => r, () => null).then((r) => {
        conn.uploadRelayed += r?.aToB ?? 0;
        conn.upload = null;
        if (loan.cut || conn.state !== 'open') return;
        if (r === null || r.reset) {
          // Broken mid-body: the server must not take a short body for a whole one.
          conn.half?.cut();
          resetOrDestroy(client, true);
          resetOrDestroy(upstream, true);
          return;
        }
        // The count went (or the client ended first, and Node reads its EOF next).
        if (!draining) resumeReading(client);
        endUpstream(); // the client's EOF, if Node read it meanwhile
      });
      conn.upload = loan;
    };
    client.on('data', (chunk: Buffer) => { if (forward(guard.push(chunk)) && !takingBuffered) lendBody(); });
    client.on('end', () => {
      clientEnded = true;
      endUpstream();
    });
    upstream.on('data', (chunk: Buffer) => {
      if (upgrade) {
        const switched = upgrade.feed(chunk);
        if (switched !== null) {
          upgrade = null;
          if (!forward(guard.upgradeAnswered(switched))) return;
          if (!draining) client.resume();
          endUpstream();
        }
      }
    });
    upstream.pipe(client);
    if (!forward(guard.push(head))) return;
    if (client.readableEnded) { // half-closed while we were deciding
      clientEnded = true;
      endUpstream();
    } else if (!upgrade && !draining) {
      client.resume(); // paused since the sniff
      lendBody();
    }
    if (!this.o.relay) return;
    const watch = (): void => {
      if (conn.state !== 'open' || conn.half || upgrade || upstream.bytesRead < RELAY_AFTER_BYTES) return;
      upstream.off('data', watch);
      if (upstream.readableEnded || client.writableEnded || client.destroyed || upstream.destroyed) return;
      const relay = this.o.relay?.() ?? null;
      if (!relay) return;
      upstream.unpipe(client);
      conn.halfNodeBytesIn = client.bytesWritten - conn.replyBytes; // a CONNECT reply is the proxy's, not the server's
      let h: Handoff;
      try {
        h = relay.handOffOneWay(upstream, client);
      } catch {
        upstream.pipe(client);
        return;
      }
      conn.half = h;
      h.done.then((r) => this.halfDone(conn, r), () => this.halfDone(conn, null));
    };
    upstream.on('data', watch);
  }

  /**
   * The server's side of a guarded connection ended in the relay. A clean end: the client's
   * side finishes in Node (its EOF passed on), then both are closed. A reset: both go now.
   */
  private halfDone(conn: Conn, r: RelayResult | null): void {
    if (conn.state === 'done') return;
    const { client } = conn;
    const upstream = conn.upstream!;
    const end = (): void => {
      if (conn.state === 'done') return;
      if (conn.upload) {
        // A body still on loan to the relay: end it there first, and count what it moved.
        const loan = conn.upload;
        loan.cut = true;
        loan.handoff.cut();
        void loan.settled.then(end);
        return;
      }
      this.unregister(conn);
      conn.state = 'done';
      this.clearTimer(conn);
      client.destroy();
      upstream.destroy();
      this.emitConnect(conn, 'allow', {}, { aToB: upstream.bytesWritten + conn.uploadRelayed, bToA: conn.halfNodeBytesIn + (r?.aToB ?? 0) });
    };
    if (r === null || r.reset) {
      resetOrDestroy(client, true);
      resetOrDestroy(upstream, true);
      return end();
    }
    // Node's copy of the server socket is not read any more, so it never ends by itself.
    if (upstream.writableFinished || upstream.destroyed) return end();
    upstream.once('finish', end);
    upstream.once('close', end);
    if (client.readableEnded && !upstream.writableEnded) upstream.end();
  }

  /**
   * Node copies the first bytes itself: a short exchange (an API call) never pays for a
   * handoff. Once RELAY_AFTER_BYTES went through, the pair moves to the kernel relay, which
   * copies several times faster and never lets the bytes into this process.
   */
  private pipeInNode(conn: Conn, upstream: net.Socket): void {
    const { client } = conn;
    // socket.pipe: measured as fast as stream.pipeline here and, unlike pipeline, it leaves
    // a half-closed direction alone (allowHalfOpen) instead of tearing the pair down.
    upstream.pipe(client);
    if (client.readableEnded) upstream.end(); // the client half-closed while we were deciding
    else client.pipe(upstream);
    // A watched connection stays in Node: the kernel relay would take its bytes out of sight.
    if (!this.o.relay || conn.inspect) return;
    const watch = (): void => {
      if (conn.state !== 'open' || conn.handoff) return;
      if (upstream.bytesRead + client.bytesRead < RELAY_AFTER_BYTES) return;
      upstream.off('data', watch);
      client.off('data', watch);
      // Half-closed pairs stay with Node to the end: the relay takes two open streams.
      if (client.readableEnded || upstream.readableEnded || client.writableEnded || upstream.writableEnded) return;
      const relay = this.o.relay?.() ?? null;
      if (!relay) return;
      upstream.unpipe(client);
      client.unpipe(upstream);
      // What Node has written so far (queued bytes included); the relay counts the rest.
      conn.nodeBytes = { aToB: upstream.bytesWritten, bToA: client.bytesWritten - conn.replyBytes };
      let h: Handoff;
      try {
        h = relay.handOff(client, upstream);
      } catch {
        upstream.pipe(client);
        client.pipe(upstream);
        conn.nodeBytes = null;
        return;
      }
      conn.handoff = h;
      h.done.then(
        (r) => this.finishRelayed(conn, 'allow', {}, r),
        () => this.finishRelayed(conn, 'allow', { closedBy: 'relay-failed' }, null),
      );
    };
    // Registered after pipe()'s own listener: the chunk that crosses the line is written first.
    upstream.on('data', watch);
    client.on('data', watch);
  }

  // ---- ending ---------------------------------------------------------------------------------

  private onSocketClosed(conn: Conn): void {
    // A half-relayed connection ends when the relay's direction does (halfDone).
    if (conn.state === 'done' || conn.handoff || conn.half) return;
    if (conn.state !== 'open') {
      // The client went away before a decision: that ends the attempt.
      if (conn.clientClosed) this.refuse(conn, new Refusal('refused', 'client-closed'), false);
      return;
    }
    // A side that closes cleanly has finished both directions; the other one may still be
    // flushing what it was given, so wait for it. Errors tear both down (see the handlers).
    if (conn.clientClosed && conn.upstreamClosed) this.finish(conn, 'allow', {}, 'destroy');
  }

  private destroyBoth(conn: Conn): void {
    // The relay's copies would keep a half-relayed connection alive: they go too (halfDone follows).
    conn.half?.cut();
    conn.upload?.handoff.cut();
    conn.client.destroy();
    conn.upstream?.destroy();
  }

  /** Ends a connection at once (sandbox or proxy going away), with its event now. */
  private endNow(conn: Conn, reason: string): void {
    if (conn.state === 'open') this.finish(conn, 'allow', { closedBy: reason }, 'reset');
    else this.refuse(conn, new Refusal('refused', reason), false);
  }

  /** Refuses: the event now, then a reset (transparent) or an HTTP answer (explicit). */
  private refuse(conn: Conn, r: Refusal, answer: boolean): void {
    if (conn.state === 'done') return;
    const httpAnswer = answer && conn.mode === 'explicit' && !conn.client.destroyed ? explicitAnswer(conn, r) : null;
    this.finish(conn, r.verdict, { reason: r.reason, ...r.extra }, httpAnswer === null ? 'reset' : 'keep-client');
    if (httpAnswer !== null) {
      const { client } = conn;
      client.resume(); // drain what the client still sends, so closing does not reset the answer away
      client.end(httpAnswer);
      setTimeout(() => client.destroy(), LINGER_MS).unref();
    }
  }

  /**
   * The connection's one event. `how` ends its sockets: 'reset' for anything cut short, so
   * neither end mistakes a truncated stream for a complete one; 'keep-client' while an HTTP
   * answer is on its way to the client.
   */
  private finish(conn: Conn, verdict: Verdict, data: Record<string, unknown>, how: 'destroy' | 'reset' | 'keep-client'): void {
    if (conn.state === 'done') return;
    if (conn.upload) {
      // A request body on loan to the relay: cut it there, and finish once it is counted.
      const loan = conn.upload;
      loan.cut = true;
      loan.handoff.cut();
      void loan.settled.then(() => this.finish(conn, verdict, data, how));
      return;
    }
    if (conn.handoff) {
      // The relay holds the sockets: cut there; the event waits for its byte counts.
      const h = conn.handoff;
      this.unregister(conn);
      conn.state = 'done';
      h.cut();
      h.done.then((r) => this.emitConnect(conn, verdict, data, r), () => this.emitConnect(conn, verdict, data, null));
      return;
    }
    if (conn.half) {
      // The relay holds copies of both sockets: cut there, reset ours; the event waits for its count.
      const h = conn.half;
      const up = conn.upstream!;
      this.unregister(conn);
      conn.state = 'done';
      this.clearTimer(conn);
      h.cut();
      resetOrDestroy(up, how !== 'destroy');
      resetOrDestroy(conn.client, how !== 'destroy');
      const bytes = (r: RelayResult | null): RelayResult => ({ aToB: up.bytesWritten + conn.uploadRelayed, bToA: conn.halfNodeBytesIn + (r?.aToB ?? 0) });
      h.done.then((r) => this.emitConnect(conn, verdict, data, bytes(r)), () => this.emitConnect(conn, verdict, data, bytes(null)));
      return;
    }
    this.unregister(conn);
    conn.state = 'done';
    this.clearTimer(conn);
    if (verdict !== 'allow' && verdict !== 'cut') this.stats.refused++;
    const up = conn.upstream;
    if (up) resetOrDestroy(up, how !== 'destroy');
    if (how !== 'keep-client') resetOrDestroy(conn.client, how === 'reset');
    this.emitConnect(conn, verdict, data, up ? { aToB: up.bytesWritten + conn.uploadRelayed, bToA: up.bytesRead } : null);
  }

  /** A relayed connection ended by itself (both directions over, or an error): its event. */
  private finishRelayed(conn: Conn, verdict: Verdict, data: Record<string, unknown>, r: RelayResult | null): void {
    if (conn.state === 'done') return;
    this.unregister(conn);
    conn.state = 'done';
    this.emitConnect(conn, verdict, data, r);
  }

  private unregister(conn: Conn): void {
    const conns = this.bySandbox.get(conn.sandbox.sandboxId);
    if (conns?.delete(conn)) this.stats.active--;
    if (conns && conns.size === 0) this.bySandbox.delete(conn.sandbox.sandboxId);
  }

  /**
   * The connection's one event. `bytes`: what went each way (for a relayed one the relay's
   * counts, to which what Node moved before the handoff is added).
   */
  private emitConnect(conn: Conn, verdict: Verdict, data: Record<string, unknown>, bytes: RelayResult | null): void {
    const { name: dataName, address: dataAddress, ...rest } = data;
    const name = (dataName as string | undefined) ?? conn.name;
    const event: Record<string, unknown> = {
      ...(name ? { name } : {}),
      address: (dataAddress as string | undefined) ?? conn.address ?? conn.dst.address,
      port: conn.port,
      verdict,
      ...rest,
    };
    if (verdict === 'allow' || verdict === 'cut') {
      const before = conn.nodeBytes ?? { aToB: 0, bToA: 0 };
      event.bytesOut = (bytes?.aToB ?? 0) + (conn.handoff ? before.aToB : 0);
      event.bytesIn = (bytes?.bToA ?? 0) + (conn.handoff ? before.bToA : 0);
    }
    event.durationMs = Date.now() - conn.startedAt;
    event.mode = conn.mode;
    try {
      this.o.onEvent(conn.sandbox.sandboxId, 'net.connect', event);
    } catch {
      // The audit sink's failure is its own to report; the proxy carries on.
    }
  }

  private clearTimer(conn: Conn): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
  }
}

function resetOrDestroy(s: net.Socket, reset: boolean): void {
  if (s.destroyed) return;
  // resetAndDestroy needs a connected handle with no shutdown in flight (libuv refuses the
  // reset then, and Node leaks the handle): otherwise a plain destroy.
  if (reset && !s.connecting && !s.writableEnded) s.resetAndDestroy();
  else s.destroy();
}

type Examined = { need: number } | SniffResult;

function examineTls(data: Buffer): Examined {
  const r = parseClientHello(data);
  if (r.status === 'incomplete') {
    return r.need > TLS_SNIFF_LIMIT ? { ok: false, reason: 'no-sni', detail: 'ClientHello too long' } : { need: r.need };
  }
  if (r.status === 'invalid') return { ok: false, reason: 'no-sni', detail: r.reason };
  if (r.serverName === null) return { ok: false, reason: 'no-sni' };
  return { ok: true, data, name: r.serverName };
}

/** Transparent mode: the Host of an HTTP/1.x request. Proxy mode: any complete request head. */
function examineHttp(data: Buffer, accept: 'any' | 'http'): Examined {
  const noName = accept === 'http' ? 'bad-request' : 'no-host';
  const r = parseRequestHead(data);
  if (r.status === 'incomplete') return { need: data.length + 1 };
  if (r.status === 'invalid') return { ok: false, reason: noName, detail: r.reason };
  if (accept === 'http') return { ok: true, data, name: '' };
  // CONNECT means something only to a proxy: sent to an origin, it would ask that server to tunnel onwards.
  if (r.head.method === 'CONNECT') return { ok: false, reason: 'bad-request', detail: 'CONNECT on a transparent connection' };
  const host = hostOfRequest(r.head);
  return 'reason' in host ? { ok: false, ...host } : { ok: true, data, name: host.name };
}

function explicitAnswer(conn: Conn, r: Refusal): string {
  const [status, text] =
    r.reason === 'bad-request' ? [400, 'Bad Request']
      : r.reason === 'sniff-timeout' ? [408, 'Request Timeout']
        : r.reason === 'connect-failed' || r.reason === 'connect-timeout' ? [502, 'Bad Gateway']
          : [403, 'Forbidden'];
  const what = conn.name ?? conn.address ?? (r.extra.name as string | undefined) ?? null;
  const body = `airlock: ${what ? `egress to ${what}:${conn.port} ` : 'request '}refused: ${r.reason}\n`;
  return `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
