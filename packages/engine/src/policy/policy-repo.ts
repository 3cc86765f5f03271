/**
 * Policy documents, versioned: every set is a new row (version = previous + 1), never an
 * update, so the history of what applied when stays in the store. Tenant '*' holds the server
 * default. The latest version is the one in force.
 */
import type { Db } from '../store/db.js';
import type { PolicyDocument } from './schema.js';

export const SERVER_DEFAULT = '*';

export interface PolicyRecord {
  tenant: string;
  version: number;
  document: PolicyDocument;
  createdAt: number;
  createdBy: string | null;
}

interface Row { tenant: string; version: number; document: string; created_at: number; created_by: string | null }

const fromRow = (r: Row): PolicyRecord => ({
  tenant: r.tenant, version: r.version, document: JSON.parse(r.document) as PolicyDocument, createdAt: r.created_at, createdBy: r.created_by,
});

export class PolicyRepository {
  private readonly latestStmt;

  constructor(private readonly db: Db) {
    this.latestStmt = db.prepare('SELECT * FROM policies WHERE tenant = ? ORDER BY version DESC LIMIT 1');
  }

  latest(tenant: string): PolicyRecord | null {
    const r = this.latestStmt.get(tenant) as Row | undefined;
    return r ? fromRow(r) : null;
  }

  get(tenant: string, version: number): PolicyRecord | null {
    const r = this.db.prepare('SELECT * FROM policies WHERE tenant = ? AND version = ?').get(tenant, version) as Row | undefined;
    return r ? fromRow(r) : null;
  }

  /** Appends the next version; call inside the engine's write transaction. */
  append(tenant: string, document: PolicyDocument, createdBy: string | null): PolicyRecord {
    const cur = this.latest(tenant);
    const rec: PolicyRecord = { tenant, version: (cur?.version ?? 0) + 1, document, createdAt: Date.now(), createdBy };
    this.db.prepare('INSERT INTO policies (tenant, version, document, created_at, created_by) VALUES (?, ?, ?, ?, ?)')
      .run(tenant, rec.version, JSON.stringify(document), rec.createdAt, createdBy);
    return rec;
  }
}
