import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, before, beforeEach, describe, test } from 'node:test';
import dnsPacket from 'dns-packet';
import { exfilFlags, QueryRateLimiter, shannonEntropy } from '../src/network/dns-exfil.js';
import { SandboxDnsServer } from '../src/network/dns-server.js';
import { DnsUpstream } from '../src/network/dns-upstream.js';
import { EgressPolicy } from '../src/network/egress-policy.js';

/* ------------------------------------------------------------------ helpers */

function base32(b: Buffer): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of b) {
    value = ((value << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function frame(msg: Buffer): Buffer {
  const out = Buffer.alloc(2 + msg.length);
  out.writeUInt16BE(msg.length, 0);
  msg.copy(out, 2);
  return out;
}

/** Splits a TCP byte stream into DNS messages. */
function deframer(onMessage: (msg: Buffer) => void): (chunk: Buffer) => void {
  let buf: Buffer = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
      const len = buf.readUInt16BE(0);
      onMessage(buf.subarray(2, 2 + len));
      buf = buf.subarray(2 + len);
    }
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Binds UDP and TCP on the same free port of 127.0.0.1. */
async function bindPair(onUdp: (s: dgram.Socket) => void, onTcp: (c: net.Socket) => void): Promise<{ udp: dgram.Socket; tcp: net.Server; port: number }> {
  for (let i = 0; i < 10; i++) {
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
    const port = udp.address().port;
    const tcp = net.createServer(onTcp);
    const ok = await new Promise<boolean>((r) => {
      tcp.once('error', () => r(false));
      tcp.listen(port, '127.0.0.1', () => r(true));
    });
    if (ok) {
      onUdp(udp);
      return { udp, tcp, port };
    }
    udp.close();
  }
  throw new Error('no free port pair');
}

/* ------------------------------------------------------------ fake upstream */

interface Seen { name: string; type: string; proto: 'udp' | 'tcp' }

/**
 * A real DNS server on 127.0.0.1 playing "the internet's resolver". Names:
 *   a.test (A 192.0.2.1, ttl 60)     multi.test (2 A)      short-ttl.test (ttl 1)
 *   alias.test → mid.test → end.test (A 192.0.2.9)          missing.test (NXDOMAIN)
 *   big.test (UDP: TC; TCP: 40 A)    slow.test (never)      fail.test (SERVFAIL)
 *   spoof.test (a wrong id, then a wrong question, then the real answer)
 *   delay.test (answers after 150 ms)     *.ok.test (A 192.0.2.50)   anything else: NXDOMAIN
 */
class FakeUpstream {
  readonly seen: Seen[] = [];
  port = 0;
  private udp!: dgram.Socket;
  private tcp!: net.Server;
  private readonly conns = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();

  async start(): Promise<void> {
    const pair = await bindPair(
      (udp) => udp.on('message', (msg, rinfo) => this.onQuery(msg, 'udp', (out) => udp.send(out, rinfo.port, rinfo.address))),
      (conn) => {
        this.conns.add(conn);
        conn.on('close', () => this.conns.delete(conn));
        conn.on('error', () => {});
        conn.on('data', deframer((msg) => this.onQuery(msg, 'tcp', (out) => conn.write(frame(out)))));
      },
    );
    this.udp = pair.udp;
    this.tcp = pair.tcp;
    this.port = pair.port;
  }

  count(name: string): number {
    return this.seen.filter((s) => s.name === name).length;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.tcp.close(() => r()));
    await new Promise<void>((r) => this.udp.close(() => r()));
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
  }

  private onQuery(msg: Buffer, proto: 'udp' | 'tcp', send: (b: Buffer) => void): void {
    const q = dnsPacket.decode(msg);
    const question = q.questions![0]!;
    const name = question.name.toLowerCase();
    this.seen.push({ name, type: question.type, proto });
    const reply = (answers: dnsPacket.Answer[], o: { rcode?: number; tc?: boolean; id?: number; qname?: string } = {}): Buffer => dnsPacket.encode({
      type: 'response',
      id: o.id ?? q.id,
      flags: dnsPacket.RECURSION_AVAILABLE | (q.flags! & dnsPacket.RECURSION_DESIRED) | (o.tc ? dnsPacket.TRUNCATED_RESPONSE : 0) | (o.rcode ?? 0),
      questions: [{ ...question, name: o.qname ?? question.name }],
      answers,
    });
    const a = (owner: string, ip: string, ttl = 60): dnsPacket.Answer => ({ type: 'A', class: 'IN', name: owner, ttl, data: ip });
    switch (name) {
      case 'a.test': send(reply([a(name, '192.0.2.1')])); return;
      case 'multi.test': send(reply([a(name, '192.0.2.1'), a(name, '192.0.2.2')])); return;
      case 'short-ttl.test': send(reply([a(name, '192.0.2.3', 1)])); return;
      case 'alias.test':
        send(reply([
          { type: 'CNAME', class: 'IN', name: 'alias.test', ttl: 30, data: 'mid.test' },
          { type: 'CNAME', class: 'IN', name: 'mid.test', ttl: 60, data: 'end.test' },
          a('end.test', '192.0.2.9', 120),
        ]));
        return;
      case 'big.test':
        if (proto === 'udp') send(reply([], { tc: true }));
        else send(reply(Array.from({ length: 40 }, (_, i) => a(name, `198.51.100.${i + 1}`))));
        return;
      case 'slow.test': return;
      case 'fail.test': send(reply([], { rcode: 2 })); return;
      case 'spoof.test':
        send(reply([a(name, '203.0.113.66')], { id: (q.id! + 1) & 0xffff }));
        send(reply([a('other.test', '203.0.113.67')], { qname: 'other.test' }));
        this.later(30, () => send(reply([a(name, '192.0.2.7')])));
        return;
      case 'delay.test': this.later(150, () => send(reply([a(name, '192.0.2.8')]))); return;
      default:
        if (name.endsWith('.ok.test')) send(reply([a(name, '192.0.2.50')]));
        else send(reply([], { rcode: 3 }));
    }
  }
}

/* --------------------------------------------------------------- DNS client */

let nextId = 1;

function query(name: string, type: dnsPacket.RecordType = 'A', o: { id?: number; rd?: boolean } = {}): Buffer {
  return dnsPacket.encode({
    type: 'query', id: o.id ?? (nextId++ & 0xffff), flags: o.rd === false ? 0 : dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name, class: 'IN' }],
  });
}

