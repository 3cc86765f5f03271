/**
 * Wire format between the host and the in-sandbox agent (docs/agent-protocol.md).
 *
 * Every frame: u32 length (counts the 5 bytes of type + channel and the payload), u8 type,
 * u32 channel, payload. Integers are big-endian, strings NUL-terminated UTF-8.
 * The agent is untrusted: every decoder here checks bounds and throws ProtocolError.
 */

export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 9;
/** Largest payload either side accepts; a frame's length field is at most 5 + this. */
export const MAX_PAYLOAD = 1024 * 1024;
export const MAX_FRAME_LENGTH = 5 + MAX_PAYLOAD;
export const STAT_BYTES = 21;

export const MsgType = {
  // host → agent
  EXEC: 1,
  STDIN: 2,
  SIGNAL: 3,
  PS: 4,
  KILLPID: 5,
  PING: 6,
  CANCEL: 7,
  RESIZE: 8,
  FLOW: 9,
  FREAD: 10,
  FWRITE_BEGIN: 11,
  FWRITE_DATA: 12,
  FLIST: 13,
  FDELETE: 14,
  FSTAT: 15,
  FMKDIR: 16,
  FRENAME: 17,
  FWATCH: 18,
  FWALK: 19,
  LWALK: 20,
  LREAD: 21,
  // agent → host
  HELLO: 128,
  STARTED: 129,
  STDOUT: 130,
  STDERR: 131,
  EXIT: 132,
  ERROR: 133,
  PS_RESULT: 134,
  PONG: 135,
  FDATA: 136,
  FOK: 137,
  FLIST_RESULT: 138,
  FWALK_ENTRY: 139,
  FEVENT: 140,
  LWALK_RESULT: 141,
} as const;

/** Highest frame type the agent may send. */
export const MAX_AGENT_TYPE = MsgType.LWALK_RESULT;
/** LWALK: the agent stops (ERROR E2BIG) past this many entries; more from it is a protocol error. */
export const LWALK_MAX_ENTRIES = 20_000;

export const ExecFlags = { KEEP_STDIN: 1, BACKGROUND: 2, PTY: 4 } as const;
/** Terminal sizes either side accepts (rows and cols each). */
export const PTY_MIN_SIZE = 1;
export const PTY_MAX_SIZE = 1000;
export const EXIT_TIMED_OUT = 1;
export const EXIT_OOM_KILLED = 2;

export interface Frame {
  type: number;
  channel: number;
  payload: Buffer;
}

export interface AgentFileStat {
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtimeSec: number;
}

export interface AgentDirEntry extends AgentFileStat {
  name: string;
}

/** One entry of an FWALK: a path relative to the walked directory, never `..`, never absolute. */
export interface AgentWalkEntry extends AgentFileStat {
  type: 'file' | 'dir' | 'symlink';
  path: string;
  /** The link's target as stored (never resolved); '' unless a symlink. */
  linkTarget: string;
}

/**
 * One entry of an LWALK (a microvm's writable layer, walked by the guest's agent): a path
 * relative to the layer's upper dir. 'whiteout' is an overlay whiteout (a deleted lower file).
 */
export interface AgentLayerEntry {
  type: 'file' | 'dir' | 'symlink' | 'whiteout' | 'other';
  /** Regular files and links; 0 otherwise. */
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
  path: string;
}

export type AgentEventKind = 'ready' | 'created' | 'modified' | 'deleted' | 'moved' | 'overflow' | 'ended';

/** One FEVENT of a watch; paths are absolute inside the sandbox. */
export interface AgentFileEvent {
  kind: AgentEventKind;
  path: string;
  isDir: boolean;
  /** For 'moved': where it was. */
  from?: string;
}

export interface AgentProcess {
  pid: number;
  channel: number;
  cmdline: string[];
}

export interface AgentExecSpec {
  argv: string[];
  /** "K=V" entries; PATH is looked up in these. */
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  /** 0 = no per-exec timeout. */
  timeoutMs: number;
  keepStdinOpen: boolean;
  background: boolean;
  /** Run on a new pseudo-terminal of this size (stdin stays open; no stderr of its own). */
  pty?: PtySize;
}

