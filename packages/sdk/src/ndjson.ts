import { ApiError } from './errors.js';

/**
 * Splits a byte stream into JSON values, one per line. Bytes are decoded with a streaming
 * decoder so a character split across chunks survives; blank lines (keepalives) are skipped.
 */
export class NdjsonParser {
  private readonly decoder = new TextDecoder('utf-8');
  private pending = '';

  push(chunk: Uint8Array): unknown[] {
    this.pending += this.decoder.decode(chunk, { stream: true });
    const lines = this.pending.split('\n');
    this.pending = lines.pop() ?? '';
    return parseLines(lines);
  }

  /** Call at end of stream: returns a last unterminated line, if any. */
  end(): unknown[] {
    const rest = this.pending + this.decoder.decode();
    this.pending = '';
    return parseLines([rest]);
  }
}

function parseLines(lines: string[]): unknown[] {
  const values: unknown[] = [];
  for (const raw of lines) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') continue;
    try {
      values.push(JSON.parse(line));
    } catch (cause) {
      throw new ApiError(0, 'bad_response', `the server sent a line that is not JSON: ${line.slice(0, 100)}`, undefined, { cause });
    }
  }
  return values;
}