function udpAsk(port: number, msg: Buffer, timeoutMs = 2_000): Promise<dnsPacket.DecodedPacket & { raw: Buffer }> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    const timer = setTimeout(() => { s.close(); reject(new Error('no UDP answer')); }, timeoutMs);
    s.on('message', (out) => {
      clearTimeout(timer);
      s.close();
      resolve(Object.assign(dnsPacket.decode(out), { raw: out }));
    });
    s.send(msg, port, '127.0.0.1');
  });
}

/** Sends raw bytes over UDP; resolves with the answer or null when none comes. */
function udpMaybe(port: number, msg: Buffer, waitMs = 300): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const timer = setTimeout(() => { s.close(); resolve(null); }, waitMs);
    s.on('message', (out) => { clearTimeout(timer); s.close(); resolve(out); });
    s.send(msg, port, '127.0.0.1');
  });
}

function tcpAsk(port: number, msgs: Buffer[], timeoutMs = 2_000): Promise<dnsPacket.DecodedPacket[]> {
  return new Promise((resolve, reject) => {
    const out: dnsPacket.DecodedPacket[] = [];
    const c = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => { c.destroy(); reject(new Error('no TCP answer')); }, timeoutMs);
    c.on('error', (e) => { clearTimeout(timer); reject(e); });
    c.on('data', deframer((m) => {
      out.push(dnsPacket.decode(m));
      if (out.length === msgs.length) { clearTimeout(timer); c.destroy(); resolve(out); }
    }));
    c.write(Buffer.concat(msgs.map(frame)));
  });
}

function ips(p: dnsPacket.Packet): string[] {
  return (p.answers ?? []).filter((a) => a.type === 'A').map((a) => (a as { data: string }).data);
}

/* -------------------------------------------------------------------- tests */

