/**
 * HTTP/1.x framing for the secret broker: it must see every request head going to a secret
 * host (to put real values in) and every response byte coming back (to take them out again),
 * on keep-alive connections carrying several requests. Both directions are parsed strictly
 * (RFC 9112); whatever cannot be framed with certainty is refused, never passed on unparsed,
 * because an unparsed byte from the secret host is one the scrubber did not see.
 *
 * Requests: the head is rewritten by the caller; bodies pass through byte for byte (framing
 * tracked to find the next head). Responses: heads and bodies are scrubbed; bodies are sent
 * on chunked (or close-delimited for HTTP/1.0), since scrubbing changes their length.
 */
import { parseRequestHead, type RequestHead } from './http-request-head.js';
import { StreamReplacer } from './http-rewrite-scrub.js';

/** Request and response heads larger than this are refused. */
export const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 1024;
const MAX_TRAILERS = 16 * 1024;

export interface HttpRefusal { status: number; message: string }

// ---- chunked bodies ----------------------------------------------------------------------------

type ChunkState = 'size' | 'data' | 'data-crlf' | 'trailer' | 'done';

/**
 * Decodes a chunked body as it arrives. feed() stops at the body's end: `consumed` tells how
 * many bytes of the buffer belonged to it (the rest is the next message).
 */
export class ChunkedDecoder {
  private state: ChunkState = 'size';
  private line = '';
  private left = 0;
  private trailerBytes = 0;

  get done(): boolean { return this.state === 'done'; }

  feed(buf: Buffer): { consumed: number; data: Buffer[] } | { error: string } {
    const data: Buffer[] = [];
    let i = 0;
    while (i < buf.length && this.state !== 'done') {
      if (this.state === 'data') {
        const n = Math.min(this.left, buf.length - i);
        data.push(buf.subarray(i, i + n));
        i += n;
        this.left -= n;
        if (this.left === 0) this.state = 'data-crlf';
        continue;
      }
      // Line states: collect up to LF, then check the line.
      const lf = buf.indexOf(0x0a, i);
      const end = lf === -1 ? buf.length : lf + 1;
      this.line += buf.toString('latin1', i, end);
      i = end;
      const limit = this.state === 'trailer' ? MAX_TRAILERS : MAX_CHUNK_LINE;
      if (this.line.length > limit) return { error: 'chunk line too long' };
      if (lf === -1) break;
      const text = this.line;
      this.line = '';
      if (!text.endsWith('\r\n') || /[\r\n\0]/.test(text.slice(0, -2))) return { error: 'bad line ending in chunked body' };
      const content = text.slice(0, -2);
      if (this.state === 'data-crlf') {
        if (content !== '') return { error: 'chunk data longer than its size' };
        this.state = 'size';
      } else if (this.state === 'size') {
        const m = /^([0-9A-Fa-f]{1,12})[ \t]*(;[\x20-\x7e\t]*)?$/.exec(content);
        if (!m) return { error: 'bad chunk size' };
        this.left = parseInt(m[1]!, 16);
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else {
        // Trailer fields: checked for shape, then dropped by the callers (they may carry anything).
        this.trailerBytes += text.length;
        if (this.trailerBytes > MAX_TRAILERS) return { error: 'trailers too large' };
        if (content === '') this.state = 'done';
        else if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t\x80-\xff]*$/.test(content)) return { error: 'bad trailer field' };
      }
    }
    return { consumed: i, data };
  }
}

function chunk(data: Buffer): Buffer[] {
  return data.length === 0 ? [] : [Buffer.from(`${data.length.toString(16)}\r\n`, 'latin1'), data, Buffer.from('\r\n', 'latin1')];
}
const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1');

// ---- shared header helpers ---------------------------------------------------------------------

function values(headers: Array<[string, string]>, name: string): string[] {
  const lower = name.toLowerCase();
  return headers.filter(([n]) => n.toLowerCase() === lower).map(([, v]) => v);
}

type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

