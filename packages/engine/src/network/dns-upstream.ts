import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { normalizeName } from './egress-policy.js';

/**
 * The one place Airlock asks the outside world for addresses: A questions only, to one
 * configured resolver, with a shared cache. The per-sandbox DNS servers and the egress proxy
 * both resolve through the same instance, so a name the sandbox resolved is the name the proxy
 * dials (same answer while cached). Never throws for network trouble: that is SERVFAIL.
 */

export type ResolutionRcode = 'NOERROR' | 'NXDOMAIN' | 'SERVFAIL' | 'REFUSED';

export interface Resolution {
  rcode: ResolutionRcode;
  /** IPv4 addresses reached from the name, through the CNAME chain when there is one. */
  addresses: string[];
  /** Seconds the answer stays valid (what is left of it, for a cached answer). */
  ttl: number;
  /** The CNAME targets followed, in order, when the name was an alias. */
  cname?: string[];
}

export interface DnsUpstreamOptions {
  upstream: { host: string; port: number };
  /** Per try, UDP or TCP. */
  timeoutMs?: number;
  /** UDP tries before giving up with SERVFAIL. */
  attempts?: number;
  minTtlSeconds?: number;
  maxTtlSeconds?: number;
  /** How long NXDOMAIN (and "no A records") is remembered. */
  negativeTtlSeconds?: number;
  maxCacheEntries?: number;
}

export interface DnsUpstreamStats {
  /** Exchanges sent upstream (UDP and TCP). */
  queries: number;
  cacheHits: number;
  timeouts: number;
  tcpFallbacks: number;
  /** Packets that did not answer our question (wrong id, question or garbage): dropped. */
  ignored: number;
}

/** Our EDNS0 buffer size: the 2020 DNS flag day value, avoids fragmentation. */
const EDNS_UDP_SIZE = 1232;
const MAX_CNAME_HOPS = 16;
/** Fewer than this many bytes cannot hold a DNS header. */
const DNS_HEADER = 12;

const NAME_RE = /^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$/;

interface CacheEntry { res: Resolution; expiresAt: number }

type Exchange = dnsPacket.DecodedPacket | 'truncated' | null;

function servfail(): Resolution {
  return { rcode: 'SERVFAIL', addresses: [], ttl: 0 };
}

function copy(r: Resolution, ttl = r.ttl): Resolution {
  const out: Resolution = { rcode: r.rcode, addresses: [...r.addresses], ttl };
  if (r.cname) out.cname = [...r.cname];
  return out;
}

export class DnsUpstream {
  readonly stats: DnsUpstreamStats = { queries: 0, cacheHits: 0, timeouts: 0, tcpFallbacks: 0, ignored: 0 };
  private readonly upstream: { host: string; port: number };
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly minTtl: number;
  private readonly maxTtl: number;
  private readonly negativeTtl: number;
  private readonly maxEntries: number;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<Resolution>>();
  /** Every open exchange, so close() can end it now. */
  private readonly open = new Set<() => void>();
  private closed = false;

  constructor(o: DnsUpstreamOptions) {
    if (!net.isIPv4(o.upstream.host)) throw new Error(`DNS upstream must be an IPv4 address, got ${o.upstream.host}`);
    if (!(Number.isInteger(o.upstream.port) && o.upstream.port >= 1 && o.upstream.port <= 65_535)) {
      throw new Error(`DNS upstream port must be 1-65535, got ${o.upstream.port}`);
    }
    this.upstream = { ...o.upstream };
    this.timeoutMs = o.timeoutMs ?? 2_000;
    this.attempts = Math.max(1, o.attempts ?? 2);
    this.minTtl = o.minTtlSeconds ?? 5;
    this.maxTtl = Math.max(this.minTtl, o.maxTtlSeconds ?? 300);
    this.negativeTtl = o.negativeTtlSeconds ?? 10;
    this.maxEntries = Math.max(1, o.maxCacheEntries ?? 10_000);
  }

