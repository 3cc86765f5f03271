/**
 * The secret broker: sandboxes hold placeholders, the egress proxy hands it their connections
 * to secret hosts, and it puts the real values into requests to those hosts only, then takes
 * them out of whatever comes back. docs/secrets.md has the rules; in short:
 *
 * - swapped: the placeholders of THIS sandbox's secrets whose host list holds the connection's
 *   host, in request heads (target and fields) over TLS, plus the secret's header template;
 * - never swapped: placeholders in bodies, over plain HTTP, to any other host, or in requests
 *   whose Host is not the host the connection was verified for (those are refused: 421);
 * - a placeholder seen going anywhere it is not swapped raises policy.denied (once per
 *   connection and secret); it goes out as it is, a placeholder and nothing more;
 * - every response from a brokered connection is scrubbed of every value the sandbox's
 *   secrets hold (also JSON- and URL-encoded), back to the placeholder.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { parseAbsoluteTarget, parseAuthority, singleHeader, type RequestHead } from '../network/http-request-head.js';
import { serializeRequestHead, type HeadRewrite } from '../network/http-rewrite.js';
import { replaceAll, StreamReplacer, type Replacement } from '../network/http-rewrite-scrub.js';
import { terminate, type BrokeredTraffic, type BrokerTakeover, type EgressBroker } from '../network/tls-terminate.js';
import type { Handoff } from '../network/splice-relay.js';
import type { AirlockCa } from './airlock-ca.js';
import { parseHeaderTemplate, type SecretStore } from './secret-store.js';

export interface SandboxSecret { name: string; placeholder: string }

export type BrokerEventType = 'secret.used' | 'secret.error' | 'policy.denied';

export interface SecretBrokerOptions {
  store: SecretStore;
  /** The data dir's CA (opened on first use). */
  ca: () => Promise<AirlockCa>;
  /** PEM of an extra CA secret hosts may chain to (besides the public roots and the host's bundle). */
  upstreamCaPem?: string;
  onEvent(sandboxId: string, type: BrokerEventType, data: Record<string, unknown>): void;
}

interface Loaded {
  name: string;
  placeholder: string;
  value: string;
  hosts: string[];
  header: { name: string; before: string; after: string } | null;
}

/** Headers the broker takes off requests it rewrites: they would let the stream escape its parser or its scrubber. */
const DROPPED = new Set(['upgrade', 'te', 'http2-settings', 'accept-encoding']);

