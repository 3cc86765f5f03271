/**
 * Follows GET /v1/events?follow=1 (Server-Sent Events) and reconnects after a dropped connection
 * with Last-Event-ID set to the last event seen: the server replays from there, so nothing is lost,
 * and events at or below that seq are skipped here too, so nothing is shown twice.
 */
import { request as httpRequest, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

export interface FollowFilter { sandbox?: string; type?: string; tenant?: string }

export interface FollowOptions {
  url: string;
  apiKey?: string;
  filter: FollowFilter;
  /** Replay events after this seq first (default: live events only). */
  after?: number;
  signal: AbortSignal;
  onEvent: (e: { seq: number; [k: string]: unknown }) => void;
  /** A connection dropped; the follower reconnects after `delayMs`. */
  onReconnect?: (lastSeq: number | undefined, why: string) => void;
  reconnectDelayMs?: number;
}

/** Resolves when `signal` aborts; rejects on a refusal that a retry cannot fix (4xx). */
export async function followEvents(o: FollowOptions): Promise<void> {
  let lastSeq = o.after;
  const delay = o.reconnectDelayMs ?? 500;
  while (!o.signal.aborted) {
    const why = await oneConnection(o, lastSeq, (e) => {
      if (lastSeq !== undefined && e.seq <= lastSeq) return;
      lastSeq = e.seq;
      o.onEvent(e);
    });
    if (o.signal.aborted) return;
    o.onReconnect?.(lastSeq, why);
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, delay);
      o.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }
}

function oneConnection(o: FollowOptions, lastSeq: number | undefined, emit: (e: { seq: number }) => void): Promise<string> {
  const u = new URL('/v1/events', o.url);
  u.searchParams.set('follow', '1');
  for (const [k, v] of Object.entries(o.filter)) if (v !== undefined) u.searchParams.set(k, v);
  const headers: Record<string, string> = { accept: 'text/event-stream' };
  if (o.apiKey) headers.authorization = `Bearer ${o.apiKey}`;
  // Last-Event-ID resumes after it; with none yet and --after given, `after` does the same.
  if (lastSeq !== undefined) headers['last-event-id'] = String(lastSeq);
  return new Promise((resolve, reject) => {
    let req: ClientRequest | null = null;
    const onAbort = () => req?.destroy();
    o.signal.addEventListener('abort', onAbort, { once: true });
    const done = (why: string) => { o.signal.removeEventListener('abort', onAbort); resolve(why); };
    req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { method: 'GET', headers }, (res) => {
      if (res.statusCode !== 200) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { body += d; });
        res.on('end', () => {
          o.signal.removeEventListener('abort', onAbort);
          if ((res.statusCode ?? 500) < 500) reject(new Error(`events: HTTP ${res.statusCode}: ${body.slice(0, 500)}`));
          else resolve(`HTTP ${res.statusCode}`);
        });
        return;
      }
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        buf += chunk;
        let end: number;
        // A message ends at a blank line; only complete ones count (a cut one is replayed).
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const msg = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = msg.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          if (data) emit(JSON.parse(data) as { seq: number });
        }
      });
      res.on('close', () => done('connection closed'));
      res.on('error', () => { /* close follows */ });
    });
    req.on('error', (e) => done(e.message));
    req.end();
  });
}