/** Transfer-Encoding / Content-Length of a message, strictly: null when they are ambiguous. */
function declaredFraming(headers: Array<[string, string]>, version?: string): BodyFraming | null {
  const te = values(headers, 'transfer-encoding');
  const cl = values(headers, 'content-length');
  if (te.length > 0) {
    // HTTP/1.0 has no chunked coding: servers differ on whether they honour it (RFC 9112 §6.1
    // calls the framing faulty), and one that does not reads the body as the next request.
    if (version === 'HTTP/1.0') return null;
    // Both, or a coding other than exactly one "chunked": request smuggling territory.
    if (cl.length > 0 || te.length !== 1 || te[0]!.toLowerCase() !== 'chunked') return null;
    return { kind: 'chunked' };
  }
  if (cl.length > 0) {
    const all = new Set(cl.flatMap((v) => v.split(',').map((s) => s.trim())));
    if (all.size !== 1) return null;
    const v = [...all][0]!;
    if (!/^\d{1,15}$/.test(v)) return null;
    return { kind: 'length', length: Number(v) };
  }
  return { kind: 'none' };
}

export function serializeRequestHead(method: string, target: string, version: string, headers: Array<[string, string]>): Buffer {
  const lines = [`${method} ${target} ${version}`, ...headers.map(([n, v]) => `${n}: ${v}`), '', ''];
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

// ---- requests (sandbox → secret host) ----------------------------------------------------------

export interface SentRequest { method: string; version: string }

export type HeadRewrite = { ok: true; head: Buffer } | { ok: false; refusal: HttpRefusal };

export interface RequestRewriterOptions {
  /**
   * Rewrites one parsed request head (called once per request, in order); `raw` is the head as
   * received. `hold`: stop after this request (its body included) and keep what follows until
   * resume() or takeHeld().
   */
  rewriteHead(head: RequestHead, raw: Buffer): HeadRewrite & { hold?: boolean };
  /** Every body byte as it passes, for inspection only. */
  onBody?(chunk: Buffer): void;
}

/**
 * The client's side of a brokered connection: splits it into requests, hands each head to
 * rewriteHead, passes bodies through. After a refusal it takes nothing more.
 */
export class RequestRewriter {
  /** Requests passed on whose responses have not begun yet, oldest first. */
  readonly sent: SentRequest[] = [];
  private buf: Buffer = Buffer.alloc(0);
  private body: { kind: 'length'; left: number } | { kind: 'chunked'; decoder: ChunkedDecoder } | null = null;
  private refused = false;
  private held = false;

  constructor(private readonly o: RequestRewriterOptions) {}

  /** Parses on after a `hold`. */
  resume(): { out: Buffer[]; refusal?: HttpRefusal } {
    this.held = false;
    return this.push(Buffer.alloc(0));
  }

  /** Ends parsing after a `hold`: returns what arrived since, unparsed; nothing is parsed again. */
  takeHeld(): Buffer {
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    this.refused = true;
    return rest;
  }

  /**
   * Bytes of the current request's Content-Length body still to come, when nothing past what
   * was pushed is buffered (else 0): bytes someone else may pass on unparsed (skipBody).
   */
  lengthBodyLeft(): number {
    if (this.refused || this.body?.kind !== 'length' || this.buf.length > 0) return 0;
    return this.body.left;
  }

  /** Counts `n` bytes of the current Content-Length body as passed on elsewhere; parsing goes on after them. */
  skipBody(n: number): void {
    if (!Number.isSafeInteger(n) || n <= 0 || n > this.lengthBodyLeft()) throw new Error('no such body bytes to skip');
    const body = this.body as { kind: 'length'; left: number };
    body.left -= n;
    if (body.left === 0) this.body = null;
  }

  push(data: Buffer): { out: Buffer[]; refusal?: HttpRefusal } {
    const out: Buffer[] = [];
    if (this.refused) return { out };
    let input = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    this.buf = Buffer.alloc(0);
    while (input.length > 0) {
      if (this.held && this.body === null) {
        this.buf = Buffer.from(input);
        break;
      }
      if (this.body?.kind === 'length') {
        const n = Math.min(this.body.left, input.length);
        const part = input.subarray(0, n);
        this.o.onBody?.(part);
        out.push(part);
        this.body.left -= n;
        input = input.subarray(n);
        if (this.body.left === 0) this.body = null;
        continue;
      }
      if (this.body?.kind === 'chunked') {
        const r = this.body.decoder.feed(input);
        if ('error' in r) return this.refuse(out, { status: 400, message: r.error });
        for (const d of r.data) this.o.onBody?.(d);
        out.push(input.subarray(0, r.consumed));
        input = input.subarray(r.consumed);
        if (this.body.decoder.done) this.body = null;
        continue;
      }
      const parsed = parseRequestHead(input, MAX_HEAD);
      if (parsed.status === 'incomplete') {
        this.buf = Buffer.from(input);
        break;
      }
      if (parsed.status === 'invalid') return this.refuse(out, { status: 400, message: parsed.reason });
      const { head } = parsed;
      const framing = declaredFraming(head.headers, head.version);
      if (framing === null) return this.refuse(out, { status: 400, message: 'ambiguous request body framing (Transfer-Encoding / Content-Length)' });
      const rewritten = this.o.rewriteHead(head, input.subarray(0, head.length));
      if (!rewritten.ok) return this.refuse(out, rewritten.refusal);
      if (rewritten.hold) this.held = true;
      out.push(rewritten.head);
      this.sent.push({ method: head.method, version: head.version });
      if (framing.kind === 'length' && framing.length > 0) this.body = { kind: 'length', left: framing.length };
      else if (framing.kind === 'chunked') this.body = { kind: 'chunked', decoder: new ChunkedDecoder() };
      input = input.subarray(head.length);
    }
    return { out };
  }

  private refuse(out: Buffer[], refusal: HttpRefusal): { out: Buffer[]; refusal: HttpRefusal } {
    this.refused = true;
    this.buf = Buffer.alloc(0);
    return { out, refusal };
  }
}

// ---- responses (secret host → sandbox) --------------------------------------------------------

export interface ResponseHead {
  version: string;
  status: number;
  reason: string;
  headers: Array<[string, string]>;
  length: number;
}

export function parseResponseHead(data: Buffer, maxLength = MAX_HEAD): { status: 'incomplete' } | { status: 'invalid'; reason: string } | { status: 'complete'; head: ResponseHead } {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1 || end + 4 > maxLength) {
    return data.length >= maxLength ? { status: 'invalid', reason: 'response head too large' } : { status: 'incomplete' };
  }
  const text = data.toString('latin1', 0, end);
  if (/[\0\n\r]/.test(text.replace(/\r\n/g, ''))) return { status: 'invalid', reason: 'bad line ending' };
  const lines = text.split('\r\n');
  const m = /^(HTTP\/1\.[01]) (\d{3})(?: ([\x20-\x7e\t\x80-\xff]*))?$/.exec(lines[0]!);
  if (!m) return { status: 'invalid', reason: 'bad status line' };
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return { status: 'invalid', reason: 'bad header line' };
    const name = line.slice(0, colon);
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) return { status: 'invalid', reason: 'bad header name' };
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return { status: 'invalid', reason: 'bad header value' };
    headers.push([name, value]);
  }
  return { status: 'complete', head: { version: m[1]!, status: Number(m[2]), reason: m[3] ?? '', headers, length: end + 4 } };
}

