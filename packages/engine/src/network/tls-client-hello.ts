/**
 * Finds the server name (SNI) in the TLS ClientHello a sandbox sends, as it arrives.
 *
 * Hand-written on purpose: no well-kept npm library parses just a ClientHello without pulling
 * in a whole TLS stack, and the part we need is small and fixed (RFC 8446 §4.1.2 and §5.1,
 * RFC 6066 §3). Every length is bounds-checked; the hello may be split across TCP reads and
 * across several TLS records (censorship-evasion tools fragment it on purpose). Anything
 * ambiguous (two SNI extensions, two names, a name that is not plain ASCII) is invalid rather
 * than guessed at: the proxy refuses what it cannot read the same way the server would.
 */

/** A ClientHello longer than this is refused (real ones are 0.5-8 KiB, post-quantum included). */
export const MAX_CLIENT_HELLO_LENGTH = 64 * 1024;
/** More records than this for one ClientHello is abuse, not fragmentation. */
export const MAX_CLIENT_HELLO_RECORDS = 64;

const RECORD_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const EXT_SERVER_NAME = 0x0000;
const NAME_TYPE_HOST = 0x00;
const MAX_RECORD_LENGTH = 16_384 + 2_048; // TLSPlaintext limit plus the slack TLS 1.2 stacks accept

export type ClientHelloResult =
  /** Not enough bytes yet: call again once `need` bytes in total are buffered. */
  | { status: 'incomplete'; need: number }
  /** The whole ClientHello is in; serverName is null when the client sent no SNI. */
  | { status: 'complete'; serverName: string | null }
  | { status: 'invalid'; reason: string };

/** True when `data` starts like a TLS handshake record (what every TLS client sends first). */
export function looksLikeTls(data: Buffer): boolean {
  return data.length > 0 && data[0] === RECORD_HANDSHAKE;
}

/**
 * Parses `data` (everything the client sent so far) from its first byte. Stateless: the caller
 * calls again when more has arrived, but only once `need` bytes are there, which bounds the
 * work to a few passes over at most MAX_CLIENT_HELLO_RECORDS record headers.
 */
export function parseClientHello(data: Buffer): ClientHelloResult {
  const fragments: Buffer[] = [];
  let have = 0; // handshake bytes collected from complete records
  let want = -1; // 4 + handshake length, once known
  let pos = 0;
  for (let records = 0; ; records++) {
    if (want !== -1 && have >= want) break;
    if (records >= MAX_CLIENT_HELLO_RECORDS) return { status: 'invalid', reason: 'too many records' };
    if (data.length < pos + 5) return { status: 'incomplete', need: pos + 5 };
    if (data[pos] !== RECORD_HANDSHAKE) return { status: 'invalid', reason: 'not a handshake record' };
    if (data[pos + 1] !== 0x03) return { status: 'invalid', reason: 'not TLS' };
    const length = data.readUInt16BE(pos + 3);
    if (length === 0 || length > MAX_RECORD_LENGTH) return { status: 'invalid', reason: 'bad record length' };
    if (data.length < pos + 5 + length) return { status: 'incomplete', need: pos + 5 + length };
    fragments.push(data.subarray(pos + 5, pos + 5 + length));
    have += length;
    pos += 5 + length;
    if (want === -1 && have >= 4) {
      const head = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) return { status: 'invalid', reason: 'not a ClientHello' };
      const bodyLength = head.readUIntBE(1, 3);
      if (bodyLength > MAX_CLIENT_HELLO_LENGTH) return { status: 'invalid', reason: 'ClientHello too long' };
      want = 4 + bodyLength;
    }
  }
  const handshake = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
  return parseClientHelloBody(handshake.subarray(4, want));
}

/** A bounds-checked cursor: every read either succeeds inside `end` or throws Malformed. */
class Reader {
  constructor(private readonly b: Buffer, public pos: number, private readonly end: number) {}
  get left(): number { return this.end - this.pos; }
  u8(): number { this.need(1); return this.b[this.pos++]!; }
  u16(): number { this.need(2); const v = this.b.readUInt16BE(this.pos); this.pos += 2; return v; }
  skip(n: number): void { this.need(n); this.pos += n; }
  /** A sub-reader over the next `n` bytes; this reader moves past them. */
  sub(n: number): Reader { this.need(n); const r = new Reader(this.b, this.pos, this.pos + n); this.pos += n; return r; }
  bytes(n: number): Buffer { this.need(n); const s = this.b.subarray(this.pos, this.pos + n); this.pos += n; return s; }
  private need(n: number): void { if (n > this.left) throw new Malformed('truncated'); }
}

class Malformed extends Error {}

function parseClientHelloBody(body: Buffer): ClientHelloResult {
  try {
    const r = new Reader(body, 0, body.length);
    r.skip(2); // legacy_version
    r.skip(32); // random
    const sessionId = r.u8();
    if (sessionId > 32) throw new Malformed('session id too long');
    r.skip(sessionId);
    const suites = r.u16();
    if (suites < 2 || suites % 2 !== 0) throw new Malformed('bad cipher suites');
    r.skip(suites);
    const compression = r.u8();
    if (compression < 1) throw new Malformed('bad compression methods');
    r.skip(compression);
    if (r.left === 0) return { status: 'complete', serverName: null }; // TLS 1.0-1.2 without extensions
    const extensions = r.sub(r.u16());
    if (r.left !== 0) throw new Malformed('trailing bytes after extensions');
    let serverName: string | null = null;
    const seen = new Set<number>();
    while (extensions.left > 0) {
      const type = extensions.u16();
      const data = extensions.sub(extensions.u16());
      if (seen.has(type)) throw new Malformed('duplicate extension');
      seen.add(type);
      if (type === EXT_SERVER_NAME) serverName = parseServerName(data);
    }
    return { status: 'complete', serverName };
  } catch (e) {
    if (e instanceof Malformed) return { status: 'invalid', reason: e.message };
    throw e;
  }
}

function parseServerName(ext: Reader): string {
  const list = ext.sub(ext.u16());
  if (ext.left !== 0) throw new Malformed('trailing bytes in server_name');
  if (list.u8() !== NAME_TYPE_HOST) throw new Malformed('server_name is not a host name');
  const name = list.bytes(list.u16());
  if (list.left !== 0) throw new Malformed('more than one server name');
  if (name.length === 0) throw new Malformed('empty server name');
  for (const c of name) if (c <= 0x20 || c >= 0x7f) throw new Malformed('server name is not printable ASCII');
  return name.toString('latin1');
}
