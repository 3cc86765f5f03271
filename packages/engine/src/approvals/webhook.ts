/**
 * The approval webhook: one signed POST per approval.requested, so an operator's chat bot or
 * pager hears about it. Operator configuration only (EngineOptions, or an admin-set policy);
 * it never blocks or decides anything: failures become approval.webhook_failed events.
 */
import { createHmac } from 'node:crypto';

export const SIGNATURE_HEADER = 'x-airlock-signature';
const ATTEMPTS = 3;
const ATTEMPT_TIMEOUT_MS = 5_000;
const BACKOFF_MS = [500, 2_000];

/** `sha256=<hex HMAC-SHA256 of the raw body>`, the value of X-Airlock-Signature. */
export function signBody(secret: string | Buffer, body: string | Buffer): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

export interface WebhookDelivery {
  url: string;
  /** The JSON body, exactly as sent and signed. */
  body: string;
  secret: string | Buffer | null;
  /** The approval id, also sent as X-Airlock-Delivery. */
  id: string;
}

/**
 * Sends with a short timeout and a few retries (any 2xx is success). Resolves with null on
 * success, else the last error's text; never rejects. `signal` stops it (engine closing).
 */
export async function deliverWebhook(d: WebhookDelivery, signal: AbortSignal): Promise<string | null> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': 'airlock-approvals',
    'x-airlock-event': 'approval.requested',
    'x-airlock-delivery': d.id,
  };
  if (d.secret !== null) headers[SIGNATURE_HEADER] = signBody(d.secret, d.body);
  let last = 'not sent';
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (signal.aborted) return 'engine closed';
    if (attempt > 0) await sleep(BACKOFF_MS[attempt - 1] ?? 2_000, signal);
    try {
      const res = await fetch(d.url, {
        method: 'POST', headers, body: d.body, redirect: 'manual',
        signal: AbortSignal.any([signal, AbortSignal.timeout(ATTEMPT_TIMEOUT_MS)]),
      });
      await res.body?.cancel().catch(() => {});
      if (res.status >= 200 && res.status < 300) return null;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = (e as Error).name === 'TimeoutError' ? `no answer within ${ATTEMPT_TIMEOUT_MS} ms` : String((e as Error).cause ?? (e as Error).message);
    }
  }
  return last;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