/** The forms in which a reflected value could come back: as sent, JSON-escaped, URL-encoded. */
function encodings(value: string): string[] {
  const json = JSON.stringify(value).slice(1, -1);
  const url = encodeURIComponent(value);
  return [...new Set([value, json, json.replace(/\//g, '\\/'), url, url.replace(/%20/g, '+'), url.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase())])];
}

/** The host a request names: absolute-form target first, else Host (RFC 9112 §3.2.2). */
function requestHost(head: RequestHead): string | null {
  if (/^https?:\/\//i.test(head.target)) {
    const t = parseAbsoluteTarget(head.target);
    return t.ok ? t.host.toLowerCase().replace(/\.$/, '') : null;
  }
  const host = singleHeader(head, 'host');
  if (host === null || host === 'duplicate') return null;
  const a = parseAuthority(host);
  return a.ok ? a.host.toLowerCase().replace(/\.$/, '') : null;
}

function systemBundle(): string[] {
  try {
    return [readFileSync('/etc/ssl/certs/ca-certificates.crt', 'utf8')];
  } catch {
    return [];
  }
}

export class SecretBroker implements EgressBroker {
  private readonly sandboxes = new Map<string, { tenant: string; secrets: SandboxSecret[] }>();
  private readonly upstreamCa: string[];

  constructor(private readonly o: SecretBrokerOptions) {
    this.upstreamCa = [...tls.rootCertificates, ...systemBundle(), ...(o.upstreamCaPem ? [o.upstreamCaPem] : [])];
  }

  /** Before the sandbox runs anything: its connections are brokered from the first one. */
  register(sandboxId: string, tenant: string, secrets: SandboxSecret[]): void {
    if (secrets.length > 0) this.sandboxes.set(sandboxId, { tenant, secrets: [...secrets] });
  }

  unregister(sandboxId: string): void {
    this.sandboxes.delete(sandboxId);
  }

  // ---- the egress proxy's hook ----------------------------------------------------------------

  brokers(sandboxId: string, host: string): boolean {
    const reg = this.sandboxes.get(sandboxId);
    if (!reg) return false;
    // Read now, not at create: a secret removed or re-pointed since applies to the next connection.
    return reg.secrets.some((s) => this.o.store.get(reg.tenant, s.name)?.hosts.includes(host) ?? false);
  }

  take(c: BrokerTakeover): Handoff {
    let traffic: BrokeredTraffic;
    try {
      traffic = this.traffic(c);
    } catch (e) {
      // E.g. the key file no longer opens the values: nothing is sent, the connection is cut.
      this.o.onEvent(c.sandboxId, 'secret.error', { host: c.host, port: c.port, reason: 'unavailable', detail: (e as Error).message });
      c.client.resetAndDestroy();
      c.upstream.destroy();
      return { done: Promise.resolve({ aToB: 0, bToA: 0 }), cut: () => {} };
    }
    return terminate({
      takeover: c,
      traffic,
      serverContext: () => this.o.ca().then((ca) => ca.contextFor(c.host)),
      upstreamCa: this.upstreamCa,
    });
  }

  inspector(sandboxId: string, target: { host: string; port: number }): ((chunk: Buffer) => void) | null {
    const reg = this.sandboxes.get(sandboxId);
    if (!reg) return null;
    const denied = this.deniedReporter(sandboxId, target.host, target.port, 'not-a-secret-host');
    const watch = new StreamReplacer(reg.secrets.map((s) => ({ from: Buffer.from(s.placeholder), to: Buffer.from(s.placeholder), label: s.name })), denied);
    return (chunk) => { watch.push(chunk); };
  }

  // ---- one connection ------------------------------------------------------------------------

  private traffic(c: BrokerTakeover): BrokeredTraffic {
    const reg = this.sandboxes.get(c.sandboxId);
    if (!reg) throw new Error('sandbox has no secrets');
    const loaded: Loaded[] = [];
    for (const s of reg.secrets) {
      const r = this.o.store.reveal(reg.tenant, s.name);
      if (!r) continue; // removed since: its placeholder is only a string now
      loaded.push({ name: s.name, placeholder: s.placeholder, value: r.value.toString('latin1'), hosts: r.info.hosts, header: r.info.header ? parseHeaderTemplate(r.info.header) : null });
    }
    // Only over TLS: a value never crosses the network in clear text.
    const swappable = c.tls ? loaded.filter((s) => s.hosts.includes(c.host)) : [];
    const others = loaded.filter((s) => !swappable.includes(s));
    const notHere = c.tls ? 'not-a-secret-host' : 'plaintext-http';
    const denied = this.deniedReporter(c.sandboxId, c.host, c.port, notHere);
    const scrub: Replacement[] = loaded.flatMap((s) => encodings(s.value).map((v) => ({ from: Buffer.from(v, 'latin1'), to: Buffer.from(s.placeholder, 'latin1'), label: s.name })));
    // Bodies are not swapped: every placeholder there is reported, sent as it is.
    const bodyDenied = this.deniedReporter(c.sandboxId, c.host, c.port, 'request-body');
    const bodyWatch = new StreamReplacer(loaded.map((s) => ({ from: Buffer.from(s.placeholder), to: Buffer.from(s.placeholder), label: s.name })), (name) => {
      if (swappable.some((s) => s.name === name)) bodyDenied(name);
      else denied(name);
    });

    return {
      rewriteHead: (head) => this.rewriteHead(c, head, swappable, others, denied),
      onRequestBody: (chunk) => { bodyWatch.push(chunk); },
      scrubHead: (buf) => replaceAll(buf, scrub),
      bodyScrubber: () => new StreamReplacer(scrub),
      onFailure: (reason, detail) => this.o.onEvent(c.sandboxId, 'secret.error', { host: c.host, port: c.port, reason, detail }),
    };
  }

  private rewriteHead(c: BrokerTakeover, head: RequestHead, swappable: Loaded[], others: Loaded[], denied: (name: string) => void): HeadRewrite {
    const placeholdersIn = (s: Loaded) => head.target.includes(s.placeholder) || head.headers.some(([, v]) => v.includes(s.placeholder));
    if (head.method === 'CONNECT') return { ok: false, refusal: { status: 405, message: 'CONNECT is not allowed inside a brokered connection' } };
    const host = requestHost(head);
    if (host !== c.host) {
      // Domain fronting: a shared front end would hand the request (and the value) to whoever `host` is.
      for (const s of [...swappable, ...others]) if (placeholdersIn(s)) this.deniedOnce(c.sandboxId, host ?? '(none)', c.port, s.name, 'misdirected-request');
      return { ok: false, refusal: { status: 421, message: `requests on this connection must be for ${c.host} (got ${host ?? 'no host'})` } };
    }
    for (const s of others) if (placeholdersIn(s)) denied(s.name);

    const connectionTokens = head.headers.filter(([n]) => n.toLowerCase() === 'connection')
      .flatMap(([, v]) => v.split(',').map((t) => t.trim()).filter((t) => t !== '' && t.toLowerCase() !== 'upgrade' && t.toLowerCase() !== 'http2-settings'));
    const fields: Array<[string, string]> = head.headers.filter(([n]) => !DROPPED.has(n.toLowerCase()) && n.toLowerCase() !== 'connection');
    if (connectionTokens.length) fields.push(['Connection', connectionTokens.join(', ')]);
    // Identity only: a compressed response could carry a value the scrubber cannot see.
    fields.push(['Accept-Encoding', 'identity']);

    let target = head.target;
    const used = new Map<string, 'placeholder' | 'header'>();
    for (const s of swappable) {
      if (s.header) {
        const tpl = s.header;
        const filled = `${tpl.before}${s.value}${tpl.after}`;
        const named = fields.filter(([n]) => n.toLowerCase() === tpl.name.toLowerCase());
        if (named.length === 0) {
          fields.push([tpl.name, filled]);
          used.set(s.name, 'header');
        } else {
          for (const f of named) if (f[1] === s.placeholder) { f[1] = filled; used.set(s.name, 'header'); }
        }
      }
      for (const f of fields) {
        if (!f[1].includes(s.placeholder)) continue;
        f[1] = f[1].split(s.placeholder).join(s.value);
        if (!used.has(s.name)) used.set(s.name, 'placeholder');
      }
      if (target.includes(s.placeholder)) {
        // In a URL the value is percent-encoded, as the code would have encoded the placeholder.
        target = target.split(s.placeholder).join(encodeURIComponent(s.value));
        if (!used.has(s.name)) used.set(s.name, 'placeholder');
      }
    }
    for (const [name, via] of used) {
      this.o.onEvent(c.sandboxId, 'secret.used', { secret: name, host: c.host, port: c.port, method: head.method, via });
    }
    return { ok: true, head: serializeRequestHead(head.method, target, head.version, fields) };
  }

  /** policy.denied for each secret whose placeholder heads where it is not swapped, once per connection. */
  private deniedReporter(sandboxId: string, host: string, port: number, reason: string): (name: string) => void {
    const seen = new Set<string>();
    return (name) => {
      if (seen.has(name)) return;
      seen.add(name);
      this.o.onEvent(sandboxId, 'policy.denied', { what: 'secret', secret: name, host, port, reason });
    };
  }

  private deniedOnce(sandboxId: string, host: string, port: number, name: string, reason: string): void {
    this.o.onEvent(sandboxId, 'policy.denied', { what: 'secret', secret: name, host, port, reason });
  }
}
