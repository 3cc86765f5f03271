/** A Server-Sent Events message as the events stream sends it. */
export interface SseMessage {
  id?: string;
  event?: string;
  data: string;
}

/** Incremental text/event-stream parser (the subset the API uses: id, event, data, comments). */
export class SseParser {
  private readonly decoder = new TextDecoder('utf-8');
  private pending = '';
  private current: { id?: string; event?: string; data: string[] } = { data: [] };

  push(chunk: Uint8Array): SseMessage[] {
    this.pending += this.decoder.decode(chunk, { stream: true });
    const lines = this.pending.split(/\r\n|\n|\r/);
    this.pending = lines.pop() ?? '';
    const out: SseMessage[] = [];
    for (const line of lines) {
      if (line === '') {
        if (this.current.data.length > 0) {
          const msg: SseMessage = { data: this.current.data.join('\n') };
          if (this.current.id !== undefined) msg.id = this.current.id;
          if (this.current.event !== undefined) msg.event = this.current.event;
          out.push(msg);
        }
        this.current = { data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.current.data.push(value);
      else if (field === 'id') this.current.id = value;
      else if (field === 'event') this.current.event = value;
    }
    return out;
  }
}