export interface PtySize {
  rows: number;
  cols: number;
}

export interface AgentExit {
  /** Exit status, -1 when killed by a signal. */
  code: number;
  signal: number;
  timedOut: boolean;
  /** microvm only: SIGKILLed while the guest kernel's OOM killer ran (the host cannot see it). */
  oomKilled?: boolean;
}

/** The peer broke the protocol; the connection must be dropped. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

// ---- encoding ----

export function encodeHeader(type: number, channel: number, payloadLength: number): Buffer {
  if (payloadLength > MAX_PAYLOAD) throw new RangeError(`payload of ${payloadLength} bytes exceeds ${MAX_PAYLOAD}`);
  const h = Buffer.allocUnsafe(HEADER_BYTES);
  h.writeUInt32BE(5 + payloadLength, 0);
  h.writeUInt8(type, 4);
  h.writeUInt32BE(channel >>> 0, 5);
  return h;
}

/** One frame as one buffer (small frames: one copy beats two socket writes). */
export function encodeFrame(type: number, channel: number, payload?: Buffer): Buffer {
  const len = payload ? payload.length : 0;
  if (len > MAX_PAYLOAD) throw new RangeError(`payload of ${len} bytes exceeds ${MAX_PAYLOAD}`);
  const f = Buffer.allocUnsafe(HEADER_BYTES + len);
  f.writeUInt32BE(5 + len, 0);
  f.writeUInt8(type, 4);
  f.writeUInt32BE(channel >>> 0, 5);
  if (payload) payload.copy(f, HEADER_BYTES);
  return f;
}

/** Writes u32s, u16s and NUL-terminated strings into one exactly-sized buffer. */
class PayloadWriter {
  /** number: a u32; Buffer: a string's bytes (NUL added); raw: bytes as they are. */
  private readonly parts: (number | Buffer | { raw: Buffer })[] = [];
  private size = 0;
  u32(v: number): this {
    this.parts.push(v >>> 0);
    this.size += 4;
    return this;
  }
  u16(v: number): this {
    const raw = Buffer.allocUnsafe(2);
    raw.writeUInt16BE(v & 0xffff, 0);
    this.parts.push({ raw });
    this.size += 2;
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    this.parts.push(b);
    this.size += b.length + 1;
    return this;
  }
  get length(): number {
    return this.size;
  }
  finish(): Buffer {
    const out = Buffer.allocUnsafe(this.size);
    let o = 0;
    for (const p of this.parts) {
      if (typeof p === 'number') {
        out.writeUInt32BE(p, o);
        o += 4;
      } else if (!Buffer.isBuffer(p)) {
        p.raw.copy(out, o);
        o += p.raw.length;
      } else {
        p.copy(out, o);
        o += p.length;
        out[o++] = 0;
      }
    }
    return out;
  }
}

export function isPtySize(s: unknown): s is PtySize {
  const ok = (n: unknown) => Number.isInteger(n) && (n as number) >= PTY_MIN_SIZE && (n as number) <= PTY_MAX_SIZE;
  return typeof s === 'object' && s !== null && ok((s as PtySize).rows) && ok((s as PtySize).cols);
}

export function encodeExec(spec: AgentExecSpec): Buffer {
  const flags = (spec.keepStdinOpen ? ExecFlags.KEEP_STDIN : 0) | (spec.background ? ExecFlags.BACKGROUND : 0)
    | (spec.pty ? ExecFlags.PTY : 0);
  const w = new PayloadWriter().u32(flags).u32(spec.uid).u32(spec.gid).u32(spec.timeoutMs).str(spec.cwd);
  w.u32(spec.argv.length);
  for (const a of spec.argv) w.str(a);
  w.u32(spec.env.length);
  for (const e of spec.env) w.str(e);
  if (spec.pty) {
    if (!isPtySize(spec.pty)) throw new RangeError(`pty rows and cols must be integers from ${PTY_MIN_SIZE} to ${PTY_MAX_SIZE}`);
    w.u16(spec.pty.rows).u16(spec.pty.cols);
  }
  if (w.length > MAX_PAYLOAD) throw new RangeError('exec request exceeds 1 MiB (argv + env too large)');
  return w.finish();
}

