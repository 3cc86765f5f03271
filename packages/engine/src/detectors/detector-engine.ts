/**
 * The detector engine (docs/records.md#detectors): subscribed to the audit stream, it raises
 * `alert.<detector>` events, appended to the same hash-chained log. Each tenant's policy may
 * enable or disable detectors and tune repeated_denials. Alerts are deduplicated per
 * (sandbox, detector, subject) for a quiet period, and each sandbox may raise at most
 * MAX_ALERTS_PER_WINDOW alerts per window, so a hostile sandbox cannot flood the log.
 */
import type { EventLog } from '../audit/event-log.js';
import type { PolicyDocument } from '../policy/schema.js';
import type { AuditEvent } from '../types.js';
import { DETECTOR_NAMES, immediateFinding, isDenial, type DetectorName, type Finding } from './rules.js';

export type DetectorsPolicy = NonNullable<PolicyDocument['detectors']>;

export const DEFAULT_REPEATED_DENIALS = { count: 5, windowSeconds: 60 };
/** Two OOM kills within this window make a memory bomb (one can be an honest mistake). */
const MEMORY_BOMB = { count: 2, windowSeconds: 600 };
/** The same (sandbox, detector, subject) raises again only after this long. */
const QUIET_MS = 10 * 60_000;
const RATE_WINDOW_MS = 60_000;
const MAX_ALERTS_PER_WINDOW = 20;
/** Bounds the dedupe state whatever the sandboxes do. */
const MAX_KEYS = 10_000;

export interface DetectorEngineOptions {
  events: EventLog;
  /** The tenant's effective detectors policy (undefined: all on, defaults). */
  policyOf: (tenant: string) => DetectorsPolicy | undefined;
  log?: (level: 'warn', msg: string, data?: Record<string, unknown>) => void;
  now?: () => number;
}

export function detectorEnabled(policy: DetectorsPolicy | undefined, name: DetectorName): boolean {
  if (policy?.disabled?.includes(name)) return false;
  if (policy?.enabled) return policy.enabled.includes(name);
  return true;
}

export class DetectorEngine {
  private readonly lastAlert = new Map<string, number>();
  /** Per sandbox: timestamps of recent denials / OOMs, and of alerts (for the rate cap). */
  private readonly denials = new Map<string, number[]>();
  private readonly ooms = new Map<string, number[]>();
  private readonly alertTimes = new Map<string, number[]>();
  private unsubscribe: (() => void) | null = null;
  private readonly now: () => number;

  constructor(private readonly o: DetectorEngineOptions) {
    this.now = o.now ?? Date.now;
  }

  start(): void {
    if (this.unsubscribe) return;
    this.unsubscribe = this.o.events.subscribe((e) => {
      try {
        this.onEvent(e);
      } catch (err) {
        // A detector failing must never break the operation that appended the event.
        this.o.log?.('warn', 'detector failed', { seq: e.seq, error: (err as Error).message });
      }
    });
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  /** Forgets a sandbox's counters (at its end). */
  forget(sandbox: string): void {
    this.denials.delete(sandbox);
    this.ooms.delete(sandbox);
    this.alertTimes.delete(sandbox);
  }

  private onEvent(e: AuditEvent): void {
    if (e.sandbox === null || e.type.startsWith('alert.')) return;
    // The policy is read only for events that matter: most events (allowed traffic) raise nothing.
    let policy: DetectorsPolicy | undefined | null = null;
    const policyNow = (): DetectorsPolicy | undefined => (policy === null ? (policy = this.o.policyOf(e.tenant)) : policy);
    const found: Finding[] = [];
    const immediate = immediateFinding(e);
    if (immediate) found.push(immediate);
    const now = this.now();
    if (isDenial(e)) {
      const rd = { ...DEFAULT_REPEATED_DENIALS, ...(policyNow()?.repeatedDenials ?? {}) };
      const n = this.countIn(this.denials, e.sandbox, now, rd.windowSeconds * 1000);
      if (n >= rd.count) found.push({ detector: 'repeated_denials', subject: 'denials', data: { count: n, windowSeconds: rd.windowSeconds, lastType: e.type, eventSeq: e.seq } });
    }
    if (e.type === 'limit.oom') {
      const n = this.countIn(this.ooms, e.sandbox, now, MEMORY_BOMB.windowSeconds * 1000);
      if (n >= MEMORY_BOMB.count) found.push({ detector: 'memory_bomb', subject: 'oom', data: { count: n, windowSeconds: MEMORY_BOMB.windowSeconds, limitMiB: e.data.limitMiB ?? null, eventSeq: e.seq } });
    }
    for (const f of found) if (detectorEnabled(policyNow(), f.detector)) this.raise(e, f, now);
  }

  /** Records one occurrence at `now` and answers how many fall in the window. */
  private countIn(map: Map<string, number[]>, sandbox: string, now: number, windowMs: number): number {
    if (map.size >= MAX_KEYS && !map.has(sandbox)) map.clear();
    const times = (map.get(sandbox) ?? []).filter((t) => t > now - windowMs);
    times.push(now);
    // Only the count matters: keep at most what any threshold needs.
    map.set(sandbox, times.slice(-1000));
    return times.length;
  }

  private raise(e: AuditEvent, f: Finding, now: number): void {
    const sandbox = e.sandbox!;
    const key = `${sandbox}\0${f.detector}\0${f.subject}`;
    const last = this.lastAlert.get(key);
    if (last !== undefined && now - last < QUIET_MS) return;
    if (this.alertTimes.size >= MAX_KEYS && !this.alertTimes.has(sandbox)) this.alertTimes.clear();
    const recent = (this.alertTimes.get(sandbox) ?? []).filter((t) => t > now - RATE_WINDOW_MS);
    if (recent.length >= MAX_ALERTS_PER_WINDOW) return;
    recent.push(now);
    this.alertTimes.set(sandbox, recent);
    if (this.lastAlert.size >= MAX_KEYS) {
      for (const [k, t] of this.lastAlert) if (now - t >= QUIET_MS) this.lastAlert.delete(k);
      if (this.lastAlert.size >= MAX_KEYS) this.lastAlert.clear();
    }
    this.lastAlert.set(key, now);
    this.o.events.append({ tenant: e.tenant, sandbox, type: `alert.${f.detector}`, data: { detector: f.detector, ...f.data } });
  }
}

export { DETECTOR_NAMES };
