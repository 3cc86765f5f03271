/**
 * Heuristics that flag DNS names which look like data smuggled out in labels (DNS
 * exfiltration / tunnelling). They only flag, for the audit log; the policy decides. They are
 * tuned so everyday package-registry and cloud names stay quiet: an audit log that flags
 * everything gets ignored.
 */

export const EXFIL_LIMITS = {
  /** A label longer than this is rare in real names and the cheapest way to carry bytes. */
  maxLabel: 40,
  maxName: 120,
  maxLabels: 8,
  /** A word (label piece between '-'/'_') at least this long is checked for randomness. */
  entropyMinLength: 16,
  entropyBitsPerChar: 3.5,
  /** Encoded-looking (hex, base32, base64) words at least this long are flagged outright. */
  encodedMinLength: 24,
} as const;

export type ExfilFlag = 'long-label' | 'long-name' | 'high-entropy' | 'many-labels';

/** Shannon entropy of `s` in bits per character. */
export function shannonEntropy(s: string): number {
  if (s.length === 0) return 0;
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  let bits = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    bits -= p * Math.log2(p);
  }
  return bits;
}

const VOWELS = /[aeiouy]/g;
const DIGITS = /[0-9]/g;

function count(re: RegExp, s: string): number {
  return s.match(re)?.length ?? 0;
}

/** base64/base64url: only visible before lowercasing, hence the raw spelling. */
function base64Looking(raw: string): boolean {
  return raw.length >= EXFIL_LIMITS.encodedMinLength && /^[A-Za-z0-9+/_-]+$/.test(raw)
    && /[A-Z]/.test(raw) && /[a-z]/.test(raw) && /[0-9]/.test(raw);
}

/**
 * Does this word (a label piece between '-'/'_') look like encoded bytes rather than
 * language? Unigram entropy alone cannot tell a 17-letter brand name ("githubusercontent",
 * 3.45 bits/char) from random base32, so a high-entropy word must also look unlike language:
 * digits among its letters, or few vowels.
 */
function randomLooking(raw: string): boolean {
  const word = raw.toLowerCase();
  if (word.length >= EXFIL_LIMITS.encodedMinLength) {
    const digits = count(DIGITS, word);
    if (/^[0-9a-f]+$/.test(word) && digits > 0) return true; // hex
    if (/^[a-z2-7]+$/.test(word) && digits > 0) return true; // base32 (RFC 4648 alphabet)
    if (base64Looking(raw)) return true;
  }
  if (word.length < EXFIL_LIMITS.entropyMinLength) return false;
  if (shannonEntropy(word) < EXFIL_LIMITS.entropyBitsPerChar) return false;
  const letters = count(/[a-z]/g, word);
  const wordLike = count(DIGITS, word) === 0 && letters > 0 && count(VOWELS, word) / letters >= 0.25;
  return !wordLike;
}

/**
 * Hyphens join words in real names ("github-production-release-asset-2e65be"), so each word
 * is judged on its own; the whole label is still checked for base64url, whose alphabet
 * includes '-' and '_'.
 */
function labelLooksEncoded(label: string): boolean {
  return label.split(/[-_]/).some(randomLooking) || (/[-_]/.test(label) && base64Looking(label));
}

/** Flags for `name` (any case, trailing dot allowed); empty for ordinary names. */
export function exfilFlags(name: string): ExfilFlag[] {
  const raw = name.replace(/\.$/, '');
  const labels = raw.split('.');
  const flags: ExfilFlag[] = [];
  if (labels.some((l) => l.length > EXFIL_LIMITS.maxLabel)) flags.push('long-label');
  if (raw.length > EXFIL_LIMITS.maxName) flags.push('long-name');
  if (labels.some(labelLooksEncoded)) flags.push('high-entropy');
  if (labels.length > EXFIL_LIMITS.maxLabels) flags.push('many-labels');
  return flags;
}

/**
 * Token bucket for one sandbox's DNS queries: `burst` queries at once, `perSecond` sustained.
 * Time comes from the caller (ms) so tests need no clock games.
 */
export class QueryRateLimiter {
  readonly perSecond: number;
  readonly burst: number;
  private tokens: number;
  private last: number | null = null;

  constructor(o: { perSecond?: number; burst?: number } = {}) {
    this.perSecond = o.perSecond ?? 50;
    this.burst = o.burst ?? 200;
    if (!(this.perSecond > 0) || !(this.burst >= 1)) throw new Error('rate limit needs perSecond > 0 and burst >= 1');
    this.tokens = this.burst;
  }

  /** Takes one token; false when the bucket is empty (the query must be refused). */
  take(now: number = Date.now()): boolean {
    if (this.last !== null && now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    }
    if (this.last === null || now > this.last) this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