describe('dns exfiltration heuristics', () => {
  test('ordinary names are not flagged', () => {
    for (const name of [
      'pypi.org', 'files.pythonhosted.org', 'registry.npmjs.org', 's3.us-east-1.amazonaws.com',
      '3f9a1c2b7d4e.preview.example.com', 'raw.githubusercontent.com', 'objects.githubusercontent.com',
      'github-production-release-asset-2e65be.s3.amazonaws.com', 'production.cloudflare.docker.com',
      'registry-1.docker.io', 'storage.googleapis.com', 'commondatastorage.googleapis.com',
      'login.microsoftonline.com', 'my-loadbalancer-1234567890.us-west-2.elb.amazonaws.com',
      'd3h2y3k8p7m0ab.cloudfront.net', '_http._tcp.deb.debian.org', 'internationalization.example.org',
      'pypi.org.',
    ]) assert.deepEqual(exfilFlags(name), [], name);
  });

  test('encoded payloads are flagged', () => {
    // Fixed bytes: the result must not depend on chance.
    const bytes = Buffer.concat(['one', 'two'].map((s) => createHash('sha256').update(s).digest()));
    const b32 = base32(bytes.subarray(0, 30)); // 48 chars
    assert.deepEqual(exfilFlags(`${b32}.evil.example`).sort(), ['high-entropy', 'long-label']);
    const hex60 = bytes.toString('hex').slice(0, 60);
    assert.ok(exfilFlags(`${hex60}.evil.example`).includes('high-entropy'));
    assert.ok(exfilFlags(`${hex60}.evil.example`).includes('long-label'));
    // Short enough for no other flag: each encoding on its own.
    assert.deepEqual(exfilFlags(`${base32(bytes.subarray(0, 15))}.evil.example`), ['high-entropy']); // 24 chars
    assert.deepEqual(exfilFlags(`${bytes.subarray(0, 12).toString('hex')}.evil.example`), ['high-entropy']);
    assert.deepEqual(exfilFlags('dGhpcyBpcyBhIHNlY3JldDEy.evil.example'), ['high-entropy']); // base64, mixed case
    assert.deepEqual(exfilFlags('k3x9qz7w2v8rt5mn.evil.example'), ['high-entropy']); // 16 random chars
    assert.deepEqual(exfilFlags(`${'a'.repeat(41)}.example`), ['long-label']);
    assert.deepEqual(exfilFlags(`${Array.from({ length: 9 }, () => 'word').join('.')}`), ['many-labels']);
    const longName = Array.from({ length: 8 }, () => 'abcdefghijklmno').join('.');
    assert.deepEqual(exfilFlags(longName), ['long-name']);
  });

  test('entropy is measured in bits per character', () => {
    assert.equal(shannonEntropy('aaaa'), 0);
    assert.equal(shannonEntropy('abcd'), 2);
    assert.equal(shannonEntropy('0123456789abcdef'), 4);
  });

  test('token bucket: burst, then the sustained rate', () => {
    const l = new QueryRateLimiter({ perSecond: 10, burst: 3 });
    assert.deepEqual([l.take(1000), l.take(1000), l.take(1000), l.take(1000)], [true, true, true, false]);
    assert.equal(l.take(1050), false); // half a token
    assert.equal(l.take(1100), true);
    assert.equal(l.take(1100), false);
    assert.equal(l.take(60_000), true); // refilled, but only up to the burst
    assert.equal(l.take(60_000), true);
    assert.equal(l.take(60_000), true);
    assert.equal(l.take(60_000), false);
    const d = new QueryRateLimiter();
    let n = 0;
    while (d.take(5000)) n++;
    assert.equal(n, 200);
  });
});

