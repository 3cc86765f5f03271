import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { exfilFlags, QueryRateLimiter } from './dns-exfil.js';
import type { EgressPolicy, NameVerdict } from './egress-policy.js';
import type { DnsUpstream } from './dns-upstream.js';

/**
 * A sandbox's only resolver, on its gateway address. It answers A questions for the names the
 * sandbox's policy allows (through the shared DnsUpstream), NXDOMAIN for every other name
 * without asking anyone (a query for attacker.example must not leave the host), and nothing
 * for other record types: TXT/MX/ANY answers are a tunnel's download channel. Every query is
 * an audit event, except under a flood, which becomes one summary event per second. Over the
 * rate, only what carries nothing out and costs next to nothing is still answered (an allowed
 * name's cached address; no AAAA for it); everything else is REFUSED.
 */

export type DnsVerdict = NameVerdict | 'rate-limited';

export interface SandboxDnsServerOptions {
  sandboxId: string;
  /** Port 0 picks one free port for both UDP and TCP (tests). */
  listen: { host: string; port: number };
  /** Read on every query: a live policy change takes effect at once. */
  policy: () => EgressPolicy;
  upstream: DnsUpstream;
  onEvent: (sandboxId: string, type: 'net.dns', data: Record<string, unknown>) => void;
  rateLimit?: { perSecond: number; burst: number };
  /** Idle TCP connections are closed after this long; default TCP_IDLE_MS. */
  tcpIdleMs?: number;
  /**
   * A name the policy does not allow (nor deny): null to refuse it now, else the decision of
   * an approval (approvals.egressOutsideAllowlist: ask). The question is held for a while.
   */
  askName?: (name: string) => Promise<{ approved: boolean; reason?: string }> | null;
}

export interface SandboxDnsServerStats {
  /** Well-formed queries received (UDP and TCP), rate-limited ones included. */
  queries: number;
  /** A questions for allowed names, asked of the upstream (or its cache). */
  forwarded: number;
  /** Answered NXDOMAIN because the policy denies or does not allow the name. */
  refusedNames: number;
  rateLimited: number;
  /** Of those, answered all the same: an allowed name's cached answer (or its empty AAAA). */
  answeredInFlood: number;
  /** Packets dropped without an answer: undecodable, or not a query. */
  malformed: number;
  /** TCP connections closed at once because MAX_TCP_CONNECTIONS were open. */
  tcpRejected: number;
  /** Queries dropped because answering them failed inside Airlock (a bug, never the client's doing). */
  errors: number;
}

export const MAX_TCP_CONNECTIONS = 16;
export const TCP_IDLE_MS = 10_000;
/** Classic DNS UDP limit; we send no EDNS OPT, so clients expect no more. */
export const UDP_REPLY_MAX = 512;
const TCP_REPLY_MAX = 65_535;
/** Queries one TCP connection may have in flight before we stop reading from it. */
const TCP_PIPELINE = 32;
/** More A records than this in one reply is no real service; it only bloats replies and events. */
const MAX_ANSWERS = 64;
const HEADER = 12;
const FLOOD_REPORT_MS = 1_000;
const EVENT_NAME_MAX = 255;
/**
 * How long a question waits for an approval before SERVFAIL ("try again"): a little longer than
 * the 2 s x 2 attempts resolv.conf gives clients, whose retries join the same request.
 */
export const APPROVAL_HOLD_MS = 5_000;
/** Questions held for approvals at once; more are answered SERVFAIL at once. */
const MAX_HELD = 64;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = keyof typeof RCODE;
const QTYPE_A = 1;
const QTYPE_AAAA = 28;
const QCLASS_IN = 1;

interface Reply {
  id: number;
  opcode: number;
  rd: boolean;
  rcode: Rcode;
  /** The question section exactly as the client sent it, or null when it had none we echo. */
  question: Buffer | null;
  answers: dnsPacket.Answer[];
}

