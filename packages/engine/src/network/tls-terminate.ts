/**
 * One brokered connection: the egress proxy hands over an allowed, connected pair whose host
 * is a secret host of the sandbox. For TLS, the sandbox's side is terminated here with a
 * certificate of the Airlock CA (the sandbox trusts it) and the secret host's side is a new
 * TLS connection verified against the real CAs; plain HTTP is parsed as it is. Every request
 * head goes through the broker's rewrite, every response byte through its scrubber
 * (http-rewrite.ts). These pairs stay in Node for their whole life: the kernel relay never
 * sees a connection whose bytes are being rewritten.
 */
import { Duplex } from 'node:stream';
import type net from 'node:net';
import tls, { type SecureContext } from 'node:tls';
import type { RequestHead } from './http-request-head.js';
import { RequestRewriter, ResponseRewriter, type HeadRewrite, type HttpRefusal } from './http-rewrite.js';
import type { StreamReplacer } from './http-rewrite-scrub.js';
import type { Handoff, RelayResult } from './splice-relay.js';

/** What the broker does to one connection's traffic (secret-broker.ts). */
export interface BrokeredTraffic {
  rewriteHead(head: RequestHead): HeadRewrite;
  onRequestBody(chunk: Buffer): void;
  scrubHead(head: Buffer): Buffer;
  bodyScrubber(): StreamReplacer;
  /** Something went wrong that the audit trail should show (TLS failure, unparsable response). */
  onFailure(reason: string, detail: string): void;
}

/** The hook the egress proxy calls (egress-proxy.ts); implemented by secrets/secret-broker.ts. */
export interface EgressBroker {
  /** Whether this sandbox's connections to `host` must be brokered (it holds a secret for it). */
  brokers(sandboxId: string, host: string): boolean;
  /** Takes over an allowed, connected pair; the proxy learns its end from the Handoff. */
  take(c: BrokerTakeover): Handoff;
  /** For a sandbox with secrets: watches a plaintext connection to another host for placeholders (null: nothing to watch). */
  inspector(sandboxId: string, target: { host: string; port: number }): ((chunk: Buffer) => void) | null;
}

export interface BrokerTakeover {
  sandboxId: string;
  host: string;
  port: number;
  client: net.Socket;
  upstream: net.Socket;
  /** Bytes already read from the client (the ClientHello, or the first request). */
  head: Buffer;
  /** The proxy's own answer to send the client first (explicit CONNECT). */
  reply?: Buffer;
  tls: boolean;
}

export interface TerminateOptions {
  takeover: BrokerTakeover;
  traffic: BrokeredTraffic;
  /** The certificate shown to the sandbox (TLS only). */
  serverContext?: () => Promise<SecureContext>;
  /** CAs the secret host's certificate must chain to (TLS only). */
  upstreamCa?: string[];
}

/** Requests read ahead while the upstream handshake runs: bounded, then the client waits. */
const MAX_EARLY_BYTES = 1024 * 1024;

/** The client socket, with the bytes the proxy already read put back in front. */
class PrefixedSocket extends Duplex {
  private prefix: Buffer | null;

  constructor(prefix: Buffer, private readonly socket: net.Socket) {
    super({ allowHalfOpen: true });
    this.prefix = prefix.length ? prefix : null;
    socket.on('data', (d: Buffer) => { if (!this.push(d)) socket.pause(); });
    socket.on('end', () => this.push(null));
    socket.on('error', (e) => this.destroy(e));
    socket.on('close', () => this.destroy());
  }