describe('DnsUpstream', () => {
  const up = new FakeUpstream();
  let resolver: DnsUpstream;
  before(() => up.start());
  after(() => up.close());
  beforeEach(() => { resolver?.close(); resolver = new DnsUpstream({ upstream: { host: '127.0.0.1', port: up.port }, timeoutMs: 300 }); });
  after(() => resolver?.close());

  test('answers A records and serves repeats from the cache', async () => {
    const first = await resolver.resolve4('A.test.');
    assert.deepEqual(first, { rcode: 'NOERROR', addresses: ['192.0.2.1'], ttl: 60 });
    const again = await resolver.resolve4('a.test');
    assert.deepEqual(again.addresses, ['192.0.2.1']);
    assert.ok(again.ttl >= 59 && again.ttl <= 60);
    assert.equal(up.count('a.test'), 1);
    assert.equal(resolver.stats.cacheHits, 1);
    assert.deepEqual((await resolver.resolve4('multi.test')).addresses, ['192.0.2.1', '192.0.2.2']);
  });

  test('follows a CNAME chain inside the answer', async () => {
    const r = await resolver.resolve4('alias.test');
    assert.deepEqual(r, { rcode: 'NOERROR', addresses: ['192.0.2.9'], ttl: 30, cname: ['mid.test', 'end.test'] });
  });

  test('NXDOMAIN is cached too, for the negative TTL', async () => {
    const before = up.count('missing.test');
    assert.deepEqual(await resolver.resolve4('missing.test'), { rcode: 'NXDOMAIN', addresses: [], ttl: 10 });
    assert.equal((await resolver.resolve4('missing.test')).rcode, 'NXDOMAIN');
    assert.equal(up.count('missing.test'), before + 1);
  });

  test('TTLs are clamped to the minimum', async () => {
    assert.equal((await resolver.resolve4('short-ttl.test')).ttl, 5);
  });

  test('concurrent lookups of one name share one query', async () => {
    const all = await Promise.all(Array.from({ length: 5 }, () => resolver.resolve4('delay.test')));
    for (const r of all) assert.deepEqual(r.addresses, ['192.0.2.8']);
    assert.equal(up.count('delay.test'), 1);
    all[0]!.addresses.push('6.6.6.6'); // one caller's copy is its own
    assert.deepEqual((await resolver.resolve4('delay.test')).addresses, ['192.0.2.8']);
  });

  test('answers with the wrong id or question are ignored', async () => {
    const r = await resolver.resolve4('spoof.test');
    assert.deepEqual(r.addresses, ['192.0.2.7']);
    assert.ok(resolver.stats.ignored >= 2, `ignored ${resolver.stats.ignored}`);
  });

  test('a silent upstream is SERVFAIL after every attempt, and not cached', async () => {
    const t0 = Date.now();
    assert.deepEqual(await resolver.resolve4('slow.test'), { rcode: 'SERVFAIL', addresses: [], ttl: 0 });
    assert.ok(Date.now() - t0 >= 550, 'two attempts of 300 ms');
    assert.equal(up.count('slow.test'), 2);
    assert.equal(resolver.stats.timeouts, 2);
    assert.equal((await resolver.resolve4('fail.test')).rcode, 'SERVFAIL');
  });

  test('a truncated UDP answer is retried over TCP', async () => {
    const r = await resolver.resolve4('big.test');
    assert.equal(r.addresses.length, 40);
    assert.deepEqual(up.seen.filter((s) => s.name === 'big.test').map((s) => s.proto), ['udp', 'tcp']);
    assert.equal(resolver.stats.tcpFallbacks, 1);
  });

  test('a dead upstream port is SERVFAIL, not an exception', async () => {
    const dead = dgram.createSocket('udp4');
    await new Promise<void>((r) => dead.bind(0, '127.0.0.1', () => r()));
    const port = dead.address().port;
    dead.close();
    const r = new DnsUpstream({ upstream: { host: '127.0.0.1', port }, timeoutMs: 200 });
    try {
      assert.equal((await r.resolve4('a.test')).rcode, 'SERVFAIL');
    } finally {
      r.close();
    }
  });

  test('names that are not host names are refused without a query', async () => {
    const n = up.seen.length;
    assert.equal((await resolver.resolve4('bad name.test')).rcode, 'REFUSED');
    assert.equal((await resolver.resolve4('')).rcode, 'REFUSED');
    assert.equal(up.seen.length, n);
  });

  test('the cache holds at most maxCacheEntries names', async () => {
    const small = new DnsUpstream({ upstream: { host: '127.0.0.1', port: up.port }, timeoutMs: 300, maxCacheEntries: 1 });
    try {
      await small.resolve4('one.ok.test');
      await small.resolve4('two.ok.test');
      await small.resolve4('one.ok.test');
      assert.equal(up.count('one.ok.test'), 2);
    } finally {
      small.close();
    }
  });

  test('close() ends lookups in flight with SERVFAIL', async () => {
    const pending = resolver.resolve4('slow.test');
    await delay(50);
    resolver.close();
    assert.equal((await pending).rcode, 'SERVFAIL');
    assert.equal((await resolver.resolve4('a.test')).rcode, 'SERVFAIL');
  });
});