/** The question as it sits on the wire: we echo its bytes, never a re-encoding of them. */
interface WireQuestion {
  bytes: Buffer;
  /** Labels joined with '.', original case; null when a label holds a byte no host name has. */
  name: string | null;
  qtype: number;
  qclass: number;
}

/** Reads the single question at offset 12; null when it is not a plain, uncompressed one. */
function readQuestion(msg: Buffer): WireQuestion | null {
  let off = HEADER;
  const labels: string[] = [];
  let valid = true;
  for (;;) {
    const len = msg[off];
    if (len === undefined || (len & 0xc0) !== 0) return null; // a pointer in a query's only name is nonsense
    off += 1;
    if (len === 0) break;
    if (off + len > msg.length) return null;
    const label = msg.toString('latin1', off, off + len);
    if (!/^[A-Za-z0-9_-]+$/.test(label)) valid = false;
    labels.push(label);
    off += len;
  }
  if (off + 4 > msg.length) return null;
  return {
    bytes: Buffer.from(msg.subarray(HEADER, off + 4)),
    name: valid && labels.length > 0 ? labels.join('.') : null,
    qtype: msg.readUInt16BE(off),
    qclass: msg.readUInt16BE(off + 2),
  };
}

function encodeReply(r: Reply, max: number): Buffer {
  const answers = r.answers.length > 0 ? dnsPacket.encode({ type: 'response', questions: [], answers: r.answers }).subarray(HEADER) : Buffer.alloc(0);
  const question = r.question ?? Buffer.alloc(0);
  const truncated = HEADER + question.length + answers.length > max;
  const body = truncated ? [question] : [question, answers];
  const header = Buffer.alloc(HEADER);
  header.writeUInt16BE(r.id, 0);
  const flags = 0x8000 | ((r.opcode & 0xf) << 11) | (truncated ? 0x0200 : 0) | (r.rd ? 0x0100 : 0) | 0x0080 | RCODE[r.rcode];
  header.writeUInt16BE(flags, 2);
  header.writeUInt16BE(r.question ? 1 : 0, 4);
  header.writeUInt16BE(truncated ? 0 : r.answers.length, 6);
  return Buffer.concat([header, ...body]);
}

export class SandboxDnsServer {
  readonly stats: SandboxDnsServerStats = { queries: 0, forwarded: 0, refusedNames: 0, rateLimited: 0, answeredInFlood: 0, malformed: 0, tcpRejected: 0, errors: 0 };
  private readonly limiter: QueryRateLimiter;
  private udp: dgram.Socket | null = null;
  private tcp: net.Server | null = null;
  private readonly tcpClients = new Set<net.Socket>();
  private port = 0;
  private started = false;
  private closed = false;
  private closing: Promise<void> | null = null;
  /** Rate-limited queries not yet reported, and the timer that will report them. */
  private dropped = 0;
  private answeredInFlood = 0;
  private floodTimer: NodeJS.Timeout | null = null;
  private held = 0;

  constructor(private readonly o: SandboxDnsServerOptions) {
    this.limiter = new QueryRateLimiter(o.rateLimit ?? {});
  }

  /** Where it listens (the real port once started, when 0 was asked for). */
  get address(): { host: string; port: number } {
    return { host: this.o.listen.host, port: this.port || this.o.listen.port };
  }

  async start(): Promise<void> {
    if (this.started || this.closed) throw new Error(`DNS resolver for sandbox ${this.o.sandboxId} was already started`);
    this.started = true;
    const { host, port } = this.o.listen;
    // With port 0, UDP picks a port and TCP must get the same one; another process may hold it.
    const tries = port === 0 ? 10 : 1;
    for (let i = 1; ; i++) {
      let stage = 'udp';
      try {
        this.udp = await this.bindUdp(host, port);
        this.port = this.udp.address().port;
        stage = 'tcp';
        this.tcp = await this.listenTcp(host, this.port);
        return;
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        await this.closeListeners();
        if (i < tries && err.code === 'EADDRINUSE') continue;
        this.closed = true;
        throw new Error(`DNS resolver for sandbox ${this.o.sandboxId} cannot listen on ${host}:${port} (${stage}): ${err.message}`);
      }
    }
  }