  /** The A records of `name` (any case, trailing dot allowed). Names that are not host names: REFUSED. */
  resolve4(name: string): Promise<Resolution> {
    const key = normalizeName(name);
    if (key.length > 253 || !NAME_RE.test(key)) return Promise.resolve({ rcode: 'REFUSED', addresses: [], ttl: 0 });
    if (this.closed) return Promise.resolve(servfail());
    const hit = this.cached(key, Date.now());
    if (hit) {
      this.stats.cacheHits++;
      return Promise.resolve(hit);
    }
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.lookup(key).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    // Each caller gets its own copy: nobody can edit another caller's (or the cache's) answer.
    return pending.then((r) => copy(r));
  }

  /** Ends every exchange in flight (they answer SERVFAIL) and empties the cache. Idempotent. */
  close(): void {
    this.closed = true;
    for (const end of [...this.open]) end();
    this.cache.clear();
  }

  /** The cached answer for an A question, if there is one: nothing is asked of anyone. */
  peek4(name: string): Resolution | null {
    const key = normalizeName(name);
    return this.closed ? null : this.cached(key, Date.now());
  }

  private cached(key: string, now: number): Resolution | null {
    const e = this.cache.get(key);
    if (!e) return null;
    if (e.expiresAt <= now) {
      this.cache.delete(key);
      return null;
    }
    return copy(e.res, Math.max(1, Math.ceil((e.expiresAt - now) / 1000)));
  }

  private remember(key: string, res: Resolution): void {
    if (this.closed || res.ttl <= 0 || (res.rcode !== 'NOERROR' && res.rcode !== 'NXDOMAIN')) return;
    this.cache.delete(key);
    while (this.cache.size >= this.maxEntries) {
      const oldest = this.cache.keys().next().value;
      if (oldest === undefined) break;
      this.cache.delete(oldest);
    }
    this.cache.set(key, { res: copy(res), expiresAt: Date.now() + res.ttl * 1000 });
  }

  private async lookup(name: string): Promise<Resolution> {
    try {
      return await this.exchange(name);
    } catch {
      return servfail(); // never reject: callers treat every failure as SERVFAIL anyway
    }
  }

  private async exchange(name: string): Promise<Resolution> {
    for (let i = 0; i < this.attempts && !this.closed; i++) {
      let answer = await this.overUdp(name);
      if (answer === 'truncated' && !this.closed) {
        this.stats.tcpFallbacks++;
        answer = await this.overTcp(name);
      }
      if (answer === null || answer === 'truncated' || this.closed) continue;
      const res = this.toResolution(answer, name);
      this.remember(name, res);
      return res;
    }
    return servfail();
  }

