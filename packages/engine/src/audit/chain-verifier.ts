import { createHash, type KeyObject } from 'node:crypto';
import { canonicalJson } from './canonical-json.js';
import { verifyCheckpointSignature } from './signing-key.js';

export const GENESIS_HASH = '0'.repeat(64);

export type BreakReason =
  | 'hash-mismatch' | 'prev-mismatch' | 'seq-gap' | 'reordered' | 'tail-truncated'
  | 'checkpoint-signature' | 'checkpoint-mismatch'
  /** Bundles only: an exec output file that does not hash to what its exec.exited event names. */
  | 'output-mismatch';

export interface VerifyResult {
  ok: boolean;
  /** Events checked (up to the first break). */
  events: number;
  /** Signed checkpoints checked. */
  checkpoints: number;
  /** Seq of the last event checked. */
  headSeq: number;
  firstBroken?: { seq: number; reason: BreakReason; detail: string };
}

export interface CheckpointRow { seq: number; hash: string; ts: string; signature: string }

/**
 * The hash of one stored event. The stored data text is tried first as is: events are written
 * with canonical data, so this is one sha256 with no JSON parse. Only when that does not match
 * (a row written with non-canonical data, or a tampered one) is the data parsed and canonicalized.
 */
export function storedEventHash(
  seq: number, ts: string, tenant: string, sandbox: string | null, type: string, data: string, prev: string,
): { fast: string; slow: () => string } {
  const tail = `,"sandbox":${sandbox === null ? 'null' : JSON.stringify(sandbox)},"seq":${seq},"tenant":${JSON.stringify(tenant)},"ts":${JSON.stringify(ts)},"type":${JSON.stringify(type)}}`;
  const fast = createHash('sha256').update(prev).update(`{"data":${data}${tail}`).digest('hex');
  const slow = () => {
    let canon: string;
    try { canon = canonicalJson(JSON.parse(data)); } catch { return ''; }
    return createHash('sha256').update(prev).update(`{"data":${canon}${tail}`).digest('hex');
  };
  return { fast, slow };
}

/**
 * Walks a hash chain one row at a time, in seq order, holding only the previous hash and the
 * checkpoints. Feed rows with `row()`, then call `finish()`. Stops at the first break.
 */
export class ChainVerifier {
  private prev: string;
  private expectSeq: number;
  private count = 0;
  private cpIndex = 0;
  private cpChecked = 0;
  private broken: VerifyResult['firstBroken'];

  /**
   * @param checkpoints signed checkpoints in seq order
   * @param startAfter for a chain that begins mid-log (an export): the seq and hash before its first event
   * @param lookup optional: for a prev-mismatch, finds whether the expected successor sits at another seq (a reorder)
   */
  constructor(
    private readonly checkpoints: CheckpointRow[],
    private readonly publicKey: KeyObject | null,
    startAfter?: { seq: number; hash: string },
    private readonly lookup?: (prevHash: string) => number | undefined,
  ) {
    this.prev = startAfter?.hash ?? GENESIS_HASH;
    this.expectSeq = (startAfter?.seq ?? 0) + 1;
    // Checkpoints before the start cannot be checked against this chain.
    while (this.cpIndex < checkpoints.length && checkpoints[this.cpIndex]!.seq < this.expectSeq) this.cpIndex++;
  }

  get done(): boolean { return this.broken !== undefined; }

  /** Returns false once the chain is broken (stop feeding). */
  row(seq: number, ts: string, tenant: string, sandbox: string | null, type: string, data: string, prev: string, hash: string): boolean {
    if (this.broken) return false;
    if (seq !== this.expectSeq) {
      return this.fail(this.expectSeq, seq > this.expectSeq ? 'seq-gap' : 'reordered',
        seq > this.expectSeq ? `events ${this.expectSeq}..${seq - 1} are missing` : `event ${seq} appears after ${this.expectSeq - 1}`);
    }
    if (prev !== this.prev) {
      const elsewhere = this.lookup?.(this.prev);
      if (elsewhere !== undefined && elsewhere !== seq) {
        return this.fail(seq, 'reordered', `the event that follows ${seq - 1} is stored at seq ${elsewhere}`);
      }
      return this.fail(seq, 'prev-mismatch', `prev does not match the hash of event ${seq - 1}`);
    }
    const h = storedEventHash(seq, ts, tenant, sandbox, type, data, prev);
    if (h.fast !== hash && h.slow() !== hash) return this.fail(seq, 'hash-mismatch', 'the stored hash does not match the event content');
    return this.link(seq, hash);
  }

  /** An event whose content is withheld (another sandbox's, in an export): only its place in the chain is checked. */
  redacted(seq: number, prev: string, hash: string): boolean {
    if (this.broken) return false;
    if (seq !== this.expectSeq) return this.fail(this.expectSeq, seq > this.expectSeq ? 'seq-gap' : 'reordered', `expected event ${this.expectSeq}, found ${seq}`);
    if (prev !== this.prev) return this.fail(seq, 'prev-mismatch', `prev does not match the hash of event ${seq - 1}`);
    return this.link(seq, hash);
  }

  finish(): VerifyResult {
    const headSeq = this.expectSeq - 1;
    if (!this.broken) {
      // Checkpoints past the head: events after a signed point were removed.
      const beyond = this.checkpoints.slice(this.cpIndex).filter((c) => c.seq > headSeq);
      const signed = beyond.find((c) => this.publicKey === null || verifyCheckpointSignature(this.publicKey, c.seq, c.hash, c.ts, c.signature));
      if (signed) {
        this.fail(headSeq + 1, 'tail-truncated', `a signed checkpoint covers event ${signed.seq} but the log ends at ${headSeq}`);
      } else if (beyond.length > 0) {
        this.fail(beyond[0]!.seq, 'checkpoint-signature', `checkpoint at ${beyond[0]!.seq} has a bad signature`);
      }
    }
    return {
      ok: !this.broken, events: this.count, checkpoints: this.cpChecked, headSeq,
      ...(this.broken ? { firstBroken: this.broken } : {}),
    };
  }

  private link(seq: number, hash: string): boolean {
    this.prev = hash;
    this.expectSeq++;
    this.count++;
    // Several checkpoints may name one seq (the head at close, then the boundary): check each.
    while (this.cpIndex < this.checkpoints.length && this.checkpoints[this.cpIndex]!.seq === seq) {
      const cp = this.checkpoints[this.cpIndex++]!;
      if (this.publicKey && !verifyCheckpointSignature(this.publicKey, cp.seq, cp.hash, cp.ts, cp.signature)) {
        return this.fail(seq, 'checkpoint-signature', `checkpoint at ${seq} is not signed by the audit key`);
      }
      if (cp.hash !== hash) return this.fail(seq, 'checkpoint-mismatch', `checkpoint at ${seq} signs another hash than the stored event's`);
      this.cpChecked++;
    }
    return true;
  }

  private fail(seq: number, reason: BreakReason, detail: string): false {
    this.broken ??= { seq, reason, detail };
    return false;
  }
}
