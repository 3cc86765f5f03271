import type { Db } from '../store/db.js';

/** A named volume as stored (table `volumes`, migration 2). */
export interface VolumeRecord {
  id: string;
  tenant: string;
  name: string;
  sizeMiB: number;
  createdAt: number;
}

interface Row { id: string; tenant: string; name: string; size_mib: number; created_at: number }

const fromRow = (r: Row): VolumeRecord => ({ id: r.id, tenant: r.tenant, name: r.name, sizeMiB: r.size_mib, createdAt: r.created_at });

export class VolumeRepository {
  private readonly byName;
  private readonly insertStmt;
  private readonly deleteStmt;
  private readonly totalStmt;

  constructor(private readonly db: Db) {
    this.byName = db.prepare('SELECT * FROM volumes WHERE tenant = ? AND name = ?');
    this.insertStmt = db.prepare('INSERT INTO volumes (id, tenant, name, size_mib, created_at) VALUES (?, ?, ?, ?, ?)');
    this.deleteStmt = db.prepare('DELETE FROM volumes WHERE id = ?');
    this.totalStmt = db.prepare('SELECT COALESCE(SUM(size_mib), 0) AS total, COUNT(*) AS n FROM volumes');
  }

  get(tenant: string, name: string): VolumeRecord | null {
    const row = this.byName.get(tenant, name) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  /** Every volume, or one tenant's, by name. */
  list(tenant: string | null): VolumeRecord[] {
    const rows = tenant === null
      ? this.db.prepare('SELECT * FROM volumes ORDER BY tenant, name').all()
      : this.db.prepare('SELECT * FROM volumes WHERE tenant = ? ORDER BY name').all(tenant);
    return (rows as Row[]).map(fromRow);
  }

  insert(v: VolumeRecord): void {
    this.insertStmt.run(v.id, v.tenant, v.name, v.sizeMiB, v.createdAt);
  }

  delete(id: string): void {
    this.deleteStmt.run(id);
  }

  totals(): { sizeMiB: number; count: number } {
    const r = this.totalStmt.get() as { total: number; n: number };
    return { sizeMiB: r.total, count: r.n };
  }
}
