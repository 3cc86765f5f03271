/**
 * A sandbox's timeline (`airlock sandbox history`): its audit events merged with its exec
 * records, oldest first. Execs appear once, as their record (command, exit, output blobs),
 * instead of the exec.started/exec.exited pair; allowed network traffic is left out (it is in
 * the event log), refusals and everything else the sandbox did are kept.
 */
import type { AuditEvent } from '../types.js';
import type { ExecRecord } from './exec-records.js';

export type HistoryEntry =
  | { ts: string; kind: 'exec'; exec: ExecRecord }
  | { ts: string; kind: 'event'; seq: number; type: string; data: Record<string, unknown> };

const ALLOWED_NET = new Set(['allow']);

function keepEvent(e: AuditEvent, recorded: ReadonlySet<string>): boolean {
  if (e.type === 'exec.started' || e.type === 'exec.exited') {
    // Background execs and sessions with no record yet stay as events.
    return typeof e.data.execId !== 'string' || !recorded.has(e.data.execId);
  }
  if (e.type === 'net.connect' || e.type === 'net.dns') {
    const v = e.data.verdict;
    return !(typeof v === 'string' && ALLOWED_NET.has(v)) || Array.isArray(e.data.flags);
  }
  return true;
}

export function buildHistory(events: readonly AuditEvent[], records: readonly ExecRecord[]): HistoryEntry[] {
  const recorded = new Set(records.map((r) => r.execId));
  const entries: Array<HistoryEntry & { order: number }> = [];
  for (const e of events) {
    if (keepEvent(e, recorded)) entries.push({ ts: e.ts, kind: 'event', seq: e.seq, type: e.type, data: e.data, order: e.seq });
  }
  // An exec sorts where its exec.started event was, so ties with other events keep log order.
  const startedSeq = new Map<string, number>();
  for (const e of events) if (e.type === 'exec.started' && typeof e.data.execId === 'string') startedSeq.set(e.data.execId, e.seq);
  for (const r of records) entries.push({ ts: r.startedAt, kind: 'exec', exec: r, order: startedSeq.get(r.execId) ?? Number.MAX_SAFE_INTEGER });
  entries.sort((a, b) => (a.order !== b.order && a.order !== Number.MAX_SAFE_INTEGER && b.order !== Number.MAX_SAFE_INTEGER
    ? a.order - b.order
    : a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : a.order - b.order));
  return entries.map(({ order: _order, ...e }) => e as HistoryEntry);
}
