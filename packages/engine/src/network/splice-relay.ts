import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import type net from 'node:net';

const noop = (): void => {};

/**
 * Relays connected socket pairs in the kernel: a long-lived airlock-splice daemon (agent/)
 * takes its own copies of both sockets with pidfd_getfd(2) and splices bytes between them, so
 * they never cross into Node. Node copying them reached only ~0.3x of a direct path.
 *
 * Protocol (one ASCII line each): we write `ADD <id> <fdA> <fdB> <inoA> <inoB>` (both ways),
 * `ADD1 …` (A to B only), `ADDN … <count>` (A to B, exactly count bytes) or `CUT <id>`; the
 * daemon answers `READY` once, then `OK <id>` / `ERR <id> <message>` /
 * `DONE <id> <aToB> <bToA> end|reset|limit|eof`.
 */

export interface RelayResult {
  aToB: number;
  bToA: number;
  /** The relay ended it with a reset (an error, or cut()) rather than a clean end of stream. */
  reset?: boolean;
  /** handOffCounted: A ended before the count (its EOF is still there for Node to read). */
  eof?: boolean;
}

export interface Handoff {
  /** Settles when the connection is over; rejects only when the handoff itself failed (then both sockets are destroyed). */
  done: Promise<RelayResult>;
  /** Ends the connection now; both peers see a reset. */
  cut(): void;
}

/**
 * The socket's descriptor number in this process: the daemon names what it takes with
 * pidfd_getfd(2) by that number. Node has no public API for it; its libuv TCP handle
 * (`_handle`, a TCPWrap) exposes it as `fd` on Unix.
 */
function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : -1;
}

/**
 * The socket's inode number, which the daemon checks: should Node close the descriptor before
 * the daemon takes it, the number could name another connection by then.
 */
function socketInode(fd: number): string | null {
  try {
    return /^socket:\[([1-9][0-9]*)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1] ?? null;
  } catch {
    return null;
  }
}

interface ReadHandle { reading: boolean; readStop(): number }

/**
 * Makes Node stop reading from the kernel. pause() only stops 'data' events: below its
 * high-water mark a paused socket keeps reading into its buffer, and read() restarts reading.
 * Bytes Node reads after we emptied its buffer would be lost, so the handle stops here.
 */
function stopReading(socket: net.Socket): void {
  const handle = (socket as unknown as { _handle?: ReadHandle | null })._handle;
  if (handle && handle.reading) {
    handle.reading = false;
    handle.readStop();
  }
}

/**
 * Undoes stopReading() once a counted handoff gave the socket back: resume() alone would not,
 * as the stream still counts the read it asked for before the stop as under way.
 */
export function resumeReading(socket: net.Socket): void {
  const handle = (socket as unknown as { _handle?: (ReadHandle & { readStart(): number }) | null })._handle;
  if (handle && !handle.reading && !socket.destroyed) {
    handle.reading = true;
    const err = handle.readStart();
    if (err < 0) {
      socket.destroy(new Error(`readStart failed (${err})`));
      return;
    }
  }
  socket.resume();
}

/** Resolves once everything written to the socket is in the kernel. */
function flushed(socket: net.Socket): Promise<void> {
  if (socket.writableLength === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    // Writes complete in order, so an empty write's callback runs after every earlier one.
    socket.write(Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
  });
}

/** Ends the connection with a reset (resetAndDestroy() does nothing without a handle). */
function reset(socket: net.Socket): void {
  socket.on('error', noop);
  if (socket.destroyed) return;
  if (socketFd(socket) >= 0) socket.resetAndDestroy();
  else socket.destroy();
}

type Stage = 'preparing' | 'adding' | 'relayed' | 'settled';

interface Pending {
  id: string;
  a: net.Socket;
  b: net.Socket;
  /** A to B only; Node keeps its sockets and the other direction. */
  oneWay: boolean;
  /** handOffCounted: exactly this many bytes A to B, then Node has its sockets back. */
  count: number | null;
  stage: Stage;
  /** Bytes Node itself moved from one side's read buffer to the other's write. */
  moved: RelayResult;
  cutRequested: boolean;
  resolve(r: RelayResult): void;
  reject(e: Error): void;
  /** Our listeners on a and b during preparation. */
  detach(): void;
}

const EXIT_WAIT_MS = 5_000;

