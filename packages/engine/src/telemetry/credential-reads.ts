/**
 * Opens of credential-like files by a container sandbox's own processes (docs/records.md#detectors),
 * seen from the host: a long-lived airlock-fawatch helper (agent/airlock-fawatch.c) holds one
 * fanotify group per watched sandbox rootfs and reports candidate opens; the exact
 * isCredentialPath decides here, and each one becomes a `file.read` event with `via: 'sandbox'`,
 * which the credential_read detector turns into an alert. Watching is skipped for tenants whose
 * policy disables credential_read. Losses (the kernel's queue overflowing, the helper's rate
 * limit, the helper dying) are recorded as `telemetry.gap` events, never hidden.
 *
 * The helper restarts after it dies (backoff 1 s doubling to 30 s) and watches every sandbox
 * again; the daemon never fails because of it. Watching is observation, not enforcement: a
 * sandbox whose watch could not be set up runs on, and its gap is in the log.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { EventLog } from '../audit/event-log.js';
import { isCredentialPath } from '../detectors/rules.js';

type Level = 'info' | 'warn' | 'error';

export interface CredentialReadWatchOptions {
  /** agent/build/airlock-fawatch */
  binary: string;
  events: EventLog;
  /** The sandbox's tenant (null: unknown, its events are dropped). */
  tenantOf: (sandbox: string) => string | null;
  /** Whether the tenant's policy has credential_read on. */
  enabled: (tenant: string) => boolean;
  log?: (level: Level, msg: string, data?: Record<string, unknown>) => void;
}

/** One reported open, decoded. */
export interface CredentialOpen {
  /** The path inside the sandbox; bytes that are not UTF-8 show as U+FFFD (then pathHex has them all). */
  path: string;
  pathHex?: string;
  /** The opener's pid in the sandbox (null: it exited before the helper looked) and on the host. */
  pid: number | null;
  hostPid: number;
  comm: string | null;
  /** Earlier opens of the same path coalesced into this one. */
  suppressed: number;
}

export type GapReason = 'queue-overflow' | 'rate-limit' | 'helper-exited' | 'unavailable';

const READY_TIMEOUT_MS = 5_000;
const REPLY_TIMEOUT_MS = 5_000;
const EXIT_WAIT_MS = 5_000;
const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;
/** A helper that ran this long is healthy again: the next death restarts it at the minimum backoff. */
const HEALTHY_AFTER_MS = 60_000;
/** The longest line the helper writes: a 4096-byte path in hex and a little more. */
const MAX_LINE = 16_384;
const TAG_RE = /^[A-Za-z0-9_-]{1,64}$/;
const HEX_RE = /^(?:[0-9a-f]{2})*$/;

interface Reply { line: string }
interface Waiter { resolve(r: Reply): void }

/** The running helper: its process, the answers it owes (in command order), its output buffer. */
class Helper {
  private readonly waiters: Waiter[] = [];
  private buf = '';
  private stderrTail = '';
  readonly exited: Promise<void>;
  alive = true;
  readonly startedAt = Date.now();

  constructor(readonly child: ChildProcessWithoutNullStreams, private readonly onLine: (line: string) => void) {
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
    child.stdout.setEncoding('ascii');
    child.stdout.on('data', (text: string) => this.onOutput(text));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => { this.stderrTail = (this.stderrTail + text).slice(-1000); });
    child.stdin.on('error', () => {}); // EPIPE once it died: 'close' reports that
    for (const h of [child, child.stdout, child.stderr, child.stdin] as Array<{ unref?(): void }>) h.unref?.();
  }

  get stderr(): string { return this.stderrTail.trim(); }

  /** Sends one command and resolves with its answer (a line starting OK/ERR/DONE), or null if the helper died. */
  command(line: string): Promise<Reply | null> {
    if (!this.alive) return Promise.resolve(null);
    return new Promise((resolve) => {
      let settled = false;
      const timer = setTimeout(() => { if (!settled) { settled = true; resolve(null); } }, REPLY_TIMEOUT_MS);
      timer.unref();
      this.waiters.push({ resolve: (r) => { if (!settled) { settled = true; clearTimeout(timer); resolve(r.line === '' ? null : r); } } });
      this.child.stdin.write(`${line}\n`);
    });
  }

  gone(): void {
    this.alive = false;
    for (const w of this.waiters.splice(0)) w.resolve({ line: '' });
  }

  private onOutput(text: string): void {
    this.buf += text;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (/^(OK|ERR|DONE) /.test(line)) this.waiters.shift()?.resolve({ line });
      else this.onLine(line);
    }
    if (this.buf.length > MAX_LINE) this.buf = ''; // never a valid line
  }
}

