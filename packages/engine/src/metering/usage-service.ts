import type { Caller } from '../engine-api.js';
import { badRequest, forbidden } from '../errors.js';
import type { PriceSheet, UsageQuery, UsageReport } from './types.js';
import type { UsageRepository } from './usage-repo.js';

const DAY = /^\d{4}-\d{2}-\d{2}/;

function dayOf(v: string | undefined, name: string): string | undefined {
  if (v === undefined || v === '') return undefined;
  if (!DAY.test(v) || Number.isNaN(Date.parse(v.slice(0, 10)))) throw badRequest(`${name} must be a date (YYYY-MM-DD) or an ISO time, got ${JSON.stringify(v)}`);
  return v.slice(0, 10);
}

/**
 * The usage report. A tenant's key sees its own tenant only (naming another is refused); the
 * caller checks sandbox ownership first (another tenant's sandbox is not found).
 */
export function usageReport(repo: UsageRepository, prices: PriceSheet, caller: Caller, q: UsageQuery): UsageReport {
  if (caller.tenant !== null && q.tenant !== undefined && q.tenant !== caller.tenant) throw forbidden('a tenant key sees only its own tenant\'s usage');
  const from = dayOf(q.from, 'from');
  const to = dayOf(q.to, 'to');
  if (from && to && from > to) throw badRequest('from is after to');
  const f = { sandbox: q.sandbox, tenant: caller.tenant ?? q.tenant, fromDay: from, toDay: to };
  return {
    from: from ?? null,
    to: to ?? null,
    ...repo.totals(f, prices),
    sandboxes: repo.bySandbox(f, prices),
    days: repo.byDay(f, prices),
  };
}
