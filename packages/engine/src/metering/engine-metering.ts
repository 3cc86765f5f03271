import type { Caller } from '../engine-api.js';
import type { Db } from '../store/db.js';
import { Meter, type MeteredSandbox } from './meter.js';
import { parsePriceSheet } from './prices.js';
import type { PriceSheet, UsageQuery, UsageReport } from './types.js';
import { UsageRepository } from './usage-repo.js';
import { usageReport } from './usage-service.js';

export const DEFAULT_USAGE_SAMPLE_MS = 5000;

export interface EngineMeteringOptions {
  db: Db;
  prices?: Partial<PriceSheet>;
  sampleMs?: number;
  /** The live sandboxes this engine runs (it samples only its own). */
  live: () => MeteredSandbox[];
  log: (level: 'info' | 'warn' | 'error', msg: string, data?: Record<string, unknown>) => void;
}

/** The engine's metering: a periodic sampler, the last reading at end, and the usage report. */
export class EngineMetering {
  readonly prices: PriceSheet;
  private readonly repo: UsageRepository;
  private readonly meter: Meter;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly o: EngineMeteringOptions) {
    this.prices = parsePriceSheet(o.prices ?? {});
    this.repo = new UsageRepository(o.db);
    // Built once: better-sqlite3 builds a wrapper per transaction() call.
    const immediate = o.db.transaction((fn: () => unknown) => fn()).immediate;
    this.meter = new Meter(this.repo, <T>(fn: () => T) => immediate(fn) as T);
  }

  start(): void {
    this.timer = setInterval(() => this.sampleAll(), this.o.sampleMs ?? DEFAULT_USAGE_SAMPLE_MS);
    this.timer.unref();
  }

  sampleAll(): void {
    for (const s of this.o.live()) {
      try { this.meter.sample(s); } catch (e) { this.o.log('warn', 'usage sample failed', { sandbox: s.id, error: (e as Error).message }); }
    }
  }

  /** Call before the sandbox's cgroup is removed: its last CPU reading. Never throws. */
  final(s: MeteredSandbox): void {
    try { this.meter.final(s); } catch (e) { this.o.log('warn', 'final usage sample failed', { sandbox: s.id, error: (e as Error).message }); }
  }

  /** A net.connect event: its byte counts (present for allowed and cut connections). */
  connectionEnded(sandbox: string, tenant: string, data: Record<string, unknown>): void {
    const bytesIn = typeof data.bytesIn === 'number' ? data.bytesIn : 0;
    const bytesOut = typeof data.bytesOut === 'number' ? data.bytesOut : 0;
    try { this.meter.addNet(sandbox, tenant, bytesIn, bytesOut); } catch (e) { this.o.log('warn', 'usage net booking failed', { sandbox, error: (e as Error).message }); }
  }

  report(caller: Caller, q: UsageQuery): UsageReport {
    return usageReport(this.repo, this.prices, caller, q);
  }

  /** A last sample, so a later engine continues from here. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sampleAll();
  }
}