export interface ResponseRewriterOptions {
  /** The request this response answers (the rewriter's `sent` queue); undefined: none is waiting. */
  nextRequest(): SentRequest | undefined;
  /** Scrubs a whole response head (status line and fields). */
  scrubHead(head: Buffer): Buffer;
  /** A fresh scrubber for one response body. */
  bodyScrubber(): StreamReplacer;
}

type ResponseBody =
  | { kind: 'length'; left: number }
  | { kind: 'chunked'; decoder: ChunkedDecoder }
  | { kind: 'close' };

/**
 * The secret host's side: every response head and body goes through the scrubber before a
 * byte of it reaches the sandbox. `close` in a result: the connection must end after `out`.
 */
export class ResponseRewriter {
  private buf: Buffer = Buffer.alloc(0);
  private body: ResponseBody | null = null;
  private scrubber: StreamReplacer | null = null;
  /** The current response is sent close-delimited (HTTP/1.0 client or server). */
  private closeDelimited = false;
  private finished = false;

  constructor(private readonly o: ResponseRewriterOptions) {}

  /** Between responses (nothing half sent). */
  get idle(): boolean { return this.body === null && this.buf.length === 0; }

  push(data: Buffer): { out: Buffer[]; error?: string; close?: boolean } {
    const out: Buffer[] = [];
    if (this.finished) return { out };
    let input = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    this.buf = Buffer.alloc(0);
    while (input.length > 0) {
      const body = this.body;
      if (body) {
        if (body.kind === 'close') {
          this.emitBody(out, input);
          input = input.subarray(input.length);
        } else if (body.kind === 'length') {
          const n = Math.min(body.left, input.length);
          this.emitBody(out, input.subarray(0, n));
          body.left -= n;
          input = input.subarray(n);
          if (body.left === 0) {
            const end = this.endBody(out);
            if (end.close) return { out, close: true };
          }
        } else {
          const r = body.decoder.feed(input);
          if ('error' in r) return this.fail(out, r.error);
          for (const d of r.data) this.emitBody(out, d);
          input = input.subarray(r.consumed);
          if (body.decoder.done) {
            const end = this.endBody(out);
            if (end.close) return { out, close: true };
          }
        }
        continue;
      }
      const parsed = parseResponseHead(input);
      if (parsed.status === 'incomplete') {
        this.buf = Buffer.from(input);
        break;
      }
      if (parsed.status === 'invalid') return this.fail(out, parsed.reason);
      const r = this.startResponse(out, parsed.head, input.subarray(0, parsed.head.length));
      if ('error' in r) return this.fail(out, r.error);
      input = input.subarray(parsed.head.length);
      if (r.close) return { out, close: true };
    }
    return { out };
  }

