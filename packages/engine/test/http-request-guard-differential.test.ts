// Differential test of the plaintext request guard against a real HTTP server (Node's own
// parser, llhttp): thousands of generated request streams, many of them malformed on purpose
// (smuggling shapes, odd Host fields, bad line endings, chunk-size tricks). Whatever bytes the
// guard lets through are sent to the server; every request the server then reads must be for
// the allowed host. A request the server sees for any other host is a parser differential: the
// guard framed the stream one way, the server another, and egress reached a host the policy
// never allowed. Seeded, so a failure names a case that reproduces.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { normalizeName } from '../src/network/egress-policy.js';
import { RequestGuard } from '../src/network/http-request-guard.js';

const ALLOWED = 'a.test';
// More cases or another seed for a longer hunt: AIRLOCK_FUZZ_CASES=200000 AIRLOCK_FUZZ_SEED=7
const CASES = Number(process.env.AIRLOCK_FUZZ_CASES ?? 3000);
const SEED = Number(process.env.AIRLOCK_FUZZ_SEED ?? 0x5eed);

/** Small deterministic PRNG (mulberry32): the same seed gives the same cases. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const chance = (r: Rand, p: number): boolean => r() < p;
/** Mostly the well-formed choice, sometimes one of the odd ones: streams must get past the first request. */
const mostly = <T>(r: Rand, usual: T, odd: readonly T[], p = 0.1): T => (chance(r, p) ? pick(r, odd) : usual);

const HOSTS = ['A.TEST', 'a.test.', 'a.test:80', 'b.test', 'b.test:80', 'a.test, b.test', 'a.test b.test', 'b.test@a.test', ' a.test', 'a.test\t', ''];
const HOST_NAMES = ['host', 'HOST', 'Host ', ' Host', 'Ho st', 'X-Host'];
const TARGETS = ['/x?y=1', 'http://a.test/x', 'http://b.test/x', 'http://A.test:80/', '//b.test/x', '*', 'https://b.test/', 'http://a.test@b.test/', '/\tx'];
const METHODS = ['POST', 'PUT', 'HEAD', 'OPTIONS', 'DELETE', 'CONNECT', 'G@T'];
const VERSIONS = ['HTTP/1.0', 'HTTP/1.2', 'HTTP/2.0', 'http/1.1'];
const TE_VALUES = ['Chunked', 'chunked ', ' chunked', 'chunked, identity', 'identity, chunked', 'xchunked', 'chunked;q=1', 'gzip, chunked', 'identity'];
const CL_VALUES = (n: number) => [` ${n}`, `+${n}`, `0${n}`, `${n}, ${n}`, `${n}, ${n + 1}`, `${n}.0`, `-${n}`, `0x${n.toString(16)}`, `${n}a`];
const ODD_EOLS = ['\n', '\r', '\r\r\n', '\n\r'];
const eol = (r: Rand, p = 0.03): string => mostly(r, '\r\n', ODD_EOLS, p);

/** A hidden request, the thing a differential would smuggle past the guard. */
const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: b.test\r\n\r\n';

function chunkedBody(r: Rand, data: string): string {
  let out = '';
  let rest = data;
  while (rest.length > 0) {
    const n = Math.min(rest.length, 1 + Math.floor(r() * 40));
    const hex = n.toString(16);
    const size = mostly(r, hex, [hex.toUpperCase(), `0${hex}`, `${hex};ext=1`, `${hex} ;e`, `0x${hex}`, `${hex}\t`, ` ${hex}`, (n + 1).toString(16), (n - 1).toString(16)]);
    out += `${size}${eol(r)}${rest.slice(0, n)}${eol(r)}`;
    rest = rest.slice(n);
  }
  out += `${mostly(r, '0', ['00', '0;x=y', '000000000000000000', '0 ', '1'])}${eol(r)}`;
  if (chance(r, 0.2)) out += `${pick(r, ['X-Trailer: 1', 'Host: b.test', 'bad trailer'])}${eol(r)}`;
  out += eol(r);
  return out;
}

