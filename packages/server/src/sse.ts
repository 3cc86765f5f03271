import type { AuditEvent } from '@airlock/engine';

/** One Server-Sent Events message; `id` lets a reconnecting client resume with Last-Event-ID. */
export function sseMessage(e: AuditEvent): string {
  // Types are engine-made, but a newline in one would end the field early: never let it.
  const type = e.type.replace(/[\r\n]/g, ' ');
  return `id: ${e.seq}\nevent: ${type}\ndata: ${JSON.stringify(e)}\n\n`;
}

export const SSE_HEARTBEAT = ': keepalive\n\n';

/** Last-Event-ID is a string the client echoes back; only a plain sequence number is meaningful. */
export function parseLastEventId(header: string | string[] | undefined): number | undefined {
  if (typeof header !== 'string' || !/^[0-9]{1,15}$/.test(header.trim())) return undefined;
  return Number(header.trim());
}
