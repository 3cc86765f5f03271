/**
 * Keeps a plaintext HTTP connection to the host it was allowed for. The egress proxy decides
 * on the first request's Host, but HTTP/1.1 connections carry many requests: a second one on
 * the same connection naming another host would reach whatever the allowed server routes that
 * host to (a CDN or any virtual-hosting front routes by Host), which is egress to a host the
 * policy never allowed. So every request on the connection is parsed with strict framing
 * (http-rewrite.ts: ambiguous bodies are refused, never guessed), and each must name the
 * allowed host. What cannot be checked is refused.
 *
 *   transparent  origin-form requests whose Host is the allowed name (absolute-form too, when
 *                it names the same host as Host); no CONNECT. A protocol switch is allowed to
 *                WebSocket only, on the first request only: the bytes after it wait until the
 *                server answers; 101 makes the rest an opaque tunnel, anything else more requests.
 *   explicit     a proxy client's absolute-form request, rewritten to origin form with
 *                Connection: close; the server answers it and closes, so one request per
 *                connection, and a further request head is refused.
 */
import { normalizeName } from './egress-policy.js';
import { parseAbsoluteTarget, parseAuthority, singleHeader, type RequestHead } from './http-request-head.js';
import { RequestRewriter, type HeadRewrite } from './http-rewrite.js';

export interface GuardRefusal { reason: string; detail?: string; name?: string }

export interface GuardResult {
  /** Bytes to pass on to the server, in order. */
  out: Buffer[];
  /** Set once: the connection must end; nothing after `out` may be passed on. */
  refusal?: GuardRefusal;
}

export interface RequestGuardOptions {
  /** The checked host name (lower case, no trailing dot). */
  name: string;
  mode: 'transparent' | 'explicit';
}

/**
 * Where an origin server routes the request. RFC 9112 §3.2.2 lets an absolute-form target win
 * over Host, but servers that route by Host alone exist, and one given no Host (or an empty one)
 * picks its default site, which may be another host altogether. So Host must be there and name
 * the host; an absolute-form target must name the same one.
 */
export function hostOfRequest(head: RequestHead): { name: string } | { reason: string; detail?: string } {
  const host = singleHeader(head, 'host');
  if (host === 'duplicate') return { reason: 'no-host', detail: 'several Host fields' };
  if (host === null || host === '') return { reason: 'no-host' };
  const a = parseAuthority(host);
  if (!a.ok) return a.reason === 'ipv6' ? { reason: 'ipv6' } : { reason: 'no-host', detail: 'bad Host' };
  const fromHost = normalizeName(a.host);
  if (/^https?:\/\//i.test(head.target)) {
    const t = parseAbsoluteTarget(head.target);
    if (!t.ok) return t.reason === 'ipv6' ? { reason: 'ipv6' } : { reason: 'no-host', detail: 'bad absolute target' };
    // Servers disagree on which one wins; a request naming two hosts is refused outright.
    const target = normalizeName(t.host);
    if (fromHost !== target) return { reason: 'host-mismatch', detail: `target ${target}, Host ${fromHost}` };
  }
  return { name: fromHost };
}

const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'upgrade']);

