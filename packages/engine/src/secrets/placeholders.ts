/**
 * What a sandbox holds instead of a secret: `airlock-secret-<NAME>-<32 hex>`, random per
 * sandbox and secret. Unguessable, so code cannot forge another sandbox's; distinctive, so the
 * broker finds it in a request; and free of characters any encoding (URL, JSON, headers)
 * would change, so it reads the same wherever the code puts it.
 */
import { randomBytes } from 'node:crypto';
import { PLACEHOLDER_PREFIX } from './secret-store.js';

export function newPlaceholder(name: string): string {
  return `${PLACEHOLDER_PREFIX}${name}-${randomBytes(16).toString('hex')}`;
}

export const PLACEHOLDER_RE = /^airlock-secret-[A-Za-z_][A-Za-z0-9_]{0,63}-[0-9a-f]{32}$/;