function generateRequest(r: Rand): string {
  let head = `${mostly(r, 'GET', METHODS, 0.3)}${mostly(r, ' ', ['  ', '\t'], 0.03)}${mostly(r, '/', TARGETS, 0.3)} ${mostly(r, 'HTTP/1.1', VERSIONS, 0.15)}${eol(r)}`;
  const hostCount = mostly(r, 1, [0, 2], 0.08);
  for (let i = 0; i < hostCount; i++) head += `${mostly(r, 'Host', HOST_NAMES, 0.08)}: ${mostly(r, 'a.test', HOSTS, 0.25)}${eol(r)}`;
  if (chance(r, 0.05)) head += ` b.test${eol(r)}`; // obs-fold continuing the previous field
  let body = '';
  const data = chance(r, 0.4) ? SMUGGLED : 'x'.repeat(Math.floor(r() * 30));
  const framing = pick(r, ['none', 'none', 'cl', 'cl', 'te', 'te', 'both', 'dup-te']);
  if (framing === 'cl' || framing === 'both') {
    const n = chance(r, 0.85) ? data.length : Math.floor(r() * (data.length + 5));
    head += `${mostly(r, 'Content-Length', ['content-length', 'Content-Length ', 'Content_Length'], 0.05)}: ${mostly(r, String(n), CL_VALUES(n), 0.15)}${eol(r)}`;
    if (framing === 'cl') body = data;
  }
  if (framing === 'te' || framing === 'both' || framing === 'dup-te') {
    head += `${mostly(r, 'Transfer-Encoding', ['transfer-encoding', 'Transfer-Encoding ', 'Transfer_Encoding'], 0.05)}: ${mostly(r, 'chunked', TE_VALUES, 0.15)}${eol(r)}`;
    if (framing === 'dup-te') head += `Transfer-Encoding: ${mostly(r, 'chunked', TE_VALUES, 0.5)}${eol(r)}`;
    body = chance(r, 0.9) ? chunkedBody(r, data) : data;
  }
  if (framing === 'none' && chance(r, 0.3)) body = data; // a body nobody declared: the next request, to a server
  if (chance(r, 0.1)) head += `${pick(r, ['Upgrade: websocket', 'Upgrade: h2c', 'Connection: Upgrade', 'Expect: 100-continue', 'Connection: keep-alive'])}${eol(r)}`;
  return `${head}${eol(r)}${body}`;
}

function generateStream(r: Rand): string {
  let s = '';
  const n = 1 + Math.floor(r() * 3);
  for (let i = 0; i < n; i++) s += generateRequest(r);
  if (chance(r, 0.2)) s += SMUGGLED;
  return s;
}

/** What the guard passes on, fed in random splits; stops at a refusal or while upgrade-waiting. */
function guarded(r: Rand, stream: Buffer): Buffer {
  const g = new RequestGuard({ name: ALLOWED, mode: 'transparent' });
  const out: Buffer[] = [];
  let i = 0;
  while (i < stream.length) {
    const n = 1 + Math.floor(r() * 64);
    const res = g.push(stream.subarray(i, i + n));
    out.push(...res.out);
    i += n;
    if (res.refusal) break;
  }
  // An upgrade: the server's answer would decide. Node never answers 101 here (no 'upgrade'
  // listener, so it closes), which is the "not switched" case; the held bytes are parsed then.
  if (g.waitingForUpgrade) out.push(...g.upgradeAnswered(false).out);
  return Buffer.concat(out);
}

interface Seen { host: string | undefined; url: string }

describe('request guard vs a real HTTP server (differential)', () => {
  let server: http.Server;
  let port = 0;
  const seenBy = new Map<number, Seen[]>();

  before(async () => {
    server = http.createServer((req, res) => {
      const id = Number(req.socket.remotePort);
      const list = seenBy.get(id) ?? [];
      list.push({ host: req.headers.host, url: req.url ?? '' });
      seenBy.set(id, list);
      req.resume();
      req.on('end', () => res.end('ok'));
      req.on('error', () => {});
    });
    server.on('clientError', (_e, socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  async function serverSees(bytes: Buffer): Promise<Seen[]> {
    const s = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
    const local = s.localPort!;
    s.on('data', () => {});
    s.on('error', () => {});
    s.end(bytes);
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => { s.destroy(); resolve(); }, 2000);
      s.once('close', () => { clearTimeout(t); resolve(); });
    });
    const seen = seenBy.get(local) ?? [];
    seenBy.delete(local);
    return seen;
  }

  const hostOf = (h: string): string => normalizeName(h.replace(/:\d+$/, ''));

  test(`${CASES} generated streams: the server only ever reads requests for the allowed host`, async () => {
    const r = prng(SEED);
    let passedRequests = 0;
    for (let c = 0; c < CASES; c++) {
      const stream = Buffer.from(generateStream(r), 'latin1');
      const bytes = guarded(r, stream);
      if (bytes.length === 0) continue;
      for (const seen of await serverSees(bytes)) {
        passedRequests++;
        const context = `case ${c}: ${JSON.stringify(stream.toString('latin1'))}\nguard passed: ${JSON.stringify(bytes.toString('latin1'))}`;
        assert.ok(seen.host !== undefined, `server read a request without Host\n${context}`);
        assert.equal(hostOf(seen.host), ALLOWED, `server read a request for ${seen.host}\n${context}`);
        const abs = /^https?:\/\/([^/?#]*)/i.exec(seen.url);
        if (abs) assert.equal(hostOf(abs[1]!), ALLOWED, `server read an absolute target ${seen.url}\n${context}`);
        assert.notEqual(seen.url, '/smuggled', `a smuggled request reached the server\n${context}`);
      }
    }
    // The generator must exercise the passing path too, or the test proves nothing.
    assert.ok(passedRequests > CASES / 4, `only ${passedRequests} requests passed`);
  });
});