/** RESIZE: `u16 rows, u16 cols`. */
export function encodeResize(size: PtySize): Buffer {
  if (!isPtySize(size)) throw new RangeError(`pty rows and cols must be integers from ${PTY_MIN_SIZE} to ${PTY_MAX_SIZE}`);
  const b = Buffer.allocUnsafe(4);
  b.writeUInt16BE(size.rows, 0);
  b.writeUInt16BE(size.cols, 2);
  return b;
}

export function encodeU32s(...values: number[]): Buffer {
  const b = Buffer.allocUnsafe(values.length * 4);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, i * 4));
  return b;
}

/** `u32 …, path\0`: the shape of every file request. */
export function encodePathRequest(path: string, ...prefix: number[]): Buffer {
  const w = new PayloadWriter();
  for (const v of prefix) w.u32(v);
  return w.str(path).finish();
}

/** FRENAME: `u32 flags, from\0, to\0`. */
export function encodeRename(from: string, to: string, overwrite: boolean): Buffer {
  return new PayloadWriter().u32(overwrite ? 1 : 0).str(from).str(to).finish();
}

export function encodeHello(token: string, version = PROTOCOL_VERSION): Buffer {
  return new PayloadWriter().u32(version).str(token).finish();
}

// ---- decoding ----

/**
 * Splits a byte stream into frames. Bounds every length before buffering its payload and
 * throws ProtocolError on a violation; after one, every later push throws too.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private broken: ProtocolError | null = null;

  constructor(private maxPayload = MAX_PAYLOAD) {}

  /** Lowers or raises the payload bound (e.g. small before authentication). */
  setMaxPayload(n: number): void {
    this.maxPayload = n;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): Frame[] {
    if (this.broken) throw this.broken;
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.buffered >= 4) {
      const len = this.peekU32();
      if (len < 5 || len > 5 + this.maxPayload) {
        this.broken = new ProtocolError(`frame length ${len} out of bounds`);
        this.chunks = [];
        this.buffered = 0;
        throw this.broken;
      }
      if (this.buffered < 4 + len) break;
      const frame = this.take(4 + len);
      frames.push({
        type: frame[4]!,
        channel: frame.readUInt32BE(5),
        payload: frame.subarray(HEADER_BYTES),
      });
    }
    return frames;
  }

  private peekU32(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32BE(0);
    const b = Buffer.allocUnsafe(4);
    let o = 0;
    for (const c of this.chunks) {
      const n = Math.min(c.length, 4 - o);
      c.copy(b, o, 0, n);
      o += n;
      if (o === 4) break;
    }
    return b.readUInt32BE(0);
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      // Zero-copy when the frame sits inside one chunk (the common case for small frames).
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let o = 0;
    while (o < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - o);
      c.copy(out, o, 0, k);
      o += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

/** Reads fields of one payload; any read past the end throws ProtocolError. */
class PayloadReader {
  private off = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}
  private need(n: number): void {
    if (this.off + n > this.buf.length) throw new ProtocolError(`${this.what}: payload too short`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.off++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.off);
    this.off += 4;
    return v;
  }
  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.off);
    this.off += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.off);
    this.off += 8;
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  i64(): number {
    this.need(8);
    const v = this.buf.readBigInt64BE(this.off);
    this.off += 8;
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    return v > max ? Number.MAX_SAFE_INTEGER : v < -max ? -Number.MAX_SAFE_INTEGER : Number(v);
  }
  strBytes(): Buffer {
    const end = this.buf.indexOf(0, this.off);
    if (end < 0) throw new ProtocolError(`${this.what}: unterminated string`);
    const s = this.buf.subarray(this.off, end);
    this.off = end + 1;
    return s;
  }
  get remaining(): number {
    return this.buf.length - this.off;
  }
  end(): void {
    if (this.off !== this.buf.length) throw new ProtocolError(`${this.what}: trailing bytes`);
  }
}