  /** Stops listening, drops TCP clients, reports any unreported flood. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.reportFlood();
      await this.closeListeners();
    })();
    return this.closing;
  }

  private bindUdp(host: string, port: number): Promise<dgram.Socket> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket({ type: 'udp4' });
      const onError = (e: Error): void => { try { socket.close(); } catch { /* not bound */ } reject(e); };
      socket.once('error', onError);
      socket.bind({ address: host, port, exclusive: true }, () => {
        socket.off('error', onError);
        // After bind, errors (an ICMP-triggered send failure) must not crash the engine.
        socket.on('error', () => {});
        socket.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) => {
          void this.handle(msg).then((reply) => {
            if (reply && !this.closed) socket.send(encodeReply(reply, UDP_REPLY_MAX), rinfo.port, rinfo.address, () => {});
          });
        });
        resolve(socket);
      });
    });
  }

  private listenTcp(host: string, port: number): Promise<net.Server> {
    return new Promise((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: true }, (sock) => this.acceptTcp(sock));
      server.once('error', reject);
      server.listen({ host, port, exclusive: true }, () => {
        server.off('error', reject);
        server.on('error', () => {});
        resolve(server);
      });
    });
  }

  private async closeListeners(): Promise<void> {
    for (const sock of this.tcpClients) sock.destroy();
    this.tcpClients.clear();
    const tcp = this.tcp;
    const udp = this.udp;
    this.tcp = null;
    this.udp = null;
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
    if (udp) await new Promise<void>((r) => { try { udp.close(() => r()); } catch { r(); } });
  }

  /** DNS over TCP: 2-byte length framing, bounded connections, pipelining and idle time. */
  private acceptTcp(sock: net.Socket): void {
    if (this.closed || this.tcpClients.size >= MAX_TCP_CONNECTIONS) {
      this.stats.tcpRejected++;
      sock.destroy();
      return;
    }
    this.tcpClients.add(sock);
    sock.setNoDelay(true);
    sock.setTimeout(this.o.tcpIdleMs ?? TCP_IDLE_MS, () => sock.destroy());
    sock.on('error', () => {});
    sock.on('close', () => this.tcpClients.delete(sock));
    let buf: Buffer = Buffer.alloc(0);
    let pending = 0;
    let ended = false;
    const pump = (): void => {
      while (pending < TCP_PIPELINE && buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len < HEADER) { // cannot be a DNS message: the stream is out of step, give up on it
          this.stats.malformed++;
          sock.destroy();
          return;
        }
        if (buf.length < 2 + len) break;
        const msg = Buffer.from(buf.subarray(2, 2 + len));
        buf = buf.subarray(2 + len);
        pending++;
        void this.handle(msg).then((reply) => {
          pending--;
          if (reply && !sock.destroyed && !this.closed) {
            const out = encodeReply(reply, TCP_REPLY_MAX);
            const framed = Buffer.alloc(2 + out.length);
            framed.writeUInt16BE(out.length, 0);
            out.copy(framed, 2);
            sock.write(framed);
          }
          if (sock.isPaused() && !ended) sock.resume();
          pump();
        });
      }
      if (pending >= TCP_PIPELINE) sock.pause();
      if (ended && pending === 0 && !sock.destroyed) sock.end();
    };
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      pump();
    });
    sock.on('end', () => { ended = true; pump(); });
  }

  /** One message in, the reply out (null: drop it). Never rejects. */
  private async handle(msg: Buffer): Promise<Reply | null> {
    try {
      return await this.answer(msg);
    } catch {
      this.stats.errors++;
      return null;
    }
  }

  private async answer(msg: Buffer): Promise<Reply | null> {
    let packet: dnsPacket.DecodedPacket;
    try {
      if (msg.length < HEADER) throw new Error('short');
      packet = dnsPacket.decode(msg);
    } catch {
      this.stats.malformed++;
      return null;
    }
    // Never answer a response: two resolvers must not be able to ping-pong through us.
    if (packet.flag_qr) {
      this.stats.malformed++;
      return null;
    }
    this.stats.queries++;
    const flags = msg.readUInt16BE(2);
    const qdcount = msg.readUInt16BE(4);
    const wire = qdcount === 1 ? readQuestion(msg) : null;
    const reply: Reply = { id: msg.readUInt16BE(0), opcode: (flags >> 11) & 0xf, rd: (flags & 0x0100) !== 0, rcode: 'NOERROR', question: wire?.bytes ?? null, answers: [] };
    if (!this.limiter.take()) {
      this.stats.rateLimited++;
      // A client that opens many connections asks for the same allowed names again and again:
      // those answers come from the cache, so no upstream hears of them and no event is written.
      // Anything that would go out (a cache miss, under a wildcard too) or needs deciding waits.
      const cached = wire && reply.opcode === 0 && wire.qclass === QCLASS_IN && wire.name !== null ? this.cachedAnswer(reply, wire.name, wire.qtype) : null;
      if (cached) {
        this.stats.answeredInFlood++;
        this.noteFlood(true);
        return cached;
      }
      this.noteFlood(false);
      return { ...reply, rcode: 'REFUSED' };
    }
    const decoded = packet.questions?.[0];
    const qtype = decoded?.type ?? (wire ? `TYPE${wire.qtype}` : '');
    const rawName = wire?.name ?? decoded?.name ?? '';
    const name = rawName.toLowerCase().replace(/\.$/, '');
    let approval: string | undefined;
    const event = (verdict: DnsVerdict, rcode: Rcode, answers: string[] = []): void => {
      const data: Record<string, unknown> = { name: name.slice(0, EVENT_NAME_MAX), qtype, verdict, rcode, answers };
      if (approval !== undefined) data.approval = approval;
      const f: string[] = rawName ? exfilFlags(rawName) : [];
      if (f.length > 0) data.flags = f;
      this.emit(data);
    };

    if (reply.opcode !== 0) { event('not-allowed', 'NOTIMP'); return { ...reply, rcode: 'NOTIMP' }; }
    if (qdcount !== 1 || !wire) { event('not-allowed', 'FORMERR'); return { ...reply, question: null, rcode: 'FORMERR' }; }
    if (wire.qclass !== QCLASS_IN) { event('not-allowed', 'NOTIMP'); return { ...reply, rcode: 'NOTIMP' }; }
    if (wire.name === null || name.length > 253) {
      this.stats.refusedNames++;
      event('not-allowed', 'NXDOMAIN');
      return { ...reply, rcode: 'NXDOMAIN' };
    }

    let verdict = this.o.policy().checkName(name, null);
    // Only what an approval could allow: an address question for a dotted name (never
    // "localhost", "wpad", search-domain noise or TXT/MX questions, which would only page a person).
    if (verdict === 'not-allowed' && this.o.askName && (wire.qtype === QTYPE_A || wire.qtype === QTYPE_AAAA) && name.includes('.')) {
      const asked = await this.holdForApproval(name);
      if (asked === 'pending') { event('not-allowed', 'SERVFAIL'); return { ...reply, rcode: 'SERVFAIL' }; }
      if (asked !== 'not-asked') approval = asked;
      verdict = this.o.policy().checkName(name, null); // approved: the host is on the allowlist now
    }
    if (verdict !== 'allow') {
      this.stats.refusedNames++;
      event(verdict, 'NXDOMAIN');
      return { ...reply, rcode: 'NXDOMAIN' };
    }
    // Sandboxes have IPv4 only, and every other type is a channel a tunnel would use.
    if (wire.qtype !== QTYPE_A) { event('allow', 'NOERROR'); return reply; }

    this.stats.forwarded++;
    const res = await this.o.upstream.resolve4(name);
    if (res.rcode === 'NXDOMAIN') { event('allow', 'NXDOMAIN'); return { ...reply, rcode: 'NXDOMAIN' }; }
    if (res.rcode !== 'NOERROR') { event('allow', 'SERVFAIL'); return { ...reply, rcode: 'SERVFAIL' }; }
    const addresses = res.addresses.slice(0, MAX_ANSWERS);
    const chain = [name, ...(res.cname ?? [])];
    const answers: dnsPacket.Answer[] = [];
    for (let i = 1; i < chain.length; i++) answers.push({ type: 'CNAME', class: 'IN', name: chain[i - 1]!, ttl: res.ttl, data: chain[i]! });
    for (const ip of addresses) answers.push({ type: 'A', class: 'IN', name: chain[chain.length - 1]!, ttl: res.ttl, data: ip });
    event('allow', 'NOERROR', addresses);
    return { ...reply, answers };
  }

  /** 'approved', why not ('denied', 'expired', 'pending-limit', …), or 'pending' when still undecided after the hold. */
  private async holdForApproval(name: string): Promise<string> {
    let asked: Promise<{ approved: boolean; reason?: string }> | null;
    try {
      asked = this.o.askName!(name);
    } catch {
      asked = null;
    }
    if (asked === null) return 'not-asked';
    if (this.held >= MAX_HELD) return 'pending';
    this.held++;
    let timer: NodeJS.Timeout | undefined;
    try {
      const hold = new Promise<'pending'>((resolve) => { timer = setTimeout(() => resolve('pending'), APPROVAL_HOLD_MS); });
      const r = await Promise.race([asked.then((a) => (a.approved ? 'approved' : a.reason ?? 'denied'), () => 'error'), hold]);
      return this.closed ? 'closed' : r;
    } finally {
      clearTimeout(timer);
      this.held--;
    }
  }

  private emit(data: Record<string, unknown>): void {
    try {
      this.o.onEvent(this.o.sandboxId, 'net.dns', data);
    } catch {
      // The audit sink failing must not take the resolver down; the sink reports its own errors.
    }
  }

  /** An allowed name's answer from the cache alone (A), or its empty AAAA; null for anything else. */
  private cachedAnswer(reply: Reply, rawName: string, qtype: number): Reply | null {
    const name = rawName.toLowerCase().replace(/\.$/, '');
    if (name.length > 253 || (qtype !== QTYPE_A && qtype !== QTYPE_AAAA)) return null;
    if (this.o.policy().checkName(name, null) !== 'allow') return null;
    if (qtype === QTYPE_AAAA) return reply;
    const res = this.o.upstream.peek4(name);
    if (!res || res.rcode !== 'NOERROR') return null;
    const chain = [name, ...(res.cname ?? [])];
    const answers: dnsPacket.Answer[] = [];
    for (let i = 1; i < chain.length; i++) answers.push({ type: 'CNAME', class: 'IN', name: chain[i - 1]!, ttl: res.ttl, data: chain[i]! });
    for (const ip of res.addresses.slice(0, MAX_ANSWERS)) answers.push({ type: 'A', class: 'IN', name: chain[chain.length - 1]!, ttl: res.ttl, data: ip });
    return { ...reply, answers };
  }

  /** A flood becomes one event per second, not one per query. */
  private noteFlood(answered: boolean): void {
    if (answered) this.answeredInFlood++;
    else this.dropped++;
    if (this.floodTimer || this.closed) return;
    this.floodTimer = setTimeout(() => this.reportFlood(), FLOOD_REPORT_MS);
    this.floodTimer.unref();
  }

  private reportFlood(): void {
    if (this.floodTimer) clearTimeout(this.floodTimer);
    this.floodTimer = null;
    if (this.dropped === 0 && this.answeredInFlood === 0) return;
    const dropped = this.dropped;
    const answered = this.answeredInFlood;
    this.dropped = 0;
    this.answeredInFlood = 0;
    this.emit({ verdict: 'rate-limited', rcode: 'REFUSED', dropped, ...(answered > 0 ? { answeredFromCache: answered } : {}), flags: ['flood'] });
  }
}
