/**
 * `auth.denied` events, coalesced: the first failure of each second is written at once, the
 * rest of that second become one summary event per tenant (count, reasons, a few addresses).
 * A flood of bad keys therefore writes about two events a second, not one per request, and
 * cannot fill the disk. The presented secret is never recorded.
 */
import type { EventLog } from '../audit/event-log.js';

export interface AuthDenial {
  reason: string;
  address?: string;
  /** The key id part, when it names a real key. */
  keyId?: string;
}

interface Pending { count: number; reasons: Record<string, number>; addresses: Set<string>; keyIds: Set<string> }

const MAX_LISTED = 10;

export class AuthDenials {
  private windowEnd = 0;
  private readonly pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly events: EventLog, private readonly windowMs = 1000) {}

  record(tenant: string, d: AuthDenial): void {
    const now = Date.now();
    if (now >= this.windowEnd) {
      this.windowEnd = now + this.windowMs;
      this.events.append({ tenant, sandbox: null, type: 'auth.denied', data: { ...d } });
      return;
    }
    let p = this.pending.get(tenant);
    if (!p) {
      p = { count: 0, reasons: {}, addresses: new Set(), keyIds: new Set() };
      this.pending.set(tenant, p);
    }
    p.count++;
    p.reasons[d.reason] = (p.reasons[d.reason] ?? 0) + 1;
    if (d.address && p.addresses.size < MAX_LISTED) p.addresses.add(d.address);
    if (d.keyId && p.keyIds.size < MAX_LISTED) p.keyIds.add(d.keyId);
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), Math.max(0, this.windowEnd - now));
      this.timer.unref();
    }
  }

  /** Writes the summaries of the current window. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const [tenant, p] of this.pending) {
      this.events.append({
        tenant, sandbox: null, type: 'auth.denied',
        data: { reason: 'coalesced', count: p.count, reasons: p.reasons, addresses: [...p.addresses], keyIds: [...p.keyIds], windowMs: this.windowMs },
      });
    }
    this.pending.clear();
  }
}
