import type { Db } from '../store/db.js';
import type { DailyUsage, PriceSheet, SandboxUsage, UsageTotals } from './types.js';

/** What one sample adds to a sandbox's account. */
export interface UsageDelta {
  cpuSeconds: number;
  memoryGiBSeconds: number;
  diskGiBHours: number;
  netBytesIn: number;
  netBytesOut: number;
}

/** Where a sandbox's meter stands: carried across engine restarts so no CPU time is lost or counted twice. */
export interface MeterMark {
  cpuSeconds: number;
  sampledAt: number;
}

export interface UsageFilter {
  sandbox?: string;
  tenant?: string | null;
  fromDay?: string;
  toDay?: string;
}

interface Row {
  cpu: number; mem: number; disk: number; net_in: number; net_out: number;
}

const SUMS = `SUM(cpu_seconds) AS cpu, SUM(memory_gib_seconds) AS mem, SUM(disk_gib_hours) AS disk,
  SUM(net_bytes_in) AS net_in, SUM(net_bytes_out) AS net_out`;

export function costOf(t: Omit<UsageTotals, 'cost'>, p: PriceSheet): number {
  // Not rounded: a short sandbox costs fractions of a cent, and sums must add up; clients round for display.
  return (t.cpuSeconds / 3600) * p.vcpuHour + (t.memoryGiBSeconds / 3600) * p.memoryGiBHour
    + t.diskGiBHours * p.diskGiBHour + ((t.netBytesIn + t.netBytesOut) / 2 ** 30) * p.netGiB;
}

/** usage_daily holds one row per (UTC day, sandbox): the daily rollup and the per-sandbox account at once. */
export class UsageRepository {
  // Prepared once: add() runs for every proxied connection that ends (the egress proxy's
  // accounting), where parsing the SQL again cost as much as running it.
  private readonly addStmt;
  private readonly markStmt;
  private readonly setMarkStmt;

  constructor(private readonly db: Db) {
    this.addStmt = db.prepare(`INSERT INTO usage_daily (day, sandbox, tenant, cpu_seconds, memory_gib_seconds, disk_gib_hours, net_bytes_in, net_bytes_out)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (day, sandbox) DO UPDATE SET cpu_seconds = cpu_seconds + excluded.cpu_seconds,
        memory_gib_seconds = memory_gib_seconds + excluded.memory_gib_seconds, disk_gib_hours = disk_gib_hours + excluded.disk_gib_hours,
        net_bytes_in = net_bytes_in + excluded.net_bytes_in, net_bytes_out = net_bytes_out + excluded.net_bytes_out`);
    this.markStmt = db.prepare('SELECT cpu_seconds AS cpuSeconds, sampled_at AS sampledAt FROM usage_meter WHERE sandbox = ?');
    this.setMarkStmt = db.prepare(`INSERT INTO usage_meter (sandbox, cpu_seconds, sampled_at) VALUES (?, ?, ?)
      ON CONFLICT (sandbox) DO UPDATE SET cpu_seconds = excluded.cpu_seconds, sampled_at = excluded.sampled_at`);
  }

  add(day: string, sandbox: string, tenant: string, d: UsageDelta): void {
    this.addStmt.run(day, sandbox, tenant, d.cpuSeconds, d.memoryGiBSeconds, d.diskGiBHours, d.netBytesIn, d.netBytesOut);
  }

  mark(sandbox: string): MeterMark | null {
    const row = this.markStmt.get(sandbox) as MeterMark | undefined;
    return row ?? null;
  }

  setMark(sandbox: string, m: MeterMark): void {
    this.setMarkStmt.run(sandbox, m.cpuSeconds, m.sampledAt);
  }

  dropMark(sandbox: string): void {
    this.db.prepare('DELETE FROM usage_meter WHERE sandbox = ?').run(sandbox);
  }

  totals(f: UsageFilter, prices: PriceSheet): UsageTotals {
    const { where, args } = this.where(f);
    return totalsOf(this.db.prepare(`SELECT ${SUMS} FROM usage_daily ${where}`).get(...args) as Row, prices);
  }

  bySandbox(f: UsageFilter, prices: PriceSheet): SandboxUsage[] {
    const { where, args } = this.where(f);
    const rows = this.db.prepare(`SELECT sandbox, tenant, ${SUMS} FROM usage_daily ${where} GROUP BY sandbox, tenant ORDER BY sandbox`)
      .all(...args) as (Row & { sandbox: string; tenant: string })[];
    return rows.map((r) => ({ sandbox: r.sandbox, tenant: r.tenant, ...totalsOf(r, prices) }));
  }

  byDay(f: UsageFilter, prices: PriceSheet): DailyUsage[] {
    const { where, args } = this.where(f);
    const rows = this.db.prepare(`SELECT day, tenant, ${SUMS} FROM usage_daily ${where} GROUP BY day, tenant ORDER BY day, tenant`)
      .all(...args) as (Row & { day: string; tenant: string })[];
    return rows.map((r) => ({ day: r.day, tenant: r.tenant, ...totalsOf(r, prices) }));
  }

  private where(f: UsageFilter): { where: string; args: string[] } {
    const conds: string[] = [];
    const args: string[] = [];
    if (f.sandbox !== undefined) { conds.push('sandbox = ?'); args.push(f.sandbox); }
    if (f.tenant) { conds.push('tenant = ?'); args.push(f.tenant); }
    if (f.fromDay) { conds.push('day >= ?'); args.push(f.fromDay); }
    if (f.toDay) { conds.push('day <= ?'); args.push(f.toDay); }
    return { where: conds.length ? `WHERE ${conds.join(' AND ')}` : '', args };
  }
}

function totalsOf(r: Row, prices: PriceSheet): UsageTotals {
  const t = {
    cpuSeconds: r.cpu ?? 0, memoryGiBSeconds: r.mem ?? 0, diskGiBHours: r.disk ?? 0,
    netBytesIn: r.net_in ?? 0, netBytesOut: r.net_out ?? 0,
  };
  return { ...t, cost: costOf(t, prices) };
}