export class SpliceRelay {
  private readonly handoffs = new Map<string, Pending>();
  private nextId = 1;
  private alive = true;
  private closing = false;
  private lineBuf = '';
  private stderrTail = '';
  private readonly exited: Promise<void>;
  private referenced = false;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
    child.stdout.setEncoding('ascii');
    child.stdout.on('data', (text: string) => this.onOutput(text));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => { this.stderrTail = (this.stderrTail + text).slice(-1000); });
    child.stdin.on('error', noop); // EPIPE when the daemon died: 'close' reports that
    child.once('close', (code, signal) => this.onGone(`airlock-splice exited (${signal ?? code})${this.stderrDetail()}`));
    this.setReferenced(false);
  }

  /** Spawns the daemon (path to the built binary, e.g. agent/build/airlock-splice) for this process. */
  static start(binary: string): Promise<SpliceRelay> {
    return new Promise((resolve, reject) => {
      const child = spawn(binary, [String(process.pid)], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      const fail = (e: Error): void => { cleanup(); child.kill('SIGKILL'); reject(e); };
      const onData = (chunk: Buffer): void => {
        out += chunk.toString('ascii');
        if (out.length > 64) { fail(new Error(`airlock-splice: unexpected output ${JSON.stringify(out.slice(0, 64))}`)); return; }
        const nl = out.indexOf('\n');
        if (nl < 0) return;
        if (out.slice(0, nl) !== 'READY') { fail(new Error(`airlock-splice: unexpected output ${JSON.stringify(out.slice(0, nl))}`)); return; }
        cleanup();
        if (out.length > nl + 1) { child.kill('SIGKILL'); reject(new Error('airlock-splice: output before any command')); return; }
        resolve(new SpliceRelay(child));
      };
      const onErr = (chunk: Buffer): void => { err = (err + chunk.toString('utf8')).slice(-1000); };
      const onError = (e: Error): void => fail(e);
      const onClose = (code: number | null, signal: string | null): void => {
        cleanup();
        reject(new Error(`airlock-splice exited before it was ready (${signal ?? code}): ${err.trim()}`));
      };
      const cleanup = (): void => {
        child.stdout.off('data', onData);
        child.stderr.off('data', onErr);
        child.off('error', onError);
        child.off('close', onClose);
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onErr);
      child.on('error', onError);
      child.on('close', onClose);
      child.stdin.on('error', noop);
    });
  }

  /** Connections handed over (or being handed over) and not over yet. */
  get active(): number { return this.handoffs.size; }

  /** The daemon's process id (tests count its descriptors). */
  get pid(): number { return this.child.pid ?? -1; }

  /**
   * Hands two connected sockets over; afterwards the caller must not use them (their 'close'
   * event still fires: Node closed its copies, the connection lives on in the daemon). Node's
   * own buffers go first: what it already read is written to the other side and what it was
   * writing is flushed, then the daemon takes the sockets and Node destroys its copies, which
   * only closes Node's descriptors (no shutdown, no reset). Both sockets are set allowHalfOpen,
   * so an EOF seen by Node meanwhile does not end the other direction. Remove your 'data'
   * listeners first: the bytes moved here pass through read(), which emits them.
   */
  handOff(a: net.Socket, b: net.Socket): Handoff {
    return this.start(a, b, false, null);
  }

  /**
   * Hands over one direction only, `from` to `to`: what Node already read from `from` is
   * written to `to` and flushed, Node stops reading `from`, and the daemon relays the rest,
   * passing EOF on as shutdown(to, SHUT_WR). Node keeps both sockets and the other direction
   * (it goes on reading `to` and writing `from`) and must not read `from` or write `to` again.
   * `done` says how the direction ended; the caller closes its sockets (after a `reset`
   * result or a cut(), destroying them resets the connection). A failed handoff resets both.
   */
  handOffOneWay(from: net.Socket, to: net.Socket): Handoff {
    return this.start(from, to, true, null);
  }

  /**
   * Lends the daemon `count` bytes of one direction, `from` to `to` (a request body whose length
   * is known), and takes nothing past them. Node must have read everything it buffered from
   * `from` itself (its readable buffer empty: those bytes are Node's to pass on), and keeps
   * both sockets and the other direction. Node stops reading `from` here; what it wrote to `to`
   * is flushed first. `done` resolves once the count went (`aToB` === count), or `eof` when
   * `from` ended first; either way Node reads `from` again (resumeReading()), and finds the
   * EOF there. A reset result (an error, or cut()) leaves both sockets for the caller to destroy.
   */
  handOffCounted(from: net.Socket, to: net.Socket, count: number): Handoff {
    if (!Number.isSafeInteger(count) || count <= 0) throw new Error('count must be a positive integer');
    return this.start(from, to, true, count);
  }

  private start(a: net.Socket, b: net.Socket, oneWay: boolean, count: number | null): Handoff {
    const id = String(this.nextId++);
    let resolve!: (r: RelayResult) => void;
    let reject!: (e: Error) => void;
    const done = new Promise<RelayResult>((res, rej) => { resolve = res; reject = rej; });
    const p: Pending = {
      id, a, b, oneWay, count, stage: 'preparing', moved: { aToB: 0, bToA: 0 }, cutRequested: false, resolve, reject, detach: noop,
    };
    if (!this.alive || this.closing) {
      this.failHandoff(p, new Error('airlock-splice is not running'));
    } else {
      this.handoffs.set(id, p);
      this.setReferenced(true);
      this.prepare(p).catch((e: unknown) => this.failHandoff(p, e instanceof Error ? e : new Error(String(e))));
    }
    return { done, cut: () => this.cut(p) };
  }

  /** Stops the daemon: connections it still relays are reset and settle; later handOff() calls reject. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.alive) this.child.stdin.end();
    this.setReferenced(true); // keep the loop alive until it is gone
    const timer = setTimeout(() => this.child.kill('SIGKILL'), EXIT_WAIT_MS);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private async prepare(p: Pending): Promise<void> {
    const { a, b } = p;
    for (const s of [a, b]) {
      // One way, `a` may have been shut for writing by Node (its direction is Node's).
      const shut = p.oneWay && s === a ? false : s.writableEnded;
      if (s.destroyed || s.connecting || shut || socketFd(s) < 0) throw new Error('socket is not connected and open');
      if (s.readableEncoding !== null) throw new Error('socket has an encoding set: its buffered bytes are not raw');
    }
    let failure: Error | null = null;
    const onError = (e: Error): void => { failure ??= e; };
    const onClose = (): void => {
      // Once ADD is out the daemon may hold the sockets: a caller's destroy() then means cut().
      if (p.stage === 'adding') this.cut(p);
      else failure ??= new Error('socket closed during the handoff');
    };
    for (const s of [a, b]) { s.on('error', onError); s.on('close', onClose); }
    p.detach = () => { for (const s of [a, b]) { s.off('error', onError); s.off('close', onClose); } };
    a.allowHalfOpen = true;
    b.allowHalfOpen = true;
    a.pause();
    if (p.count !== null) {
      // The caller took what Node buffered (it parses that); reading stops before any more comes.
      if (a.readableLength > 0) throw new Error('bytes read from the socket are still buffered in Node');
      stopReading(a);
    } else {
      p.moved.aToB = this.moveBuffered(a, b);
    }
    if (!p.oneWay) {
      b.pause();
      p.moved.bToA = this.moveBuffered(b, a);
    }
    // One way: what Node wrote to `b` must be in the kernel before the daemon writes there.
    await Promise.all(p.oneWay ? [flushed(b)] : [flushed(a), flushed(b)]);
    if (p.stage !== 'preparing') return; // cut meanwhile
    if (failure) throw failure;
    const fdA = socketFd(a);
    const fdB = socketFd(b);
    if (fdA < 0 || fdB < 0) throw new Error('socket closed during the handoff');
    const inoA = socketInode(fdA);
    const inoB = socketInode(fdB);
    if (inoA === null || inoB === null) throw new Error('descriptor is not a socket');
    if (!this.alive || this.closing) throw new Error('airlock-splice is not running');
    p.stage = 'adding';
    const command = p.count !== null ? 'ADDN' : p.oneWay ? 'ADD1' : 'ADD';
    this.child.stdin.write(`${command} ${p.id} ${fdA} ${fdB} ${inoA} ${inoB}${p.count !== null ? ` ${p.count}` : ''}\n`);
  }

  /** Writes what Node already read from `from` to `to`, then stops Node reading `from`. */
  private moveBuffered(from: net.Socket, to: net.Socket): number {
    let moved = 0;
    for (let chunk: Buffer | null; (chunk = from.read() as Buffer | null) !== null;) {
      to.write(chunk);
      moved += chunk.length;
    }
    // read() asked libuv to read again; stopping now, in the same tick, means it never did.
    stopReading(from);
    return moved;
  }

  private cut(p: Pending): void {
    if (p.stage === 'settled' || p.cutRequested) return;
    p.cutRequested = true;
    if (p.stage === 'preparing') {
      // Node still owns both sockets: reset them itself (one way: the caller does).
      p.detach();
      this.settle(p);
      if (!p.oneWay) {
        reset(p.a);
        reset(p.b);
      }
      p.resolve({ ...p.moved, reset: true });
      return;
    }
    // After ADD the daemon may hold the sockets; it handles CUT after the ADD, in order.
    if (this.alive) this.child.stdin.write(`CUT ${p.id}\n`);
  }

  private onOutput(text: string): void {
    this.lineBuf += text;
    for (let nl = this.lineBuf.indexOf('\n'); nl >= 0; nl = this.lineBuf.indexOf('\n')) {
      const line = this.lineBuf.slice(0, nl);
      this.lineBuf = this.lineBuf.slice(nl + 1);
      this.onEvent(line);
    }
    if (this.lineBuf.length > 4096) this.lineBuf = ''; // never a valid line: the daemon emits short ones
  }

  private onEvent(line: string): void {
    const [kind, id, ...rest] = line.split(' ');
    const p = id === undefined ? undefined : this.handoffs.get(id);
    if (!p) return; // ERR for a line without an id, or for a CUT that crossed a DONE
    if (kind === 'OK' && p.stage === 'adding') {
      p.stage = 'relayed';
      p.detach();
      // Node's copies only: destroy() closes the descriptors, it sends no FIN or reset.
      // One way, Node keeps them: it still uses the other direction.
      if (!p.oneWay) for (const s of [p.a, p.b]) { s.on('error', noop); s.destroy(); }
    } else if (kind === 'ERR' && p.stage === 'adding') {
      this.failHandoff(p, new Error(`airlock-splice: ${rest.join(' ')}`));
    } else if (kind === 'DONE' && p.stage === 'relayed') {
      const aToB = Number(rest[0]);
      const bToA = Number(rest[1]);
      this.settle(p);
      p.resolve({
        aToB: p.moved.aToB + (Number.isSafeInteger(aToB) ? aToB : 0),
        bToA: p.moved.bToA + (Number.isSafeInteger(bToA) ? bToA : 0),
        reset: rest[2] === 'reset',
        ...(rest[2] === 'eof' ? { eof: true } : {}),
      });
    }
  }

  /** The daemon is gone: its copies of relayed sockets closed with it. */
  private onGone(reason: string): void {
    if (!this.alive) return;
    this.alive = false;
    for (const p of [...this.handoffs.values()]) {
      if (p.stage === 'relayed') {
        // Those connections ended when the daemon's descriptors closed (one way: that
        // direction is dead); what it had moved is unknown.
        this.settle(p);
        p.resolve({ ...p.moved, reset: true });
      } else {
        this.failHandoff(p, new Error(reason));
      }
    }
  }

  private failHandoff(p: Pending, e: Error): void {
    if (p.stage === 'settled') return;
    p.detach();
    this.settle(p);
    // The connection is broken: a reset says so, where a FIN would look like a complete stream.
    reset(p.a);
    reset(p.b);
    p.reject(e);
  }

  private settle(p: Pending): void {
    p.stage = 'settled';
    this.handoffs.delete(p.id);
    if (this.handoffs.size === 0) this.setReferenced(false);
  }

  /** An idle daemon must not keep the engine alive; a relayed connection does, like a socket would. */
  private setReferenced(on: boolean): void {
    if (on === this.referenced) return;
    this.referenced = on;
    const handles = [this.child, this.child.stdout, this.child.stderr, this.child.stdin] as Array<{ ref?(): void; unref?(): void }>;
    for (const h of handles) (on ? h.ref : h.unref)?.call(h);
  }

  private stderrDetail(): string {
    const tail = this.stderrTail.trim();
    return tail ? `: ${tail}` : '';
  }
}

