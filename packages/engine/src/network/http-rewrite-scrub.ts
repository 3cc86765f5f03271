/**
 * Byte-string replacement over a stream whose chunks may cut a match anywhere: the secret
 * broker uses it to turn every occurrence of a real secret value coming back from a secret
 * host into the sandbox's placeholder (and, in detect-only mode, to spot placeholders going
 * out to hosts that must not get them). Matches never overlap; at one position the longest
 * needle wins; scanning goes left to right, as String.replaceAll would.
 */

export interface Replacement {
  /** What to look for (non-empty). */
  from: Buffer;
  /** What it becomes. */
  to: Buffer;
  /** Reported on a match (e.g. the secret's name). */
  label: string;
}

/** The earliest match at or after `from` (longest needle on a tie), or null. */
function nextMatch(buf: Buffer, from: number, reps: readonly Replacement[]): { at: number; rep: Replacement } | null {
  let best: { at: number; rep: Replacement } | null = null;
  for (const rep of reps) {
    const at = buf.indexOf(rep.from, from);
    if (at === -1) continue;
    if (!best || at < best.at || (at === best.at && rep.from.length > best.rep.from.length)) best = { at, rep };
  }
  return best;
}

/** Replaces every match in a complete buffer; `hits` gets the label of each match. */
export function replaceAll(buf: Buffer, reps: readonly Replacement[], hits?: (label: string) => void): Buffer {
  if (reps.length === 0) return buf;
  const out: Buffer[] = [];
  let pos = 0;
  for (let m = nextMatch(buf, 0, reps); m; m = nextMatch(buf, pos, reps)) {
    out.push(buf.subarray(pos, m.at), m.rep.to);
    hits?.(m.rep.label);
    pos = m.at + m.rep.from.length;
  }
  if (pos === 0) return buf;
  out.push(buf.subarray(pos));
  return Buffer.concat(out);
}

/**
 * Streaming replaceAll: holds back the last (longest needle - 1) bytes of what it was given,
 * since they may be the start of a match the next chunk completes. end() releases them.
 */
export class StreamReplacer {
  private held: Buffer = Buffer.alloc(0);
  private readonly keep: number;

  constructor(private readonly reps: readonly Replacement[], private readonly hits?: (label: string) => void) {
    this.keep = Math.max(0, ...reps.map((r) => r.from.length)) - 1;
  }

  /** The bytes that are now safe to pass on (possibly empty). */
  push(chunk: Buffer): Buffer {
    if (this.reps.length === 0) return chunk;
    const buf = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    const out: Buffer[] = [];
    let pos = 0;
    for (let m = nextMatch(buf, 0, this.reps); m; m = nextMatch(buf, pos, this.reps)) {
      out.push(buf.subarray(pos, m.at), m.rep.to);
      this.hits?.(m.rep.label);
      pos = m.at + m.rep.from.length;
    }
    // Any match starting before `cut` would have ended inside buf and been found above.
    const cut = Math.max(pos, buf.length - this.keep);
    out.push(buf.subarray(pos, cut));
    // Copied: the caller may reuse its chunk's memory.
    this.held = Buffer.from(buf.subarray(cut));
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  /** What was held back; the stream is over. */
  end(): Buffer {
    const rest = this.held;
    this.held = Buffer.alloc(0);
    return rest;
  }
}