export function decodeHello(payload: Buffer): { version: number; token: Buffer } {
  const r = new PayloadReader(payload, 'HELLO');
  const version = r.u32();
  const token = r.strBytes();
  r.end();
  return { version, token };
}

export function decodeStarted(payload: Buffer): number {
  const r = new PayloadReader(payload, 'STARTED');
  const pid = r.u32();
  r.end();
  if (pid === 0 || pid > 0x7fffffff) throw new ProtocolError(`STARTED: bad pid ${pid}`);
  return pid;
}

export function decodeExit(payload: Buffer): AgentExit {
  const r = new PayloadReader(payload, 'EXIT');
  const code = r.i32();
  const signal = r.u32();
  const flags = r.u32();
  r.end();
  if (code < -1 || code > 255 || signal > 64) throw new ProtocolError(`EXIT: bad status ${code}/${signal}`);
  const exit: AgentExit = { code, signal, timedOut: (flags & EXIT_TIMED_OUT) !== 0 };
  if ((flags & EXIT_OOM_KILLED) !== 0 && signal === 9) exit.oomKilled = true;
  return exit;
}

const MAX_ERROR_MESSAGE = 1024;

export function decodeError(payload: Buffer): { errno: number; message: string } {
  const r = new PayloadReader(payload, 'ERROR');
  const errno = r.u32();
  const message = r.strBytes().toString('utf8').slice(0, MAX_ERROR_MESSAGE);
  r.end();
  if (errno === 0 || errno > 4095) throw new ProtocolError(`ERROR: bad errno ${errno}`);
  return { errno, message };
}

const STAT_TYPES: Record<number, AgentFileStat['type']> = {
  0x66: 'file', // 'f'
  0x64: 'dir', // 'd'
  0x6c: 'symlink', // 'l'
  0x6f: 'other', // 'o'
};

function readStat(r: PayloadReader): AgentFileStat {
  const t = STAT_TYPES[r.u8()];
  if (!t) throw new ProtocolError('bad file type');
  const size = r.u64();
  const mode = r.u32() & 0o7777;
  const mtimeSec = r.i64();
  return { type: t, size, mode, mtimeSec };
}

export function decodeStat(payload: Buffer): AgentFileStat {
  const r = new PayloadReader(payload, 'FOK stat');
  const st = readStat(r);
  r.end();
  return st;
}

export function decodeListEntries(payload: Buffer): AgentDirEntry[] {
  const r = new PayloadReader(payload, 'FLIST_RESULT');
  const out: AgentDirEntry[] = [];
  while (r.remaining > 0) {
    const st = readStat(r);
    const raw = r.strBytes();
    const name = raw.toString('utf8');
    if (raw.length === 0 || raw.length > 255 || name === '.' || name === '..' || name.includes('/')) {
      throw new ProtocolError('FLIST_RESULT: bad entry name');
    }
    out.push({ name, ...st });
  }
  return out;
}

const MAX_PATH_BYTES = 4095;