  /** The secret host closed its side. */
  end(): { out: Buffer[]; error?: string } {
    const out: Buffer[] = [];
    if (this.finished) return { out };
    if (this.body?.kind === 'close') {
      this.endBody(out);
      return { out };
    }
    if (this.body || this.buf.length > 0) return this.fail(out, 'the secret host closed in the middle of a response');
    this.finished = true;
    return { out };
  }

  private startResponse(out: Buffer[], head: ResponseHead, raw: Buffer): { close?: boolean } | { error: string } {
    const interim = head.status >= 100 && head.status < 200;
    if (head.status === 101) return { error: 'protocol switch (101) is not brokered' };
    const req = interim ? undefined : this.o.nextRequest();
    if (!interim && !req) return { error: 'a response nobody asked for' };
    if (interim) {
      out.push(this.o.scrubHead(raw));
      return {};
    }
    const noBody = req!.method === 'HEAD' || head.status === 204 || head.status === 304;
    const framing = noBody ? { kind: 'none' as const } : declaredFraming(head.headers);
    if (framing === null) return { error: 'ambiguous response body framing' };
    const effective: BodyFraming = framing.kind === 'none' && !noBody && values(head.headers, 'content-length').length === 0 ? { kind: 'close' } : framing;
    if (effective.kind === 'none' || (effective.kind === 'length' && effective.length === 0)) {
      out.push(this.o.scrubHead(raw));
      return {};
    }
    // A coded body cannot be scrubbed: the broker asks for identity, so refuse anything else.
    const codings = values(head.headers, 'content-encoding').flatMap((v) => v.split(',')).map((s) => s.trim().toLowerCase()).filter((s) => s !== '' && s !== 'identity');
    if (codings.length > 0) return { error: `content-encoding ${codings.join(', ')} cannot be scrubbed` };
    // The scrubbed body's length is not known in advance: chunked to an HTTP/1.1 client, else close-delimited.
    this.closeDelimited = req!.version !== 'HTTP/1.1' || head.version !== 'HTTP/1.1';
    const drop = new Set(['content-length', 'transfer-encoding', ...(this.closeDelimited ? ['connection', 'keep-alive'] : [])]);
    const fields = head.headers.filter(([n]) => !drop.has(n.toLowerCase()));
    fields.push(this.closeDelimited ? ['Connection', 'close'] : ['Transfer-Encoding', 'chunked']);
    const lines = [`${head.version} ${head.status}${head.reason ? ` ${head.reason}` : ''}`, ...fields.map(([n, v]) => `${n}: ${v}`), '', ''];
    out.push(this.o.scrubHead(Buffer.from(lines.join('\r\n'), 'latin1')));
    this.scrubber = this.o.bodyScrubber();
    this.body = effective.kind === 'length' ? { kind: 'length', left: effective.length }
      : effective.kind === 'chunked' ? { kind: 'chunked', decoder: new ChunkedDecoder() }
        : { kind: 'close' };
    return {};
  }

  private emitBody(out: Buffer[], data: Buffer): void {
    const clean = this.scrubber!.push(data);
    if (this.closeDelimited) { if (clean.length) out.push(clean); } else out.push(...chunk(clean));
  }

  private endBody(out: Buffer[]): { close: boolean } {
    const rest = this.scrubber!.end();
    this.scrubber = null;
    this.body = null;
    if (this.closeDelimited) {
      if (rest.length) out.push(rest);
      this.finished = true;
      return { close: true };
    }
    out.push(...chunk(rest), LAST_CHUNK);
    return { close: false };
  }

  private fail(out: Buffer[], error: string): { out: Buffer[]; error: string } {
    this.finished = true;
    this.body = null;
    this.buf = Buffer.alloc(0);
    return { out, error };
  }
}
