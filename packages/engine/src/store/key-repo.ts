import { createHash, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import type { Db } from './db.js';

export type KeyScope = 'admin' | 'tenant';

export interface ApiKeyRecord {
  id: string;
  tenant: string | null;
  scope: KeyScope;
}

const SCRYPT_N = 16384;

function scrypt(secret: string, salt: string): Buffer {
  return scryptSync(secret, salt, 32, { N: SCRYPT_N, r: 8, p: 1 });
}

/**
 * API keys, stored as scrypt hashes. A key reads `alk_<id>_<secret>`: the id finds the row,
 * the secret is checked against the hash. Verified keys are cached by their sha256 so the
 * hot path (every exec) does not pay scrypt's deliberate cost.
 */
export class KeyRepository {
  private readonly cache = new Map<string, { rec: ApiKeyRecord; until: number }>();

  constructor(private readonly db: Db) {}

  hasAdminKey(): boolean {
    return !!this.db.prepare("SELECT 1 FROM api_keys WHERE scope = 'admin' AND revoked_at IS NULL LIMIT 1").get();
  }

  create(scope: KeyScope, tenant: string | null): string {
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(24).toString('base64url');
    const salt = randomBytes(16).toString('hex');
    this.db
      .prepare('INSERT INTO api_keys (id, tenant, scope, salt, hash, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, tenant, scope, salt, scrypt(secret, salt).toString('hex'), Date.now());
    return `alk_${id}_${secret}`;
  }

  verify(key: string): ApiKeyRecord | null {
    if (key.length > 200) return null;
    const fp = createHash('sha256').update(key).digest('hex');
    const hit = this.cache.get(fp);
    if (hit && hit.until > Date.now()) return hit.rec;
    const m = /^alk_([0-9a-f]{12})_([A-Za-z0-9_-]{32})$/.exec(key);
    if (!m) return null;
    const row = this.db
      .prepare('SELECT id, tenant, scope, salt, hash FROM api_keys WHERE id = ? AND revoked_at IS NULL')
      .get(m[1]) as { id: string; tenant: string | null; scope: KeyScope; salt: string; hash: string } | undefined;
    if (!row) return null;
    const ok = timingSafeEqual(scrypt(m[2]!, row.salt), Buffer.from(row.hash, 'hex'));
    if (!ok) return null;
    const rec: ApiKeyRecord = { id: row.id, tenant: row.tenant, scope: row.scope };
    // Short cache so a revocation (issue 6) takes effect within a minute even without invalidation.
    this.cache.set(fp, { rec, until: Date.now() + 60_000 });
    return rec;
  }
}