function decodeHex(hex: string): Buffer | null {
  return HEX_RE.test(hex) ? Buffer.from(hex, 'hex') : null;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses an OPEN line's fields (after the tag); null when malformed. */
export function parseOpen(fields: string[]): CredentialOpen | null {
  if (fields.length !== 5) return null;
  const [hostPid, pid, commHex, pathHex, suppressed] = fields as [string, string, string, string, string];
  const raw = decodeHex(pathHex);
  const comm = commHex === '-' ? Buffer.alloc(0) : decodeHex(commHex);
  if (!raw || raw.length === 0 || !comm || !/^[1-9]\d*$/.test(hostPid) || !/^(-|[1-9]\d*)$/.test(pid) || !/^\d+$/.test(suppressed)) return null;
  let path: string;
  let lossy = false;
  try {
    path = strictUtf8.decode(raw);
  } catch {
    path = raw.toString('utf8');
    lossy = true;
  }
  return {
    path,
    ...(lossy ? { pathHex } : {}),
    pid: pid === '-' ? null : Number(pid),
    hostPid: Number(hostPid),
    comm: comm.length ? comm.toString('utf8') : null,
    suppressed: Math.min(Number(suppressed), 2 ** 32),
  };
}

export class CredentialReadWatch {
  /** Sandbox → its rootfs on the host: what the helper should watch. */
  private readonly roots = new Map<string, string>();
  /** gvisor sandboxes: their sentry opens for every process inside (the helper's ADDSENTRY). */
  private readonly sentries = new Set<string>();
  /** Sandboxes whose REMOVE is under way: not watched again by a restart. */
  private readonly ending = new Set<string>();
  private helper: Helper | null = null;
  private starting: Promise<Helper | null> | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private backoffMs = RESTART_MIN_MS;
  private closed = false;
  private missingLogged = false;
  private readonly log: NonNullable<CredentialReadWatchOptions['log']>;

  constructor(private readonly o: CredentialReadWatchOptions) {
    this.log = o.log ?? (() => {});
  }

  /** The sandboxes watched (or to be watched again once the helper is back). */
  get watching(): string[] { return [...this.roots.keys()].filter((s) => !this.ending.has(s)); }

  /** The helper's pid, null while none runs. */
  get helperPid(): number | null { return this.helper?.alive ? this.helper.child.pid ?? null : null; }

  /**
   * Starts watching the sandbox's rootfs (an overlay mount on the host) when its tenant's policy
   * has credential_read on. Resolves true once the kernel mark is in place (opens from then on
   * are seen); false when not watched. Never throws: a failure is logged and leaves a
   * `telemetry.gap` event.
   */
  async watch(sandbox: string, tenant: string, rootfs: string, opts: { sentry?: boolean } = {}): Promise<boolean> {
    if (this.closed || !TAG_RE.test(sandbox) || !rootfs.startsWith('/') || /[\n\r]/.test(rootfs)) return false;
    if (!this.o.enabled(tenant)) return false;
    if (this.roots.has(sandbox)) return !this.ending.has(sandbox) && this.helper?.alive === true;
    this.roots.set(sandbox, rootfs);
    if (opts.sentry) this.sentries.add(sandbox);
    const helper = await this.ensureHelper();
    if (!helper) {
      this.gap(sandbox, 'unavailable', { error: this.unavailableReason() });
      return false;
    }
    return this.add(helper, sandbox, rootfs);
  }

  /** Stops watching; opens still queued in the kernel (and a last LOST count) are recorded first. */
  async unwatch(sandbox: string): Promise<void> {
    if (!this.roots.has(sandbox) || this.ending.has(sandbox)) return;
    // Still in roots until DONE, so the lines the helper drains before it are recorded.
    this.ending.add(sandbox);
    try {
      const helper = this.helper;
      if (helper?.alive) await helper.command(`REMOVE ${sandbox}`);
    } finally {
      this.roots.delete(sandbox);
      this.sentries.delete(sandbox);
      this.ending.delete(sandbox);
    }
  }

  /** Stops the helper (every watch goes with it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.roots.clear();
    this.sentries.clear();
    await this.starting?.catch(() => null);
    const helper = this.helper;
    this.helper = null;
    if (!helper) return;
    if (helper.alive) helper.child.stdin.end();
    const timer = setTimeout(() => helper.child.kill('SIGKILL'), EXIT_WAIT_MS);
    try {
      await helper.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private async add(helper: Helper, sandbox: string, rootfs: string): Promise<boolean> {
    const reply = await helper.command(`${this.sentries.has(sandbox) ? 'ADDSENTRY' : 'ADD'} ${sandbox} ${rootfs}`);
    if (reply?.line === `OK ${sandbox}`) return true;
    const error = reply ? reply.line.replace(/^ERR \S+ /, '') : 'airlock-fawatch did not answer';
    // Only a sandbox still meant to be watched has a gap (it may have ended meanwhile).
    if (this.roots.get(sandbox) === rootfs && helper.alive) {
      this.log('error', 'cannot watch the sandbox for credential reads', { sandbox, error });
      this.gap(sandbox, 'unavailable', { error });
    }
    return false;
  }

  private unavailableReason(): string {
    return this.closed ? 'engine closing' : 'airlock-fawatch is not running';
  }

  private ensureHelper(): Promise<Helper | null> {
    if (this.helper?.alive) return Promise.resolve(this.helper);
    if (this.restartTimer) return Promise.resolve(null); // dead, waiting for its restart
    this.starting ??= this.spawnHelper().finally(() => { this.starting = null; });
    return this.starting;
  }

  private async spawnHelper(): Promise<Helper | null> {
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn(this.o.binary, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      this.helperFailed(`spawn: ${(e as Error).message}`);
      return null;
    }
    const ready = await new Promise<string | null>((resolve) => {
      let out = '';
      let err = '';
      const done = (v: string | null): void => {
        clearTimeout(timer);
        child.stdout.off('data', onData);
        child.stderr.off('data', onErr);
        child.off('error', onError);
        child.off('close', onClose);
        resolve(v);
      };
      const onData = (chunk: Buffer): void => {
        out += chunk.toString('ascii');
        if (out.startsWith('READY\n')) done(null);
        else if (out.length > 64 || (out.includes('\n') && !out.startsWith('READY'))) done(`unexpected output ${JSON.stringify(out.slice(0, 64))}`);
      };
      const onErr = (chunk: Buffer): void => { err = (err + chunk.toString('utf8')).slice(-500); };
      const onError = (e: Error): void => done(e.message);
      const onClose = (code: number | null, signal: string | null): void => done(`exited before it was ready (${signal ?? code}) ${err.trim()}`);
      const timer = setTimeout(() => done('not ready in time'), READY_TIMEOUT_MS);
      child.stdout.on('data', onData);
      child.stderr.on('data', onErr);
      child.on('error', onError);
      child.on('close', onClose);
    });
    if (ready !== null || this.closed) {
      child.kill('SIGKILL');
      if (ready !== null) this.helperFailed(ready);
      return null;
    }
    const helper = new Helper(child, (line) => this.onLine(line));
    child.once('close', (code, signal) => this.onExit(helper, `airlock-fawatch exited (${signal ?? code})`));
    this.helper = helper;
    return helper;
  }

  /** The helper could not start: said once (a missing binary is an installation matter), retried later. */
  private helperFailed(reason: string): void {
    if (!this.missingLogged) this.log('error', 'airlock-fawatch unavailable: credential reads inside sandboxes are not watched', { error: reason });
    this.missingLogged = true;
    this.scheduleRestart();
  }

  private onExit(helper: Helper, reason: string): void {
    helper.gone();
    if (this.helper !== helper) return;
    this.helper = null;
    if (this.closed) return;
    const detail = helper.stderr ? `${reason}: ${helper.stderr}` : reason;
    this.log('error', 'airlock-fawatch died; restarting it', { error: detail, watched: this.roots.size });
    for (const sandbox of this.roots.keys()) this.gap(sandbox, 'helper-exited', { error: detail });
    if (Date.now() - helper.startedAt >= HEALTHY_AFTER_MS) this.backoffMs = RESTART_MIN_MS;
    this.scheduleRestart();
  }

  /** Starts the helper again after the backoff and watches every sandbox that still wants it. */
  private scheduleRestart(): void {
    if (this.closed || this.restartTimer) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, RESTART_MAX_MS);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed || this.roots.size === 0) return; // the next watch() starts it
      void this.ensureHelper().then(async (helper) => {
        if (!helper) return;
        this.missingLogged = false;
        const wanted = [...this.roots].filter(([sandbox]) => !this.ending.has(sandbox));
        const results = await Promise.all(wanted.map(([sandbox, rootfs]) => this.add(helper, sandbox, rootfs)));
        this.log('info', 'airlock-fawatch restarted', { watched: results.filter(Boolean).length });
      });
    }, delay);
    this.restartTimer.unref();
  }

  private onLine(line: string): void {
    const [kind, sandbox, ...rest] = line.split(' ');
    if (!sandbox || !this.roots.has(sandbox) || this.closed) return; // a sandbox no longer watched
    if (kind === 'OPEN') {
      const open = parseOpen(rest);
      if (open) this.record(sandbox, open);
    } else if (kind === 'LOST') {
      const overflow = rest[0] === '1';
      const dropped = Number(rest[1]);
      if (overflow) this.gap(sandbox, 'queue-overflow', {});
      if (Number.isSafeInteger(dropped) && dropped > 0) this.gap(sandbox, 'rate-limit', { dropped });
    } else if (kind === 'FAIL') {
      const error = rest.join(' ');
      this.log('error', 'the credential-read watch of a sandbox failed', { sandbox, error });
      this.gap(sandbox, 'unavailable', { error });
    }
  }

  private record(sandbox: string, open: CredentialOpen): void {
    if (!isCredentialPath(open.path)) return;
    const tenant = this.o.tenantOf(sandbox);
    // The policy may have changed since the watch began: it decides at each event.
    if (tenant === null || !this.o.enabled(tenant)) return;
    this.append(tenant, sandbox, 'file.read', {
      path: open.path,
      ...(open.pathHex ? { pathHex: open.pathHex } : {}),
      via: 'sandbox', pid: open.pid, hostPid: open.hostPid, comm: open.comm,
      ...(open.suppressed > 0 ? { suppressed: open.suppressed } : {}),
    });
  }

  private gap(sandbox: string, reason: GapReason, extra: Record<string, unknown>): void {
    const tenant = this.o.tenantOf(sandbox);
    if (tenant !== null) this.append(tenant, sandbox, 'telemetry.gap', { source: 'credential-reads', reason, ...extra });
  }

  private append(tenant: string, sandbox: string, type: string, data: Record<string, unknown>): void {
    if (this.closed) return;
    try {
      this.o.events.append({ tenant, sandbox, type, data });
    } catch (e) {
      this.log('warn', 'could not record a credential-read event', { sandbox, type, error: (e as Error).message });
    }
  }
}
