import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Db } from '../store/db.js';
import type { AuditEvent } from '../types.js';
import { canonicalJson } from './canonical-json.js';
import { storedEventHash, type VerifyResult } from './chain-verifier.js';
import { checkpointMessage, parsePublicKey, type AuditSigner } from './signing-key.js';
import { verifyEventLog } from './verify-log.js';

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
export const DEFAULT_CHECKPOINT_EVERY = 1000;

export interface EventLogOptions {
  /** Signs a checkpoint of the chain head every `checkpointEvery` events; none without it. */
  signer?: AuditSigner;
  checkpointEvery?: number;
}

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
  private readonly checkpointEvery: number;
  private readonly checkpointStmt;
  private readonly lastCheckpointStmt;
  private readonly appendTx;

  constructor(private readonly db: Db, private readonly opts: EventLogOptions = {}) {
    this.emitter.setMaxListeners(0);
    this.checkpointEvery = opts.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY;
    if (!Number.isInteger(this.checkpointEvery) || this.checkpointEvery < 1) throw new Error('checkpointEvery must be a positive integer');
    this.checkpointStmt = db.prepare('INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)');
    this.lastCheckpointStmt = db.prepare('SELECT MAX(seq) FROM audit_checkpoints').pluck();
    this.appendTx = db.transaction((e: NewEvent) => this.appendInTx(e));
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
    if (this.db.inTransaction) return this.appendInTx(e);
    const ev = this.appendTx.immediate(e);
    this.flush();
    return ev;
  }

  private appendInTx(e: NewEvent): AuditEvent {
    const last = this.lastStmt.get() as { seq: number; hash: string } | undefined;
    const prev = last?.hash ?? GENESIS;
    const seq = (last?.seq ?? 0) + 1;
    const ts = new Date().toISOString();
    const data = e.data ?? {};
    // Canonical data text, hashed as stored: one canonicalization per event, and verify can
    // hash the stored text without parsing it (same value as eventHash()).
    const dataText = canonicalJson(data);
    const hash = storedEventHash(seq, ts, e.tenant, e.sandbox, e.type, dataText, prev).fast;
    this.insertStmt.run(seq, ts, e.tenant, e.sandbox, e.type, dataText, prev, hash);
    // Same transaction as the event that reaches the boundary: no window where it is unsigned.
    if (this.opts.signer && seq % this.checkpointEvery === 0) this.writeCheckpoint(seq, hash, ts);
    const event: AuditEvent = { seq, ts, tenant: e.tenant, sandbox: e.sandbox, type: e.type, data, prev, hash };
    this.pending.push(event);
    return event;
  }

  /** Publishes events appended by committed transactions. Call after a transaction that appended. */
  flush(): void {
    const batch = this.pending;
    this.pending = [];
    for (const ev of batch) this.emitter.emit('event', ev);
  }

  /** Signs the current head unless a checkpoint already covers it (clean close). */
  checkpointHead(): void {
    if (!this.opts.signer) return;
    this.db.transaction(() => {
      const last = this.lastStmt.get() as { seq: number; hash: string } | undefined;
      if (!last) return;
      const covered = this.lastCheckpointStmt.get() as number | null;
      if (covered !== null && covered >= last.seq) return;
      this.writeCheckpoint(last.seq, last.hash, new Date().toISOString());
    }).immediate();
  }

  private writeCheckpoint(seq: number, hash: string, ts: string): void {
    this.checkpointStmt.run(seq, hash, ts, this.opts.signer!.sign(checkpointMessage(seq, hash, ts)));
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

  /** Recomputes the chain and checks the signed checkpoints (audit/verify-log.ts). */
  verify(): VerifyResult {
    return verifyEventLog(this.db, this.opts.signer ? parsePublicKey(this.opts.signer.publicKeyPem) : null);
  }
}
