/**
 * The servers of the test internet, run INSIDE a fixture namespace:
 *   ip netns exec <ns> node net-fixture-servers.js '<json config>'
 *
 * Talks to its parent (net-fixture.ts) in JSON lines:
 *   stdout: {"type":"ready"} once every listener is bound; {"type":"conn",...} for every
 *           connection an internet server accepted; {"type":"hit",...} for every connection or
 *           datagram a canary got; {"type":"synced","id":N} answering a sync; {"type":"fatal",...}.
 *   stdin:  {"op":"sync","id":N}: answered after every record written so far (stdout is a pipe,
 *           written synchronously on Linux, so order holds). When stdin closes (the parent
 *           exited or died) this program exits: no server outlives its test.
 */
import { createHash } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { createInterface } from 'node:readline';
import type { TLSSocket } from 'node:tls';
import { pathToFileURL } from 'node:url';
import dnsPacket from 'dns-packet';

export type ServiceKind = 'http' | 'https' | 'banner' | 'dns-udp' | 'dns-tcp' | 'canary-tcp' | 'canary-udp';

export interface ServiceSpec {
  kind: ServiceKind;
  address: string;
  port: number;
}

export interface ServersConfig {
  services: ServiceSpec[];
  /** Lower-case name (no trailing dot) → IPv4, for the DNS services. */
  records: Record<string, string>;
  /** PEM files for the HTTPS services. */
  tls?: { certFile: string; keyFile: string };
}

export type ServerMessage =
  | { type: 'ready' }
  | { type: 'conn'; proto: 'http' | 'https' | 'tcp'; address: string; port: number; from: string; host?: string }
  | { type: 'hit'; transport: 'tcp' | 'udp'; address: string; port: number; from: string }
  | { type: 'synced'; id: number }
  | { type: 'fatal'; message: string };

export const BANNER = 'SSH-2.0-airlock-fixture\r\n';
/** Largest /bytes/<N> served: the throughput benchmark downloads up to this. */
export const MAX_BYTES = 1024 * 1024 * 1024;

const KINDS: readonly ServiceKind[] = ['http', 'https', 'banner', 'dns-udp', 'dns-tcp', 'canary-tcp', 'canary-udp'];
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIpv4(s: unknown): s is string {
  return typeof s === 'string' && IPV4.test(s);
}

/** Checks the config the parent passed; throws on anything malformed. */
export function parseServersConfig(text: string): ServersConfig {
  const raw = JSON.parse(text) as unknown;
  if (typeof raw !== 'object' || raw === null) throw new Error('config must be an object');
  const { services, records, tls } = raw as Record<string, unknown>;
  if (!Array.isArray(services) || services.length === 0) throw new Error('config.services must be a non-empty array');
  const checked: ServiceSpec[] = services.map((s: unknown, i) => {
    const { kind, address, port } = (s ?? {}) as Record<string, unknown>;
    if (!KINDS.includes(kind as ServiceKind)) throw new Error(`services[${i}].kind is not one of ${KINDS.join(', ')}`);
    if (!isIpv4(address)) throw new Error(`services[${i}].address must be an IPv4 address`);
    if (!Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535) throw new Error(`services[${i}].port must be 1..65535`);
    return { kind: kind as ServiceKind, address, port: port as number };
  });
  if (typeof records !== 'object' || records === null) throw new Error('config.records must be an object');
  for (const [name, ip] of Object.entries(records)) if (!isIpv4(ip)) throw new Error(`record ${name} is not IPv4`);
  let tlsFiles: ServersConfig['tls'];
  if (tls !== undefined) {
    const { certFile, keyFile } = tls as Record<string, unknown>;
    if (typeof certFile !== 'string' || typeof keyFile !== 'string') throw new Error('config.tls needs certFile and keyFile');
    tlsFiles = { certFile, keyFile };
  }
  if (checked.some((s) => s.kind === 'https') && !tlsFiles) throw new Error('https services need config.tls');
  return { services: checked, records: records as Record<string, string>, ...(tlsFiles ? { tls: tlsFiles } : {}) };
}

function send(msg: ServerMessage): void {
  process.stdout.write(`${JSON.stringify(msg)}\n`);
}

// ---- HTTP(S) -------------------------------------------------------------------------------

/** One pre-allocated chunk, written again and again: /bytes costs no allocation per chunk. */
const CHUNK = Buffer.alloc(64 * 1024, 'x');

function streamBytes(res: http.ServerResponse, total: number): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= chunk.length;
      if (left === 0) {
        res.end(chunk);
        return;
      }
      // Backpressure: wait for the socket instead of queueing a gigabyte in memory.
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end(); // zero bytes asked for
  };
  pump();
}