  override _read(): void {
    if (this.prefix) {
      const p = this.prefix;
      this.prefix = null;
      this.push(p);
    }
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.socket.write(chunk, cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.socket.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

function refusalResponse(r: HttpRefusal): Buffer {
  const text = r.status === 400 ? 'Bad Request' : r.status === 421 ? 'Misdirected Request' : r.status === 405 ? 'Method Not Allowed' : r.status === 502 ? 'Bad Gateway' : 'Forbidden';
  const body = `airlock: ${r.message}\n`;
  return Buffer.from(`HTTP/1.1 ${r.status} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`, 'latin1');
}

/** Runs the brokered connection; the returned Handoff settles once both sockets are closed. */
export function terminate(o: TerminateOptions): Handoff {
  const { client, upstream, head, reply } = o.takeover;
  const traffic = o.traffic;
  let clientSide: Duplex = client;
  let upstreamSide: Duplex = upstream;
  let upstreamReady = !o.takeover.tls;
  let clientReady = !o.takeover.tls;
  let over = false;
  const early: Buffer[] = [];
  let earlyBytes = 0;
  let pendingRefusal: HttpRefusal | null = null;
  /** The upstream handshake failed before the sandbox's finished: answered once it has. */
  let upstreamFailed: HttpRefusal | null = null;

  let settle!: (r: RelayResult) => void;
  const done = new Promise<RelayResult>((resolve) => { settle = resolve; });
  let clientClosed = false;
  let upstreamClosed = false;
  const replyBytes = reply?.length ?? 0;
  const onRawClose = (): void => {
    if (!clientClosed || !upstreamClosed) return;
    settle({ aToB: upstream.bytesWritten, bToA: Math.max(0, client.bytesWritten - replyBytes) });
  };
  client.once('close', () => { clientClosed = true; destroyAll(false); onRawClose(); });
  upstream.once('close', () => { upstreamClosed = true; onRawClose(); });

  const destroyAll = (reset: boolean): void => {
    over = true;
    for (const s of [clientSide, upstreamSide]) if (s !== client && s !== upstream) s.destroy();
    for (const s of [client, upstream]) {
      if (s.destroyed) continue;
      if (reset && !s.connecting && !s.writableEnded) s.resetAndDestroy();
      else s.destroy();
    }
  };

  const req = new RequestRewriter({ rewriteHead: (h) => traffic.rewriteHead(h), onBody: (c) => traffic.onRequestBody(c) });
  const res = new ResponseRewriter({
    nextRequest: () => req.sent.shift(),
    scrubHead: (b) => traffic.scrubHead(b),
    bodyScrubber: () => traffic.bodyScrubber(),
  });

  /** Answers the client ourselves and closes: no request after the refused one goes out. */
  const answerAndClose = (r: HttpRefusal): void => {
    over = true;
    clientSide.end(refusalResponse(r));
    upstreamSide.destroy();
    setTimeout(() => destroyAll(false), 2000).unref();
  };

  const fromClient = (d: Buffer): void => {
    if (over || pendingRefusal) return;
    if (!upstreamReady) {
      early.push(d);
      earlyBytes += d.length;
      if (earlyBytes > MAX_EARLY_BYTES) clientSide.pause();
      return;
    }
    const r = req.push(d);
    for (const b of r.out) if (!upstreamSide.write(b)) { clientSide.pause(); upstreamSide.once('drain', () => clientSide.resume()); }
    if (r.refusal) {
      // Earlier requests may still be answered; the refusal follows their responses.
      if (req.sent.length === 0 && res.idle) answerAndClose(r.refusal);
      else { pendingRefusal = r.refusal; clientSide.pause(); }
    }
  };

  const fromUpstream = (d: Buffer): void => {
    if (over) return;
    const r = res.push(d);
    for (const b of r.out) if (!clientSide.write(b)) { upstreamSide.pause(); clientSide.once('drain', () => upstreamSide.resume()); }
    if (r.error) {
      traffic.onFailure('bad-response', r.error);
      // Part of a response may be out: the client must see a cut, not a complete message.
      destroyAll(true);
      return;
    }
    if (r.close) {
      over = true;
      clientSide.end();
      upstreamSide.destroy();
      return;
    }
    if (pendingRefusal && req.sent.length === 0 && res.idle) answerAndClose(pendingRefusal);
  };

  const onUpstreamEnd = (): void => {
    if (over) return;
    const r = res.end();
    for (const b of r.out) clientSide.write(b);
    if (r.error) {
      traffic.onFailure('bad-response', r.error);
      destroyAll(true);
      return;
    }
    if (pendingRefusal) return answerAndClose(pendingRefusal);
    over = true;
    clientSide.end();
  };

  const startPumps = (): void => {
    clientSide.on('data', fromClient);
    clientSide.on('end', () => { if (!over && !pendingRefusal) upstreamSide.end(); });
    clientSide.on('error', () => destroyAll(true));
    upstreamSide.on('data', fromUpstream);
    upstreamSide.on('end', onUpstreamEnd);
    // The TLS upstream has its own error handler (below): its handshake failure is answered.
    if (!o.takeover.tls) upstreamSide.on('error', () => destroyAll(true));
  };

  const flushEarly = (): void => {
    upstreamReady = true;
    const queued = early.splice(0);
    const paused = earlyBytes > MAX_EARLY_BYTES;
    earlyBytes = 0;
    for (const d of queued) fromClient(d);
    if (paused && !over) clientSide.resume();
  };

  client.setNoDelay(true);
  if (reply) client.write(reply);

  if (!o.takeover.tls) {
    startPumps();
    if (head.length) fromClient(head);
    client.resume();
    return { done, cut: () => destroyAll(true) };
  }

  // TLS both ways. The upstream handshake starts at once; client requests wait for it.
  const secureUpstream = tls.connect({
    socket: upstream,
    servername: o.takeover.host,
    ALPNProtocols: ['http/1.1'],
    ca: o.upstreamCa,
    minVersion: 'TLSv1.2',
  });
  upstreamSide = secureUpstream;
  secureUpstream.once('secureConnect', () => {
    if (over) return;
    flushEarly();
  });
  secureUpstream.on('error', (e: Error) => {
    if (over) return;
    if (upstreamReady) return destroyAll(true);
    traffic.onFailure('upstream-tls', e.message);
    const answer = { status: 502, message: `TLS to ${o.takeover.host} failed: ${e.message}` };
    if (clientReady) answerAndClose(answer);
    else upstreamFailed = answer;
  });

  void (async () => {
    let ctx: SecureContext;
    try {
      ctx = await o.serverContext!();
    } catch (e) {
      traffic.onFailure('certificate', (e as Error).message);
      destroyAll(true);
      return;
    }
    if (over) return;
    const secureClient = new tls.TLSSocket(new PrefixedSocket(head, client), {
      isServer: true,
      secureContext: ctx,
      ALPNProtocols: ['http/1.1'],
    });
    clientSide = secureClient;
    secureClient.once('secure', () => {
      clientReady = true;
      if (upstreamFailed && !over) answerAndClose(upstreamFailed);
    });
    secureClient.on('error', (e: Error) => {
      if (!clientReady) traffic.onFailure('client-tls', e.message);
      destroyAll(true);
    });
    // No bytes go upstream before it is verified: fromClient queues early requests (bounded).
    startPumps();
  })();

  return { done, cut: () => destroyAll(true) };
}
