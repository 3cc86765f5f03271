import { DEFAULT_PRICES, type PriceSheet } from './types.js';

const FIELDS = Object.keys(DEFAULT_PRICES) as (keyof PriceSheet)[];

/** A price sheet from config (JSON): known fields only, each a finite number ≥ 0; left out = default. */
export function parsePriceSheet(input: unknown): PriceSheet {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new Error('price sheet must be an object');
  const out: PriceSheet = { ...DEFAULT_PRICES };
  for (const [k, v] of Object.entries(input as Record<string, unknown>)) {
    if (!FIELDS.includes(k as keyof PriceSheet)) throw new Error(`price sheet: unknown field ${JSON.stringify(k)} (known: ${FIELDS.join(', ')})`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`price sheet: ${k} must be a number ≥ 0`);
    out[k as keyof PriceSheet] = v;
  }
  return out;
}
