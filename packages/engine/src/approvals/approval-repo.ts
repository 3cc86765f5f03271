/** The approvals table (store/db.ts migration 4). Every state change is one conditional UPDATE, so two processes never both decide. */
import { randomBytes } from 'node:crypto';
import type { Db } from '../store/db.js';
import type { ApprovalAction, ApprovalFilter, ApprovalInfo, ApprovalKind, ApprovalState, ApprovalSubject } from './types.js';

export const APPROVAL_ID_RE = /^[0-9a-f]{12}$/;

interface Row {
  id: string; tenant: string; sandbox: string | null; kind: string; action: string; subject: string; dedupe: string | null;
  state: string; requested_at: number; requested_by: string | null; expires_at: number;
  decided_at: number | null; decided_by: string | null; reason: string | null;
}

export interface NewApproval {
  tenant: string;
  sandbox: string | null;
  kind: ApprovalKind;
  action: ApprovalAction;
  subject: ApprovalSubject;
  /** Same value, same sandbox, still pending: the same request (egress to one host). */
  dedupe: string | null;
  requestedBy: string | null;
  expiresAt: number;
}

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());

function toInfo(r: Row): ApprovalInfo {
  return {
    id: r.id, tenant: r.tenant, sandbox: r.sandbox, kind: r.kind as ApprovalKind, action: r.action as ApprovalAction,
    subject: JSON.parse(r.subject) as ApprovalSubject, state: r.state as ApprovalState,
    requestedAt: iso(r.requested_at)!, requestedBy: r.requested_by, expiresAt: iso(r.expires_at)!,
    decidedAt: iso(r.decided_at), decidedBy: r.decided_by, reason: r.reason,
  };
}

export class ApprovalRepository {
  constructor(private readonly db: Db) {}

  insert(a: NewApproval, now = Date.now()): ApprovalInfo {
    const id = randomBytes(6).toString('hex');
    this.db.prepare(`INSERT INTO approvals (id, tenant, sandbox, kind, action, subject, dedupe, state, requested_at, requested_by, expires_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)`)
      .run(id, a.tenant, a.sandbox, a.kind, a.action, JSON.stringify(a.subject), a.dedupe, now, a.requestedBy, a.expiresAt);
    return this.get(id)!;
  }

  get(id: string): ApprovalInfo | null {
    const r = this.db.prepare('SELECT * FROM approvals WHERE id = ?').get(id) as Row | undefined;
    return r ? toInfo(r) : null;
  }

  /** The pending request of this sandbox with this dedupe value, if any. */
  pendingFor(sandbox: string, dedupe: string): ApprovalInfo | null {
    const r = this.db.prepare("SELECT * FROM approvals WHERE sandbox = ? AND dedupe = ? AND state = 'pending' ORDER BY requested_at LIMIT 1").get(sandbox, dedupe) as Row | undefined;
    return r ? toInfo(r) : null;
  }

  countPending(where: { sandbox?: string; tenant?: string }): number {
    if (where.sandbox !== undefined) return (this.db.prepare("SELECT COUNT(*) AS n FROM approvals WHERE sandbox = ? AND state = 'pending'").get(where.sandbox) as { n: number }).n;
    return (this.db.prepare("SELECT COUNT(*) AS n FROM approvals WHERE tenant = ? AND state = 'pending'").get(where.tenant) as { n: number }).n;
  }

  list(f: ApprovalFilter & { tenant?: string }): ApprovalInfo[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.tenant !== undefined) { where.push('tenant = ?'); args.push(f.tenant); }
    if (f.state !== undefined) { where.push('state = ?'); args.push(f.state); }
    if (f.sandbox !== undefined) { where.push('sandbox = ?'); args.push(f.sandbox); }
    const limit = Math.min(Math.max(Math.trunc(f.limit ?? 100), 1), 1000);
    const sql = `SELECT * FROM approvals ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY requested_at DESC, rowid DESC LIMIT ${limit}`;
    return (this.db.prepare(sql).all(...args) as Row[]).map(toInfo);
  }

  /** pending → state; false when it was no longer pending (someone else decided first). */
  decide(id: string, state: Exclude<ApprovalState, 'pending'>, by: string | null, reason: string | null, now = Date.now()): boolean {
    return this.db.prepare("UPDATE approvals SET state = ?, decided_at = ?, decided_by = ?, reason = ? WHERE id = ? AND state = 'pending'")
      .run(state, now, by, reason, id).changes === 1;
  }

  /** Pending requests past their deadline. */
  overdue(now = Date.now()): ApprovalInfo[] {
    return (this.db.prepare("SELECT * FROM approvals WHERE state = 'pending' AND expires_at <= ? ORDER BY expires_at LIMIT 1000").all(now) as Row[]).map(toInfo);
  }

  /** Pending requests of one sandbox (it ended: nothing is left to approve). */
  pendingOfSandbox(sandbox: string): ApprovalInfo[] {
    return (this.db.prepare("SELECT * FROM approvals WHERE sandbox = ? AND state = 'pending'").all(sandbox) as Row[]).map(toInfo);
  }

  /** States of these ids (for waiters polling for another process's decision). */
  states(ids: string[]): Map<string, ApprovalState> {
    const out = new Map<string, ApprovalState>();
    if (ids.length === 0) return out;
    const rows = this.db.prepare(`SELECT id, state FROM approvals WHERE id IN (${ids.map(() => '?').join(',')})`).all(...ids) as Array<{ id: string; state: string }>;
    for (const r of rows) out.set(r.id, r.state as ApprovalState);
    return out;
  }
}