export interface EchoRecord { address: string; method: string; url: string; headers: string[]; body: string }
/** The last requests /echo got, oldest first. */
const ECHO_LOG: EchoRecord[] = [];

/** Reflects the request (line, raw header lines, body) back as JSON and keeps a copy in ECHO_LOG. */
function echo(req: http.IncomingMessage, res: http.ServerResponse): void {
  const chunks: Buffer[] = [];
  let size = 0;
  req.on('data', (d: Buffer) => { size += d.length; if (size <= 1024 * 1024) chunks.push(d); });
  req.on('end', () => {
    const rec: EchoRecord = { address: req.socket.localAddress ?? '', method: req.method ?? '', url: req.url ?? '', headers: req.rawHeaders, body: Buffer.concat(chunks).toString('latin1') };
    ECHO_LOG.push(rec);
    if (ECHO_LOG.length > 200) ECHO_LOG.shift();
    const body = `${JSON.stringify(rec)}\n`;
    // The request's headers also come back as response headers (a reflecting server at its worst).
    const reflected: Record<string, string> = {};
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) reflected[`x-echo-${req.rawHeaders[i]!.toLowerCase()}`] = req.rawHeaders[i + 1]!;
    res.writeHead(200, { ...reflected, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
    res.end(body);
  });
}

function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
  const path = (req.url ?? '/').split('?')[0]!;
  const bytes = /^\/bytes\/(\d{1,10})$/.exec(path);
  if (path === '/') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`hello from ${req.socket.localAddress} host=${req.headers.host ?? ''}\n`);
  } else if (bytes) {
    const n = Number(bytes[1]);
    if (n > MAX_BYTES) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`at most ${MAX_BYTES} bytes\n`);
      return;
    }
    streamBytes(res, n);
  } else if (path === '/echo-headers') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(req.headers)}\n`);
  } else if (path === '/echo') {
    echo(req, res);
  } else if (path === '/upload') {
    // A body of any size, hashed as it arrives: "<bytes> <sha256> host=<Host>".
    const hash = createHash('sha256');
    let size = 0;
    req.on('data', (d: Buffer) => { size += d.length; hash.update(d); });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`${size} ${hash.digest('hex')} host=${req.headers.host ?? ''}\n`);
    });
  } else if (path === '/echo-log') {
    // What /echo received, as it arrived (the secret broker's tests read it from the host).
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(ECHO_LOG)}\n`);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }
}

/** Every accepted socket is logged once: at its first request (with Host), or at close. */
function logHttp(server: http.Server): void {
  const logged = new WeakSet<net.Socket>();
  const log = (socket: net.Socket, host?: string): void => {
    if (logged.has(socket)) return;
    logged.add(socket);
    send({ type: 'conn', proto: 'http', address: socket.localAddress ?? '', port: socket.localPort ?? 0, from: socket.remoteAddress ?? '', ...(host !== undefined ? { host } : {}) });
  };
  server.on('connection', (socket: net.Socket) => socket.once('close', () => log(socket)));
  server.on('request', (req: http.IncomingMessage) => log(req.socket, req.headers.host));
}

/** Every accepted TLS connection is logged once, with the SNI it sent, also when its handshake fails. */
function logHttps(server: https.Server): void {
  const log = (socket: TLSSocket): void => {
    // Set from the ClientHello, before the handshake can fail.
    const sni = (socket as TLSSocket & { servername?: string | false }).servername;
    send({ type: 'conn', proto: 'https', address: socket.localAddress ?? '', port: socket.localPort ?? 0, from: socket.remoteAddress ?? '', ...(sni ? { host: sni } : {}) });
  };
  server.on('secureConnection', log);
  server.on('tlsClientError', (_err: Error, socket: TLSSocket) => log(socket));
}

// ---- DNS -----------------------------------------------------------------------------------

const NXDOMAIN = 3;
const FORMERR = 1;

/** Answers A from the records, NXDOMAIN for unknown names, empty NOERROR for other types. */
export function answerDns(query: Buffer, records: Record<string, string>): Buffer | null {
  let q: dnsPacket.DecodedPacket;
  try {
    q = dnsPacket.decode(query);
  } catch {
    return null; // not DNS: a real server drops it too
  }
  if (q.type !== 'query') return null;
  const question = q.questions?.[0];
  const base = { type: 'response' as const, id: q.id ?? 0, questions: q.questions ?? [] };
  const rd = q.flag_rd ? dnsPacket.RECURSION_DESIRED : 0;
  const flags = dnsPacket.AUTHORITATIVE_ANSWER | rd | dnsPacket.RECURSION_AVAILABLE;
  if (!question || (q.questions?.length ?? 0) !== 1) return dnsPacket.encode({ ...base, flags: flags | FORMERR });
  const name = question.name.toLowerCase().replace(/\.$/, '');
  const ip = Object.hasOwn(records, name) ? records[name] : undefined;
  if (ip === undefined) return dnsPacket.encode({ ...base, flags: flags | NXDOMAIN });
  const answers: dnsPacket.Answer[] = question.type === 'A' && question.class === 'IN' ? [{ type: 'A', class: 'IN', name: question.name, ttl: 60, data: ip }] : [];
  return dnsPacket.encode({ ...base, flags, answers });
}