  private query(id: number, name: string): Buffer {
    return dnsPacket.encode({
      type: 'query',
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name, class: 'IN' }],
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }],
    });
  }

  /** The packet when it answers exactly our question (id, name, type, class), else null. */
  private match(msg: Buffer, id: number, name: string): dnsPacket.DecodedPacket | null {
    if (msg.length < DNS_HEADER || msg.readUInt16BE(0) !== id) return null;
    let p: dnsPacket.DecodedPacket;
    try {
      p = dnsPacket.decode(msg);
    } catch {
      return null;
    }
    const q = p.questions;
    if (!p.flag_qr || q?.length !== 1) return null;
    const only = q[0]!;
    if (normalizeName(only.name) !== name || only.type !== 'A' || (only.class ?? 'IN') !== 'IN') return null;
    return p;
  }

  /**
   * One UDP exchange from a fresh socket: a new random source port per query (the kernel
   * picks one at connect) and a random id. The socket is connected, so the kernel drops
   * datagrams from anyone but the upstream; the id and question check the rest.
   */
  private overUdp(name: string): Promise<Exchange> {
    const id = randomInt(0, 65_536);
    const message = this.query(id, name);
    const socket = dgram.createSocket('udp4');
    this.stats.queries++;
    return new Promise<Exchange>((resolve) => {
      let done = false;
      const finish = (v: Exchange): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.open.delete(end);
        try { socket.close(); } catch { /* already closed */ }
        resolve(v);
      };
      const end = (): void => finish(null);
      this.open.add(end);
      const timer = setTimeout(() => { this.stats.timeouts++; finish(null); }, this.timeoutMs);
      socket.on('error', end);
      socket.on('message', (msg: Buffer) => {
        const p = this.match(msg, id, name);
        if (!p) { this.stats.ignored++; return; }
        finish(p.flag_tc ? 'truncated' : p);
      });
      socket.connect(this.upstream.port, this.upstream.host, () => {
        if (done) return;
        socket.send(message, (err) => { if (err) end(); });
      });
    });
  }

  /** One TCP exchange (2-byte length framing), used when the UDP answer was truncated. */
  private overTcp(name: string): Promise<Exchange> {
    const id = randomInt(0, 65_536);
    const message = this.query(id, name);
    const framed = Buffer.alloc(2 + message.length);
    framed.writeUInt16BE(message.length, 0);
    message.copy(framed, 2);
    this.stats.queries++;
    return new Promise<Exchange>((resolve) => {
      let done = false;
      let buf = Buffer.alloc(0);
      const socket = net.connect({ host: this.upstream.host, port: this.upstream.port, family: 4 });
      const finish = (v: Exchange): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.open.delete(end);
        socket.destroy();
        resolve(v);
      };
      const end = (): void => finish(null);
      this.open.add(end);
      const timer = setTimeout(() => { this.stats.timeouts++; finish(null); }, this.timeoutMs);
      socket.on('error', end);
      socket.on('close', end);
      socket.on('connect', () => socket.write(framed));
      socket.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        while (buf.length >= 2) {
          const len = buf.readUInt16BE(0);
          if (buf.length < 2 + len) return;
          const msg = buf.subarray(2, 2 + len);
          buf = buf.subarray(2 + len);
          const p = this.match(msg, id, name);
          // A truncated answer over TCP is useless; treat it as no answer.
          if (p) { finish(p.flag_tc ? null : p); return; }
          this.stats.ignored++;
        }
      });
    });
  }

  private toResolution(p: dnsPacket.DecodedPacket, name: string): Resolution {
    const rcode = (p as { rcode?: string }).rcode;
    if (rcode === 'NXDOMAIN') return { rcode: 'NXDOMAIN', addresses: [], ttl: this.negativeTtl };
    if (rcode === 'REFUSED') return { rcode: 'REFUSED', addresses: [], ttl: 0 };
    if (rcode !== 'NOERROR') return servfail();
    const answers = (p.answers ?? []).filter((a) => a.type !== 'OPT' && ((a as { class?: string }).class ?? 'IN') === 'IN');
    const cname: string[] = [];
    const addresses: string[] = [];
    let ttl = Infinity;
    let current = name;
    for (let hop = 0; hop <= MAX_CNAME_HOPS; hop++) {
      const here = answers.filter((a) => normalizeName(a.name) === current);
      for (const a of here) {
        if (a.type === 'A' && typeof a.data === 'string' && net.isIPv4(a.data) && !addresses.includes(a.data)) {
          addresses.push(a.data);
          ttl = Math.min(ttl, a.ttl ?? 0);
        }
      }
      if (addresses.length > 0) break;
      const alias = here.find((a) => a.type === 'CNAME');
      if (!alias || alias.type !== 'CNAME' || typeof alias.data !== 'string') break;
      const target = normalizeName(alias.data);
      if (target === name || cname.includes(target)) break; // a CNAME loop
      cname.push(target);
      ttl = Math.min(ttl, alias.ttl ?? 0);
      current = target;
    }
    const res: Resolution = addresses.length > 0
      ? { rcode: 'NOERROR', addresses, ttl: Math.min(this.maxTtl, Math.max(this.minTtl, ttl)) }
      : { rcode: 'NOERROR', addresses: [], ttl: this.negativeTtl };
    if (cname.length > 0) res.cname = cname;
    return res;
  }
}
