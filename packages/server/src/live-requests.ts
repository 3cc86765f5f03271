/**
 * Requests that can outlive a normal response (exec, SSE). Server close stops them, because
 * fastify's close waits for open connections and a followed event stream never ends itself.
 */
export class LiveRequests {
  private readonly stops = new Set<() => void>();

  /** Registers a stop function; returns the function that unregisters it. */
  add(stop: () => void): () => void {
    this.stops.add(stop);
    return () => { this.stops.delete(stop); };
  }

  stopAll(): void {
    for (const stop of [...this.stops]) {
      try { stop(); } catch { /* one failing stop must not keep the others alive */ }
    }
    this.stops.clear();
  }

  get size(): number {
    return this.stops.size;
  }
}

/**
 * Calls `onGone` when the client goes away before the response finished: the way to learn
 * of a disconnect (the request's own 'close' fires once its body is read, not on hang-up).
 */
export function onClientGone(res: import('node:http').ServerResponse, onGone: () => void): void {
  res.once('close', () => {
    if (!res.writableFinished) onGone();
  });
}