/** A relative path the host may join under a directory: no `..`, `.`, empty or absolute parts. */
export function isSafeRelativePath(p: string): boolean {
  if (p === '' || p.startsWith('/') || Buffer.byteLength(p) > MAX_PATH_BYTES) return false;
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

/** An absolute, normalized path: no `.`, `..` or empty components. */
function isNormalAbsolute(p: string): boolean {
  if (p === '/') return true;
  return p.startsWith('/') && Buffer.byteLength(p) <= MAX_PATH_BYTES && isSafeRelativePath(p.slice(1));
}

export function decodeWalkEntry(payload: Buffer): AgentWalkEntry {
  const r = new PayloadReader(payload, 'FWALK_ENTRY');
  const st = readStat(r);
  const path = r.strBytes().toString('utf8');
  const linkTarget = r.strBytes().toString('utf8');
  r.end();
  if (st.type === 'other') throw new ProtocolError('FWALK_ENTRY: unexpected file type');
  if (!isSafeRelativePath(path)) throw new ProtocolError('FWALK_ENTRY: bad path');
  if ((st.type === 'symlink') !== (linkTarget !== '') || Buffer.byteLength(linkTarget) > MAX_PATH_BYTES) {
    throw new ProtocolError('FWALK_ENTRY: bad link target');
  }
  return { ...st, type: st.type, path, linkTarget };
}

const LAYER_TYPES: Record<number, AgentLayerEntry['type']> = {
  0x66: 'file', // 'f'
  0x64: 'dir', // 'd'
  0x6c: 'symlink', // 'l'
  0x77: 'whiteout', // 'w'
  0x6f: 'other', // 'o'
};

/** LWALK_RESULT: whole entries, `u8 type, u64 size, i64 mtime_ns, i64 ctime_ns, u64 ino, path\0` each. */
export function decodeLayerEntries(payload: Buffer): AgentLayerEntry[] {
  if (payload.length === 0) throw new ProtocolError('LWALK_RESULT: empty');
  const out: AgentLayerEntry[] = [];
  let o = 0;
  while (o < payload.length) {
    if (o + 34 > payload.length) throw new ProtocolError('LWALK_RESULT: payload too short');
    const type = LAYER_TYPES[payload[o]!];
    if (!type) throw new ProtocolError('LWALK_RESULT: bad entry type');
    const size = payload.readBigUInt64BE(o + 1);
    const mtimeNs = payload.readBigInt64BE(o + 9);
    const ctimeNs = payload.readBigInt64BE(o + 17);
    const ino = payload.readBigUInt64BE(o + 25);
    const end = payload.indexOf(0, o + 33);
    if (end < 0) throw new ProtocolError('LWALK_RESULT: unterminated path');
    const path = payload.toString('utf8', o + 33, end);
    if (!isSafeRelativePath(path)) throw new ProtocolError('LWALK_RESULT: bad path');
    if (size > BigInt(Number.MAX_SAFE_INTEGER) || (size !== 0n && type !== 'file' && type !== 'symlink')) {
      throw new ProtocolError('LWALK_RESULT: bad size');
    }
    out.push({ type, size: Number(size), mtimeNs, ctimeNs, ino, path });
    o = end + 1;
  }
  return out;
}

const EVENT_KINDS: Record<number, AgentEventKind> = {
  0x72: 'ready', // 'r'
  0x63: 'created', // 'c'
  0x6d: 'modified', // 'm'
  0x64: 'deleted', // 'd'
  0x76: 'moved', // 'v'
  0x6f: 'overflow', // 'o'
  0x78: 'ended', // 'x'
};

export function decodeFileEvent(payload: Buffer): AgentFileEvent {
  const r = new PayloadReader(payload, 'FEVENT');
  const kind = EVENT_KINDS[r.u8()];
  const isDir = r.u8();
  const path = r.strBytes().toString('utf8');
  const from = r.strBytes().toString('utf8');
  r.end();
  if (!kind || isDir > 1) throw new ProtocolError('FEVENT: bad kind');
  if (!isNormalAbsolute(path)) throw new ProtocolError('FEVENT: bad path');
  if ((kind === 'moved') !== (from !== '') || (from !== '' && !isNormalAbsolute(from))) {
    throw new ProtocolError('FEVENT: bad source path');
  }
  const e: AgentFileEvent = { kind, path, isDir: isDir === 1 };
  if (kind === 'moved') e.from = from;
  return e;
}

/** PS_RESULT text: `pid\tchannel\targ\x01arg…\n` per process. */
export function decodePsLines(text: string): AgentProcess[] {
  const out: AgentProcess[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const parts = line.split('\t');
    if (parts.length !== 3) throw new ProtocolError('PS_RESULT: bad line');
    const pid = Number(parts[0]);
    const channel = Number(parts[1]);
    if (!/^[0-9]{1,10}$/.test(parts[0]!) || !/^[0-9]{1,10}$/.test(parts[1]!) || pid <= 0 || pid > 0x7fffffff || channel > 0xffffffff) {
      throw new ProtocolError('PS_RESULT: bad pid or channel');
    }
    out.push({ pid, channel, cmdline: parts[2] === '' ? [] : parts[2]!.split('\x01') });
  }
  return out;
}