/**
 * The fallback when no daemon runs: relays in Node, both ways, passing each EOF on as a
 * half-close and an error on as a reset. Never rejects; resolves with the bytes each
 * direction moved once both sockets are closed.
 */
export function pipeInNode(a: net.Socket, b: net.Socket): Promise<RelayResult> {
  const result: RelayResult = { aToB: 0, bToA: 0 };
  if (a.destroyed || b.destroyed) {
    reset(a);
    reset(b);
    return Promise.resolve(result);
  }
  // Half-close: an EOF from one side must not end the other direction.
  a.allowHalfOpen = true;
  b.allowHalfOpen = true;
  a.on('data', (chunk: Buffer) => { result.aToB += chunk.length; });
  b.on('data', (chunk: Buffer) => { result.bToA += chunk.length; });
  const abort = (): void => { reset(a); reset(b); };
  // An error, or a close before both halves were done (destroyed by someone), ends both.
  for (const s of [a, b]) {
    s.on('error', abort);
    s.on('close', () => { if (!(s.readableEnded && s.writableFinished)) abort(); });
  }
  // pipe ends the destination (shutdown SHUT_WR) on the source's 'end'; a socket whose both
  // halves are done closes itself (autoDestroy).
  a.pipe(b);
  b.pipe(a);
  const closed = (s: net.Socket): Promise<void> =>
    s.closed ? Promise.resolve() : new Promise((resolve) => s.once('close', () => resolve()));
  return Promise.all([closed(a), closed(b)]).then(() => result);
}
