import { cgroupCpuSeconds, cgroupMemoryBytes } from './cgroup-usage.js';
import type { UsageDelta, UsageRepository } from './usage-repo.js';

const GIB = 2 ** 30;

/** What the meter needs to know about a live sandbox. */
export interface MeteredSandbox {
  id: string;
  tenant: string;
  cgroupsPath: string;
  diskMiB: number;
}

/** The UTC day of a time, YYYY-MM-DD. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/**
 * Samples live sandboxes' cgroups and books what they used since the last sample:
 * - CPU: the cgroup's own counter's growth (a paused sandbox's does not grow);
 * - memory: the sampled usage times the interval (usage, not the limit: a tenant pays for what
 *   it holds; a spike shorter than the interval may be missed, a plateau is exact);
 * - disk: the disk quota (reserved space) times the interval;
 * - network: the egress proxy's byte counts, booked when each connection ends.
 * Each sample is booked on the UTC day it was taken (the daily rollup).
 */
export class Meter {
  constructor(private readonly repo: UsageRepository, private readonly tx: <T>(fn: () => T) => T) {}

  /** Books one sandbox's use since its last sample; `now` is the sample time. */
  sample(s: MeteredSandbox, now = Date.now()): void {
    const cpu = cgroupCpuSeconds(s.cgroupsPath);
    const mem = cgroupMemoryBytes(s.cgroupsPath) ?? 0;
    this.tx(() => {
      const mark = this.repo.mark(s.id);
      if (cpu === null && mark === null) return;
      if (!mark) {
        // First sight: everything the cgroup counted so far is this sandbox's.
        this.repo.setMark(s.id, { cpuSeconds: cpu ?? 0, sampledAt: now });
        if (cpu) this.repo.add(utcDay(now), s.id, s.tenant, { ...ZERO, cpuSeconds: cpu });
        return;
      }
      const dt = Math.max(0, now - mark.sampledAt) / 1000;
      const cpuNow = cpu ?? mark.cpuSeconds;
      this.repo.add(utcDay(now), s.id, s.tenant, {
        ...ZERO,
        // A counter that went back means a new cgroup (a restarted runtime): count it from zero.
        cpuSeconds: cpuNow >= mark.cpuSeconds ? cpuNow - mark.cpuSeconds : cpuNow,
        memoryGiBSeconds: (mem / GIB) * dt,
        diskGiBHours: (s.diskMiB / 1024) * (dt / 3600),
      });
      this.repo.setMark(s.id, { cpuSeconds: cpuNow, sampledAt: now });
    });
  }

  /** The last sample before the cgroup goes; the sandbox is then off the meter. */
  final(s: MeteredSandbox, now = Date.now()): void {
    this.sample(s, now);
    this.repo.dropMark(s.id);
  }

  /** Network bytes of one finished connection. */
  addNet(sandbox: string, tenant: string, bytesIn: number, bytesOut: number, now = Date.now()): void {
    if (!(bytesIn > 0) && !(bytesOut > 0)) return;
    this.repo.add(utcDay(now), sandbox, tenant, { ...ZERO, netBytesIn: Math.max(0, bytesIn || 0), netBytesOut: Math.max(0, bytesOut || 0) });
  }
}

const ZERO: UsageDelta = { cpuSeconds: 0, memoryGiBSeconds: 0, diskGiBHours: 0, netBytesIn: 0, netBytesOut: 0 };
