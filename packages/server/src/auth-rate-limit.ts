/**
 * Failed authentication, rate-limited per client address: a token bucket that each failure
 * drains (burst 20, refilled at 10 a minute by default). An address whose bucket is empty gets
 * 429 with Retry-After for every request, a correct key included, until a token is back: key
 * guessing from one address is slowed to the refill rate, and a client that fixes its key waits
 * seconds, not minutes. Memory is bounded: full buckets are dropped, and the table has a size cap.
 */
export interface AuthRateLimitOptions {
  /** Failures an address may make in a burst (default 20). */
  burst?: number;
  /** Failures per minute refilled (default 10). */
  perMinute?: number;
}

interface Bucket { tokens: number; at: number }

const MAX_TRACKED = 10_000;

export class AuthFailureLimiter {
  private readonly burst: number;
  private readonly perMs: number;
  private readonly buckets = new Map<string, Bucket>();

  constructor(opts: AuthRateLimitOptions = {}) {
    this.burst = opts.burst ?? 20;
    this.perMs = (opts.perMinute ?? 10) / 60_000;
    if (!(this.burst >= 1) || !(this.perMs > 0)) throw new Error('auth rate limit: burst must be ≥ 1 and perMinute > 0');
  }

  /** Seconds to wait when the address is blocked now, else 0. */
  retryAfter(address: string, now = Date.now()): number {
    const b = this.refill(address, now);
    if (!b || b.tokens >= 1) return 0;
    return Math.max(1, Math.ceil((1 - b.tokens) / this.perMs / 1000));
  }

  /** One failure from `address`. */
  fail(address: string, now = Date.now()): void {
    let b = this.refill(address, now);
    if (!b) {
      if (this.buckets.size >= MAX_TRACKED) this.prune(now);
      b = { tokens: this.burst, at: now };
      this.buckets.set(address, b);
    }
    b.tokens = Math.max(0, b.tokens - 1);
  }

  private refill(address: string, now: number): Bucket | undefined {
    const b = this.buckets.get(address);
    if (!b) return undefined;
    b.tokens = Math.min(this.burst, b.tokens + (now - b.at) * this.perMs);
    b.at = now;
    if (b.tokens >= this.burst) {
      this.buckets.delete(address);
      return undefined;
    }
    return b;
  }

  private prune(now: number): void {
    for (const address of [...this.buckets.keys()]) this.refill(address, now);
    // Still full of distinct attackers: forget the oldest half rather than grow without bound.
    if (this.buckets.size >= MAX_TRACKED) {
      let n = 0;
      for (const k of this.buckets.keys()) { if (n++ >= MAX_TRACKED / 2) break; this.buckets.delete(k); }
    }
  }
}