function serveDnsTcp(socket: net.Socket, records: Record<string, string>): void {
  let pending = Buffer.alloc(0);
  socket.on('data', (data: Buffer) => {
    pending = Buffer.concat([pending, data]);
    while (pending.length >= 2) {
      const len = pending.readUInt16BE(0);
      if (pending.length < 2 + len) return;
      const answer = answerDns(pending.subarray(2, 2 + len), records);
      pending = pending.subarray(2 + len);
      if (!answer) {
        socket.destroy();
        return;
      }
      const frame = Buffer.alloc(2 + answer.length);
      frame.writeUInt16BE(answer.length, 0);
      answer.copy(frame, 2);
      socket.write(frame);
    }
  });
  socket.on('error', () => {});
}

// ---- startup -------------------------------------------------------------------------------

function listenTcp(server: net.Server, spec: ServiceSpec): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: spec.address, port: spec.port, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

async function start(spec: ServiceSpec, config: ServersConfig, tls: { cert: Buffer; key: Buffer } | null): Promise<void> {
  switch (spec.kind) {
    case 'http': {
      const server = http.createServer(handle);
      logHttp(server);
      return listenTcp(server, spec);
    }
    case 'https': {
      const server = https.createServer({ cert: tls!.cert, key: tls!.key }, handle);
      logHttps(server);
      return listenTcp(server, spec);
    }
    case 'banner': {
      const server = net.createServer((socket) => {
        send({ type: 'conn', proto: 'tcp', address: socket.localAddress ?? '', port: socket.localPort ?? 0, from: socket.remoteAddress ?? '' });
        socket.on('error', () => {});
        socket.write(BANNER);
        socket.pipe(socket);
      });
      return listenTcp(server, spec);
    }
    case 'dns-tcp':
      return listenTcp(net.createServer((socket) => serveDnsTcp(socket, config.records)), spec);
    case 'dns-udp': {
      const sock = createSocket('udp4');
      sock.on('message', (msg, rinfo) => {
        const answer = answerDns(msg, config.records);
        if (answer) sock.send(answer, rinfo.port, rinfo.address);
      });
      return bindUdp(sock, spec);
    }
    case 'canary-tcp': {
      const server = net.createServer((socket) => {
        send({ type: 'hit', transport: 'tcp', address: socket.localAddress ?? '', port: socket.localPort ?? 0, from: socket.remoteAddress ?? '' });
        socket.destroy();
      });
      return listenTcp(server, spec);
    }
    case 'canary-udp': {
      const sock = createSocket('udp4');
      sock.on('message', (_msg, rinfo) => send({ type: 'hit', transport: 'udp', address: spec.address, port: spec.port, from: rinfo.address }));
      return bindUdp(sock, spec);
    }
  }
}

function bindUdp(sock: ReturnType<typeof createSocket>, spec: ServiceSpec): Promise<void> {
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind({ address: spec.address, port: spec.port, exclusive: true }, () => {
      sock.off('error', reject);
      sock.on('error', () => {});
      resolve();
    });
  });
}

function listenToParent(): void {
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    let msg: { op?: unknown; id?: unknown };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return;
    }
    // Let connections the kernel already completed reach their accept callbacks first.
    if (msg.op === 'sync' && typeof msg.id === 'number') setImmediate(() => setImmediate(() => send({ type: 'synced', id: msg.id as number })));
  });
  lines.on('close', () => process.exit(0));
}

async function main(): Promise<void> {
  listenToParent();
  const config = parseServersConfig(process.argv[2] ?? '');
  const tls = config.tls ? { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) } : null;
  await Promise.all(config.services.map((s) => start(s, config, tls).catch((e: Error) => {
    throw new Error(`${s.kind} on ${s.address}:${s.port}: ${e.message}`);
  })));
  send({ type: 'ready' });
}

// Only when run as the program, not when the fixture imports its types and helpers.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: Error) => {
    send({ type: 'fatal', message: e.message });
    process.exit(1);
  });
}
