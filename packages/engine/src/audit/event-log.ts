import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Db } from '../store/db.js';
import type { AuditEvent } from '../types.js';
import { canonicalJson } from './canonical-json.js';

export interface NewEvent {
  tenant: string;
  sandbox: string | null;
  type: string;
  data?: Record<string, unknown>;
}

export interface EventQuery {
  tenant?: string | null;
  sandbox?: string;
  type?: string;
  afterSeq?: number;
  limit?: number;
}

const GENESIS = '0'.repeat(64);

export function eventHash(prev: string, e: Omit<AuditEvent, 'prev' | 'hash'>): string {
  return createHash('sha256')
    .update(prev)
    .update(canonicalJson({ seq: e.seq, ts: e.ts, tenant: e.tenant, sandbox: e.sandbox, type: e.type, data: e.data }))
    .digest('hex');
}

interface EventRow {
  seq: number; ts: string; tenant: string; sandbox: string | null; type: string; data: string; prev: string; hash: string;
}

function rowToEvent(r: EventRow): AuditEvent {
  return { ...r, data: JSON.parse(r.data) as Record<string, unknown> };
}

/**
 * Append-only, hash-chained event log in the same SQLite database as the state it records,
 * so callers can append inside the transaction that changes that state.
 */
export class EventLog {
  private readonly emitter = new EventEmitter();
  private readonly lastStmt;
  private readonly insertStmt;
  private pending: AuditEvent[] = [];

  constructor(private readonly db: Db) {
    this.emitter.setMaxListeners(0);
    this.lastStmt = db.prepare('SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1');
    this.insertStmt = db.prepare(
      'INSERT INTO events (seq, ts, tenant, sandbox, type, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
  }

  /**
   * Appends one event. Must run inside a write transaction when it records a state change;
   * on its own it opens one. Subscribers hear about it after the commit (see flush()).
   */
  append(e: NewEvent): AuditEvent {
    const run = (): AuditEvent => {
      const last = this.lastStmt.get() as { seq: number; hash: string } | undefined;
      const prev = last?.hash ?? GENESIS;
      const base = {
        seq: (last?.seq ?? 0) + 1,
        ts: new Date().toISOString(),
        tenant: e.tenant,
        sandbox: e.sandbox,
        type: e.type,
        data: e.data ?? {},
      };
      const event: AuditEvent = { ...base, prev, hash: eventHash(prev, base) };
      this.insertStmt.run(event.seq, event.ts, event.tenant, event.sandbox, event.type, JSON.stringify(event.data), prev, event.hash);
      this.pending.push(event);
      return event;
    };
    if (this.db.inTransaction) return run();
    const ev = this.db.transaction(run).immediate();
    this.flush();
    return ev;
  }

  /** Publishes events appended by committed transactions. Call after a transaction that appended. */
  flush(): void {
    const batch = this.pending;
    this.pending = [];
    for (const ev of batch) this.emitter.emit('event', ev);
  }

  /** Forget events of a rolled-back transaction. */
  discardPending(): void {
    this.pending = [];
  }

  query(q: EventQuery): AuditEvent[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.tenant) { where.push('tenant = ?'); args.push(q.tenant); }
    if (q.sandbox) { where.push('sandbox = ?'); args.push(q.sandbox); }
    if (q.type) { where.push('type = ?'); args.push(q.type); }
    if (q.afterSeq !== undefined) { where.push('seq > ?'); args.push(q.afterSeq); }
    const limit = Math.min(Math.max(q.limit ?? 1000, 1), 10_000);
    const sql = `SELECT * FROM events ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq ASC LIMIT ${limit}`;
    return (this.db.prepare(sql).all(...args) as EventRow[]).map(rowToEvent);
  }

  subscribe(listener: (e: AuditEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }

  /** Recomputes the chain; returns the seq of the first broken link, or null when intact. */
  verify(): { ok: boolean; count: number; brokenAt: number | null; detail?: string } {
    let prev = GENESIS;
    let expectSeq = 1;
    let count = 0;
    for (const r of this.db.prepare('SELECT * FROM events ORDER BY seq ASC').iterate() as IterableIterator<EventRow>) {
      const e = rowToEvent(r);
      if (e.seq !== expectSeq) return { ok: false, count, brokenAt: expectSeq, detail: `event ${expectSeq} is missing` };
      if (e.prev !== prev) return { ok: false, count, brokenAt: e.seq, detail: 'prev does not match the previous hash' };
      if (eventHash(prev, e) !== e.hash) return { ok: false, count, brokenAt: e.seq, detail: 'hash does not match the content' };
      prev = e.hash;
      expectSeq++;
      count++;
    }
    return { ok: true, count, brokenAt: null };
  }
}