/** An absolute-form proxy request rewritten for the origin server: one request, then close. */
export function originFormHead(head: RequestHead, path: string, authority: string): Buffer {
  const named = new Set<string>();
  for (const [n, v] of head.headers) if (n.toLowerCase() === 'connection') for (const t of v.split(',')) named.add(t.trim().toLowerCase());
  const lines = [`${head.method} ${path} ${head.version}`, `Host: ${authority.toLowerCase()}`];
  for (const [n, v] of head.headers) {
    const lower = n.toLowerCase();
    if (lower === 'host' || HOP_BY_HOP.has(lower) || named.has(lower)) continue;
    lines.push(`${n}: ${v}`);
  }
  lines.push('Connection: close', '', '');
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

export class RequestGuard {
  private readonly rw: RequestRewriter;
  private requests = 0;
  private pendingRefusal: GuardRefusal | null = null;
  private refused = false;
  private state: 'requests' | 'upgrade-wait' | 'tunnel' = 'requests';

  constructor(private readonly o: RequestGuardOptions) {
    this.rw = new RequestRewriter({ rewriteHead: (head, raw) => this.check(head, raw) });
  }

  /** The first request asked for a protocol switch: hold the client until upgradeAnswered(). */
  get waitingForUpgrade(): boolean { return this.state === 'upgrade-wait'; }

  /** The server switched protocols: the bytes are no longer HTTP and pass unparsed. */
  get tunnel(): boolean { return this.state === 'tunnel'; }

  /**
   * Body bytes the current request still declares by Content-Length: framing already checked,
   * nothing in them is parsed, so they may go by another way (the relay) — skipBody() then.
   * 0 when there are none, or while anything is held, refused or tunnelled.
   */
  bodyLeft(): number {
    return this.refused || this.state !== 'requests' ? 0 : this.rw.lengthBodyLeft();
  }

  /** `n` body bytes (at most bodyLeft()) went on without passing here; the next bytes pushed follow them. */
  skipBody(n: number): void {
    if (this.refused || this.state !== 'requests') throw new Error('no body to skip');
    this.rw.skipBody(n);
  }

  push(data: Buffer): GuardResult {
    if (this.refused) return { out: [] };
    if (this.state === 'tunnel') return { out: data.length ? [data] : [] };
    return this.result(this.rw.push(data));
  }

  /**
   * The server's final answer to the upgrade request: 101 (switched) makes everything after
   * it a tunnel; any other status means the connection carries HTTP requests still.
   */
  upgradeAnswered(switched: boolean): GuardResult {
    if (this.state !== 'upgrade-wait' || this.refused) return { out: [] };
    if (switched) {
      this.state = 'tunnel';
      const rest = this.rw.takeHeld();
      return { out: rest.length ? [rest] : [] };
    }
    this.state = 'requests';
    return this.result(this.rw.resume());
  }

  private result(r: { out: Buffer[]; refusal?: { status: number; message: string } }): GuardResult {
    if (!r.refusal) return { out: r.out };
    this.refused = true;
    const refusal = this.pendingRefusal ?? { reason: 'bad-request', detail: r.refusal.message };
    this.pendingRefusal = null;
    return { out: r.out, refusal };
  }

  private check(head: RequestHead, raw: Buffer): HeadRewrite & { hold?: boolean } {
    const n = this.requests++;
    const refuse = (g: GuardRefusal): HeadRewrite => {
      this.pendingRefusal = g;
      return { ok: false, refusal: { status: 400, message: g.detail ?? g.reason } };
    };
    if (this.o.mode === 'explicit') {
      if (n > 0) return refuse({ reason: 'bad-request', detail: 'one request per proxy connection (it was sent with Connection: close)' });
      if (head.method === 'CONNECT') return refuse({ reason: 'bad-request', detail: 'CONNECT after the connection was set up' });
      const t = parseAbsoluteTarget(head.target);
      if (!t.ok || t.scheme !== 'http') return refuse({ reason: 'bad-request', detail: 'needs an absolute http:// target' });
      if (normalizeName(t.host) !== this.o.name) return refuse({ reason: 'host-changed', name: normalizeName(t.host) });
      return { ok: true, head: originFormHead(head, t.path, t.authority) };
    }
    if (head.method === 'CONNECT') return refuse({ reason: 'bad-request', detail: 'CONNECT on a transparent connection' });
    const host = hostOfRequest(head);
    if ('reason' in host) return refuse(host);
    if (host.name !== this.o.name) return refuse({ reason: 'host-changed', name: host.name });
    const upgrade = singleHeader(head, 'upgrade');
    if (upgrade !== null) {
      // Only the first request's answer is surely the first response the proxy sees.
      if (n > 0) return refuse({ reason: 'bad-request', detail: 'Upgrade after the first request' });
      // After a switch the bytes pass unchecked. A WebSocket stays with the server that took the
      // upgrade; h2c carries requests that each name a host (:authority), and a TLS upgrade
      // (RFC 2817) a new SNI, so either would reopen the host switch this guard exists to stop.
      if (upgrade === 'duplicate' || upgrade.toLowerCase() !== 'websocket') {
        return refuse({ reason: 'bad-request', detail: `only WebSocket upgrades are relayed (Upgrade: ${upgrade === 'duplicate' ? 'several fields' : upgrade})` });
      }
      this.state = 'upgrade-wait';
      return { ok: true, head: raw, hold: true };
    }
    return { ok: true, head: raw };
  }
}

/**
 * Reads the server's first response heads on a connection whose first request asked to
 * switch protocols: resolves true on 101, false on any other final status (1xx interim
 * answers are skipped). Bytes are only looked at, never held.
 */
export class UpgradeAnswerWatch {
  private buf: Buffer = Buffer.alloc(0);
  private decided = false;

  /** null while undecided; then true (switched) or false. A head that is no HTTP response counts as not switched. */
  feed(data: Buffer): boolean | null {
    if (this.decided) return null;
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (this.buf.length > 64 * 1024) return this.decide(false);
        return null;
      }
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(this.buf.toString('latin1', 0, Math.min(end, 16)));
      if (!m) return this.decide(false);
      const status = Number(m[1]);
      if (status === 101) return this.decide(true);
      if (status >= 200 || status < 100) return this.decide(false);
      this.buf = this.buf.subarray(end + 4); // 100 Continue, 103 Early Hints: no body, another head follows
    }
  }

  private decide(v: boolean): boolean {
    this.decided = true;
    this.buf = Buffer.alloc(0);
    return v;
  }
}
