/**
 * Reads the head of the first HTTP/1.x request on a connection: the request line and the
 * header fields, enough for the egress proxy to learn where the request is going (Host,
 * absolute-form target, CONNECT authority). Strict on purpose (RFC 9112): obs-fold, bare LF,
 * a second Host field or a malformed line make the head invalid instead of being guessed at,
 * so the proxy never checks one name while the server reads another.
 */

export const MAX_REQUEST_HEAD = 16 * 1024;
const MAX_METHOD = 32;

export interface RequestHead {
  method: string;
  /** As sent: origin-form (/x), absolute-form (http://h/x), authority-form (h:443) or '*'. */
  target: string;
  /** 'HTTP/1.0' or 'HTTP/1.1'. */
  version: string;
  /** In order, names as sent, values without surrounding whitespace. */
  headers: Array<[string, string]>;
  /** Bytes up to and including the blank line that ends the head. */
  length: number;
}

export type RequestHeadResult =
  | { status: 'incomplete' }
  | { status: 'complete'; head: RequestHead }
  | { status: 'invalid'; reason: string };

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const TOKEN_CHAR = /^[!#$%&'*+.^_`|~0-9A-Za-z-]$/;
const VERSION = /^HTTP\/1\.[01]$/;

/**
 * Can `data` still become a valid request line? Lets the proxy refuse garbage (or another
 * protocol) at its first bytes instead of waiting for a head that never comes.
 */
export function couldBeHttpRequest(data: Buffer): boolean {
  const limit = Math.min(data.length, MAX_METHOD + 1);
  for (let i = 0; i < limit; i++) {
    const c = String.fromCharCode(data[i]!);
    if (c === ' ') return i > 0;
    if (!TOKEN_CHAR.test(c)) return false;
  }
  return data.length <= MAX_METHOD;
}

/** Parses the head at the start of `data`; 'incomplete' until the blank line is in. */
export function parseRequestHead(data: Buffer, maxLength = MAX_REQUEST_HEAD): RequestHeadResult {
  if (!couldBeHttpRequest(data)) return { status: 'invalid', reason: 'not an HTTP request' };
  const end = data.indexOf('\r\n\r\n');
  if (end === -1 || end + 4 > maxLength) {
    return data.length >= maxLength ? { status: 'invalid', reason: 'request head too large' } : { status: 'incomplete' };
  }
  const text = data.toString('latin1', 0, end);
  // A bare CR or LF anywhere means a line split the server may read differently.
  if (/[\0\n\r]/.test(text.replace(/\r\n/g, ''))) return { status: 'invalid', reason: 'bad line ending' };
  const lines = text.split('\r\n');
  const parts = lines[0]!.split(' ');
  if (parts.length !== 3) return { status: 'invalid', reason: 'bad request line' };
  const [method, target, version] = parts as [string, string, string];
  if (!TOKEN.test(method) || method.length > MAX_METHOD) return { status: 'invalid', reason: 'bad method' };
  if (!/^[\x21-\x7e]+$/.test(target)) return { status: 'invalid', reason: 'bad request target' };
  if (!VERSION.test(version)) return { status: 'invalid', reason: 'not HTTP/1.x' };
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return { status: 'invalid', reason: 'bad header line' };
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return { status: 'invalid', reason: 'bad header name' }; // also rejects obs-fold
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return { status: 'invalid', reason: 'bad header value' };
    headers.push([name, value]);
  }
  return { status: 'complete', head: { method, target, version, headers, length: end + 4 } };
}

/** The value of the only `name` field; null when absent, 'duplicate' when there are several. */
export function singleHeader(head: RequestHead, name: string): string | null | 'duplicate' {
  const lower = name.toLowerCase();
  const found = head.headers.filter(([n]) => n.toLowerCase() === lower);
  if (found.length > 1) return 'duplicate';
  return found.length === 1 ? found[0]![1] : null;
}

export type Authority =
  | { ok: true; host: string; port: number | null }
  | { ok: false; reason: 'ipv6' | 'bad-authority' };

/**
 * Splits `host[:port]` (a Host value or the authority of a target). An IPv6 literal in
 * brackets is recognised only to be refused: sandboxes have no IPv6 egress.
 */
export function parseAuthority(text: string): Authority {
  if (text.startsWith('[')) return { ok: false, reason: 'ipv6' };
  const m = /^([^:@/?#\s[\]]+)(?::(\d{1,5}))?$/.exec(text);
  if (!m) return { ok: false, reason: 'bad-authority' };
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && (port < 1 || port > 65_535)) return { ok: false, reason: 'bad-authority' };
  return { ok: true, host: m[1]!, port };
}

export type AbsoluteTarget =
  | { ok: true; scheme: 'http' | 'https'; authority: string; host: string; port: number; path: string }
  | { ok: false; reason: 'ipv6' | 'bad-authority' | 'not-absolute' };

/** `http://host[:port]/path?q` → its parts; path is origin-form ('/' when empty). */
export function parseAbsoluteTarget(target: string): AbsoluteTarget {
  const m = /^(https?):\/\/([^/?#]*)([^#]*)$/i.exec(target);
  if (!m) return { ok: false, reason: 'not-absolute' };
  const scheme = m[1]!.toLowerCase() as 'http' | 'https';
  const authority = m[2]!;
  if (authority.includes('@')) return { ok: false, reason: 'bad-authority' }; // userinfo: ambiguous, never needed
  const a = parseAuthority(authority);
  if (!a.ok) return a;
  const rest = m[3]!;
  const path = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
  return { ok: true, scheme, authority, host: a.host, port: a.port ?? (scheme === 'https' ? 443 : 80), path };
}