describe('SandboxDnsServer', () => {
  const up = new FakeUpstream();
  let resolver: DnsUpstream;
  let policy = new EgressPolicy(['a.test', 'alias.test', 'big.test', 'fail.test', '*.ok.test'], ['bad.ok.test']);
  const events: Array<{ sandboxId: string; type: string; data: Record<string, unknown> }> = [];
  let server: SandboxDnsServer;
  let port = 0;

  before(async () => {
    await up.start();
    resolver = new DnsUpstream({ upstream: { host: '127.0.0.1', port: up.port }, timeoutMs: 300, attempts: 1 });
    server = new SandboxDnsServer({
      sandboxId: 'sbx1',
      listen: { host: '127.0.0.1', port: 0 },
      policy: () => policy,
      upstream: resolver,
      onEvent: (sandboxId, type, data) => { events.push({ sandboxId, type, data }); },
    });
    await server.start();
    port = server.address.port;
  });
  after(async () => {
    await server.close();
    resolver.close();
    await up.close();
  });

  function lastEvent(name: string): Record<string, unknown> {
    const e = events.filter((x) => x.data.name === name).at(-1);
    assert.ok(e, `no event for ${name}`);
    assert.equal(e.sandboxId, 'sbx1');
    assert.equal(e.type, 'net.dns');
    return e.data;
  }

  test('an allowed name is answered, with the header a stub resolver expects', async () => {
    const r = await udpAsk(port, query('A.Test', 'A', { id: 4242 }));
    assert.equal(r.id, 4242);
    assert.equal(r.type, 'response');
    assert.equal(r.flag_ra, true);
    assert.equal(r.flag_rd, true);
    assert.equal(r.flag_tc, false);
    assert.equal((r as unknown as { rcode: string }).rcode, 'NOERROR');
    assert.deepEqual(r.questions, [{ name: 'A.Test', type: 'A', class: 'IN' }]); // echoed as asked
    assert.deepEqual(ips(r), ['192.0.2.1']);
    const ttl = (r.answers![0] as { ttl: number }).ttl;
    assert.ok(ttl <= 60 && ttl > 0);
    assert.deepEqual(lastEvent('a.test'), { name: 'a.test', qtype: 'A', verdict: 'allow', rcode: 'NOERROR', answers: ['192.0.2.1'] });
    const norecurse = await udpAsk(port, query('a.test', 'A', { rd: false }));
    assert.equal(norecurse.flag_rd, false);
    assert.equal(norecurse.flag_ra, true);
  });

  test('a CNAME chain is passed on', async () => {
    const r = await udpAsk(port, query('alias.test'));
    assert.deepEqual(r.answers!.map((a) => [a.type, a.name, (a as { data: unknown }).data]), [
      ['CNAME', 'alias.test', 'mid.test'], ['CNAME', 'mid.test', 'end.test'], ['A', 'end.test', '192.0.2.9'],
    ]);
    assert.deepEqual(lastEvent('alias.test').answers, ['192.0.2.9']);
  });

  test('*.suffix allows names below the suffix only', async () => {
    assert.deepEqual(ips(await udpAsk(port, query('pkg.ok.test'))), ['192.0.2.50']);
    const bare = await udpAsk(port, query('ok.test'));
    assert.equal((bare as unknown as { rcode: string }).rcode, 'NXDOMAIN');
    assert.equal(lastEvent('ok.test').verdict, 'not-allowed');
  });

  test('not-allowed and denied names are NXDOMAIN and never reach the upstream', async () => {
    const other = await udpAsk(port, query('elsewhere.test'));
    assert.equal((other as unknown as { rcode: string }).rcode, 'NXDOMAIN');
    assert.deepEqual(other.answers, []);
    assert.deepEqual(lastEvent('elsewhere.test'), { name: 'elsewhere.test', qtype: 'A', verdict: 'not-allowed', rcode: 'NXDOMAIN', answers: [] });
    const denied = await udpAsk(port, query('bad.ok.test'));
    assert.equal((denied as unknown as { rcode: string }).rcode, 'NXDOMAIN');
    assert.equal(lastEvent('bad.ok.test').verdict, 'deny');
    assert.equal(up.count('elsewhere.test') + up.count('bad.ok.test'), 0);
  });

  test('AAAA, TXT, MX and ANY are answered empty and never forwarded', async () => {
    for (const type of ['AAAA', 'TXT', 'MX', 'ANY']) {
      const r = await udpAsk(port, query('other.ok.test', type as dnsPacket.RecordType));
      assert.equal((r as unknown as { rcode: string }).rcode, 'NOERROR', type);
      assert.deepEqual(r.answers, [], type);
      assert.deepEqual(lastEvent('other.ok.test'), { name: 'other.ok.test', qtype: type, verdict: 'allow', rcode: 'NOERROR', answers: [] });
    }
    assert.equal(up.count('other.ok.test'), 0);
  });

  test('a live policy change takes effect on the next query', async () => {
    const saved = policy;
    try {
      assert.equal((await udpAsk(port, query('late.test')) as unknown as { rcode: string }).rcode, 'NXDOMAIN');
      policy = new EgressPolicy(['late.test'], []);
      // Now it is asked upstream (which says NXDOMAIN).
      const now = await udpAsk(port, query('late.test'));
      assert.equal(lastEvent('late.test').verdict, 'allow');
      assert.equal((now as unknown as { rcode: string }).rcode, 'NXDOMAIN');
      assert.equal(up.count('late.test'), 1);
      policy = new EgressPolicy(['*.ok.test'], ['*.ok.test']);
      assert.equal((await udpAsk(port, query('pkg.ok.test')) as unknown as { rcode: string }).rcode, 'NXDOMAIN');
      assert.equal(lastEvent('pkg.ok.test').verdict, 'deny');
    } finally {
      policy = saved;
    }
  });

  test('an upstream failure is SERVFAIL', async () => {
    const r = await udpAsk(port, query('fail.test'));
    assert.equal((r as unknown as { rcode: string }).rcode, 'SERVFAIL');
    assert.equal(lastEvent('fail.test').rcode, 'SERVFAIL');
  });

  test('malformed packets are dropped, odd ones refused, and the server keeps answering', async () => {
    const malformedBefore = server.stats.malformed;
    assert.equal(await udpMaybe(port, Buffer.from([1, 2, 3])), null);
    assert.equal(await udpMaybe(port, randomBytes(12).fill(0xff, 4)), null); // counts promise sections that are not there
    const truncatedName = Buffer.concat([query('a.test').subarray(0, 16)]);
    assert.equal(await udpMaybe(port, truncatedName), null);
    const response = dnsPacket.encode({ type: 'response', id: 7, questions: [{ type: 'A', name: 'a.test', class: 'IN' }] });
    assert.equal(await udpMaybe(port, response), null);
    assert.equal(server.stats.malformed, malformedBefore + 4);

    const two = dnsPacket.encode({ type: 'query', id: 9, questions: [{ type: 'A', name: 'a.test' }, { type: 'A', name: 'pkg.ok.test' }] });
    const formerr = dnsPacket.decode((await udpMaybe(port, two))!);
    assert.equal((formerr as unknown as { rcode: string }).rcode, 'FORMERR');
    assert.equal(formerr.id, 9);

    const status = query('a.test');
    status.writeUInt16BE(status.readUInt16BE(2) | (2 << 11), 2); // opcode STATUS
    assert.equal((dnsPacket.decode((await udpMaybe(port, status))!) as unknown as { rcode: string }).rcode, 'NOTIMP');

    const chaos = dnsPacket.encode({ type: 'query', id: 11, questions: [{ type: 'TXT', name: 'version.bind', class: 'CH' }] });
    const notimp = dnsPacket.decode((await udpMaybe(port, chaos))!);
    assert.equal((notimp as unknown as { rcode: string }).rcode, 'NOTIMP');
    assert.equal(up.count('version.bind'), 0);

    assert.deepEqual(ips(await udpAsk(port, query('a.test'))), ['192.0.2.1']);
  });

  test('names with characters no host name has are NXDOMAIN, logged as not-allowed', async () => {
    const r = await udpAsk(port, query('Bad!Name.ok.test'));
    assert.equal((r as unknown as { rcode: string }).rcode, 'NXDOMAIN');
    assert.deepEqual(r.questions!.map((q) => q.name), ['Bad!Name.ok.test']);
    assert.equal(lastEvent('bad!name.ok.test').verdict, 'not-allowed');
    assert.equal(up.count('bad!name.ok.test'), 0);
    // A dot inside one label must not pass for two labels of an allowed name.
    const msg = query('x'); // patch the single label 'x' into 'a.test' as one 6-byte label
    const dotted = Buffer.concat([msg.subarray(0, 12), Buffer.from([6]), Buffer.from('a.test'), Buffer.from([0]), msg.subarray(15)]);
    const d = dnsPacket.decode((await udpMaybe(port, dotted))!);
    assert.equal((d as unknown as { rcode: string }).rcode, 'NXDOMAIN');
  });

  test('TCP queries work, pipelined too; big answers are truncated over UDP only', async () => {
    const [a, b] = await tcpAsk(port, [query('a.test', 'A', { id: 100 }), query('pkg.ok.test', 'A', { id: 101 })]);
    const byId = new Map([a!, b!].map((p) => [p.id, p]));
    assert.deepEqual(ips(byId.get(100)!), ['192.0.2.1']);
    assert.deepEqual(ips(byId.get(101)!), ['192.0.2.50']);

    const udp = await udpAsk(port, query('big.test'));
    assert.equal(udp.flag_tc, true);
    assert.deepEqual(udp.answers, []);
    assert.ok(udp.raw.length <= 512);
    assert.deepEqual(udp.questions!.map((q) => q.name), ['big.test']);
    const [tcp] = await tcpAsk(port, [query('big.test')]);
    assert.equal(tcp!.flag_tc, false);
    assert.equal(ips(tcp!).length, 40);
  });

  test('exfiltration-looking names are flagged in the event', async () => {
    const label = base32(Buffer.from('the quick brown fox jumps over the lazy dog', 'utf8').subarray(0, 30));
    await udpAsk(port, query(`${label}.ok.test`));
    const e = lastEvent(`${label}.ok.test`);
    assert.deepEqual(e.flags, ['long-label', 'high-entropy']);
    assert.equal(e.verdict, 'allow');
    await udpAsk(port, query(`${label}.exfil.example`));
    assert.deepEqual(lastEvent(`${label}.exfil.example`).flags, ['long-label', 'high-entropy']);
  });

  test('at most 16 TCP connections; close() drops them', async () => {
    const socks: net.Socket[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => {});
        await new Promise((r) => s.once('connect', r));
        socks.push(s);
      }
      // Each answers, so all 16 are accepted (not just queued in the backlog).
      await Promise.all(socks.map((s, i) => new Promise<void>((resolve) => {
        s.on('data', deframer(() => resolve()));
        s.write(frame(query('a.test', 'A', { id: 500 + i })));
      })));
      const extra = net.connect(port, '127.0.0.1');
      extra.on('error', () => {});
      await new Promise((r) => extra.once('close', r));
      assert.equal(server.stats.tcpRejected, 1);
    } finally {
      for (const s of socks) s.destroy();
    }
  });

  test('flood: REFUSED, and one summary event instead of one per query', async () => {
    const floodEvents: Array<Record<string, unknown>> = [];
    const limited = new SandboxDnsServer({
      sandboxId: 'sbx2',
      listen: { host: '127.0.0.1', port: 0 },
      policy: () => policy,
      upstream: resolver,
      onEvent: (_id, _type, data) => { floodEvents.push(data); },
      rateLimit: { perSecond: 1, burst: 5 },
    });
    await limited.start();
    try {
      const s = dgram.createSocket('udp4');
      const rcodes: string[] = [];
      await new Promise<void>((resolve) => {
        s.on('message', (m) => {
          rcodes.push((dnsPacket.decode(m) as unknown as { rcode: string }).rcode);
          if (rcodes.length === 40) resolve();
        });
        s.bind(0, '127.0.0.1', () => {
          for (let i = 0; i < 40; i++) s.send(query(`n${i}.ok.test`), limited.address.port, '127.0.0.1');
        });
      });
      s.close();
      assert.equal(rcodes.filter((r) => r === 'REFUSED').length, 35);
      assert.equal(rcodes.filter((r) => r === 'NOERROR').length, 5);
      assert.equal(floodEvents.length, 5, 'only the answered queries so far');
      await delay(1_300);
      assert.deepEqual(floodEvents.slice(5), [{ verdict: 'rate-limited', rcode: 'REFUSED', dropped: 35, flags: ['flood'] }]);
      assert.equal(limited.stats.rateLimited, 35);
      await delay(300);
      assert.equal(floodEvents.length, 6, 'no further events without further queries');
    } finally {
      await limited.close();
      await limited.close(); // idempotent
    }
  });

  test('flood: an allowed name already cached is still answered (no upstream, no event); anything else is REFUSED', async () => {
    const seen: Array<Record<string, unknown>> = [];
    const limited = new SandboxDnsServer({
      sandboxId: 'sbx4', listen: { host: '127.0.0.1', port: 0 }, policy: () => policy, upstream: resolver,
      onEvent: (_id, _type, data) => { seen.push(data); }, rateLimit: { perSecond: 1, burst: 1 },
    });
    await limited.start();
    try {
      const port = limited.address.port;
      assert.deepEqual(ips(await udpAsk(port, query('pkg.ok.test'))), ['192.0.2.50'], 'within the rate: asked upstream, cached');
      const asked = up.count('pkg.ok.test');
      for (let i = 0; i < 5; i++) assert.deepEqual(ips(await udpAsk(port, query('PKG.ok.test'))), ['192.0.2.50']);
      const aaaa = await udpAsk(port, query('pkg.ok.test', 'AAAA'));
      assert.equal((aaaa as unknown as { rcode: string }).rcode, 'NOERROR');
      assert.equal(aaaa.answers?.length ?? 0, 0);
      assert.equal(up.count('pkg.ok.test'), asked, 'the cache answered');
      // A cache miss (even under an allowed wildcard) would reach the upstream; a name not allowed needs deciding.
      for (const q of [query('fresh.ok.test'), query('elsewhere.test'), query('bad.ok.test'), query('pkg.ok.test', 'TXT')]) {
        assert.equal((await udpAsk(port, q) as unknown as { rcode: string }).rcode, 'REFUSED');
      }
      assert.equal(up.count('fresh.ok.test'), 0);
      assert.equal(limited.stats.rateLimited, 10);
      assert.equal(limited.stats.answeredInFlood, 6);
    } finally {
      await limited.close();
    }
    assert.equal(seen.length, 2, 'the first answer, then one summary');
    assert.deepEqual(seen[1], { verdict: 'rate-limited', rcode: 'REFUSED', dropped: 4, answeredFromCache: 6, flags: ['flood'] });
  });

  test('a flood still unreported at close() is reported then', async () => {
    const seen: Array<Record<string, unknown>> = [];
    const limited = new SandboxDnsServer({
      sandboxId: 'sbx3', listen: { host: '127.0.0.1', port: 0 }, policy: () => policy, upstream: resolver,
      onEvent: (_id, _type, data) => { seen.push(data); }, rateLimit: { perSecond: 1, burst: 1 },
    });
    await limited.start();
    await udpAsk(limited.address.port, query('elsewhere.test'));
    await udpAsk(limited.address.port, query('elsewhere.test'));
    await limited.close();
    assert.deepEqual(seen.map((d) => d.verdict), ['not-allowed', 'rate-limited']);
    assert.equal(seen[1]!.dropped, 1);
  });

  test('start() rejects clearly when the address is taken', async () => {
    const taken = dgram.createSocket('udp4');
    await new Promise<void>((r) => taken.bind(0, '127.0.0.1', () => r()));
    const busy = new SandboxDnsServer({
      sandboxId: 'sbx4', listen: { host: '127.0.0.1', port: taken.address().port }, policy: () => policy, upstream: resolver, onEvent: () => {},
    });
    try {
      await assert.rejects(busy.start(), /DNS resolver for sandbox sbx4 cannot listen on 127\.0\.0\.1:\d+ \(udp\): .*EADDRINUSE/);
      await busy.close();
    } finally {
      taken.close();
    }
  });

  test('idle TCP connections are closed', async () => {
    const s2 = new SandboxDnsServer({
      sandboxId: 'sbx6', listen: { host: '127.0.0.1', port: 0 }, policy: () => policy, upstream: resolver, onEvent: () => {}, tcpIdleMs: 200,
    });
    await s2.start();
    try {
      const c = net.connect(s2.address.port, '127.0.0.1');
      c.on('error', () => {});
      const t0 = Date.now();
      await new Promise((r) => c.once('close', r));
      assert.ok(Date.now() - t0 >= 150, 'closed for idleness, not at once');
    } finally {
      await s2.close();
    }
  });

  test('close() also closes open TCP clients', async () => {
    const s2 = new SandboxDnsServer({
      sandboxId: 'sbx5', listen: { host: '127.0.0.1', port: 0 }, policy: () => policy, upstream: resolver, onEvent: () => {},
    });
    await s2.start();
    const c = net.connect(s2.address.port, '127.0.0.1');
    c.on('error', () => {});
    await new Promise((r) => c.once('connect', r));
    const closed = new Promise((r) => c.once('close', r));
    await delay(20);
    await s2.close();
    await closed;
    assert.equal(await udpMaybe(s2.address.port, query('a.test'), 200), null);
  });
});
