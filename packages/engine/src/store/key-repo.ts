import { createHash, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import type { Db } from './db.js';

/**
 * What a key may do: `admin` everything (tenant null); `tenant` everything within its tenant;
 * `read` only reads within its tenant; `exec` exec, files and get on one sandbox.
 */
export type KeyScope = 'admin' | 'tenant' | 'read' | 'exec';
export const KEY_SCOPES: readonly KeyScope[] = ['admin', 'tenant', 'read', 'exec'];

export interface ApiKeyRecord {
  id: string;
  tenant: string | null;
  scope: KeyScope;
  /** The one sandbox of an exec key. */
  sandbox: string | null;
}

/** A key as listed: never its secret or hash. */
export interface ApiKeyRow extends ApiKeyRecord {
  createdAt: number;
  revokedAt: number | null;
  createdBy: string | null;
}

const SCRYPT_N = 16384;
const KEY_RE = /^alk_([0-9a-f]{12})_([A-Za-z0-9_-]{32})$/;
/** Cached verifications: bounded so a flood of distinct valid-looking keys cannot grow it. */
const CACHE_MAX = 10_000;
const CACHE_MS = 60_000;

function scrypt(secret: string, salt: string): Buffer {
  return scryptSync(secret, salt, 32, { N: SCRYPT_N, r: 8, p: 1 });
}

interface Row {
  id: string; tenant: string | null; scope: KeyScope; sandbox: string | null; salt: string; hash: string;
  created_at: number; revoked_at: number | null; created_by: string | null;
}

/**
 * API keys, stored as scrypt hashes. A key reads `alk_<id>_<secret>`: the id finds the row,
 * the secret is checked against the hash. Verified keys are cached by their sha256 so the
 * hot path (every exec) does not pay scrypt's deliberate cost; the cache never outlives a
 * revocation, because a hit still reads the row's revoked_at (a primary-key lookup), so a key
 * revoked by any process sharing the database stops working at once.
 */
export class KeyRepository {
  private readonly cache = new Map<string, { rec: ApiKeyRecord; until: number }>();
  private readonly liveStmt;

  constructor(private readonly db: Db) {
    this.liveStmt = db.prepare('SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL');
  }

  hasAdminKey(): boolean {
    return !!this.db.prepare("SELECT 1 FROM api_keys WHERE scope = 'admin' AND revoked_at IS NULL LIMIT 1").get();
  }

  /** Returns the plaintext key; it is shown once and never stored. */
  create(scope: KeyScope, tenant: string | null, opts: { sandbox?: string | null; createdBy?: string | null } = {}): string {
    return this.issue(scope, tenant, opts).key;
  }

  issue(scope: KeyScope, tenant: string | null, opts: { sandbox?: string | null; createdBy?: string | null } = {}): { id: string; key: string } {
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(24).toString('base64url');
    const salt = randomBytes(16).toString('hex');
    this.db
      .prepare('INSERT INTO api_keys (id, tenant, scope, sandbox, salt, hash, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(id, tenant, scope, opts.sandbox ?? null, salt, scrypt(secret, salt).toString('hex'), Date.now(), opts.createdBy ?? null);
    return { id, key: `alk_${id}_${secret}` };
  }

  verify(key: string): ApiKeyRecord | null {
    if (key.length > 200) return null;
    const fp = createHash('sha256').update(key).digest('hex');
    const hit = this.cache.get(fp);
    if (hit && hit.until > Date.now()) {
      if (this.liveStmt.get(hit.rec.id)) return hit.rec;
      this.cache.delete(fp);
      return null;
    }
    const m = KEY_RE.exec(key);
    if (!m) return null;
    const row = this.db
      .prepare('SELECT * FROM api_keys WHERE id = ? AND revoked_at IS NULL')
      .get(m[1]) as Row | undefined;
    if (!row) return null;
    const ok = timingSafeEqual(scrypt(m[2]!, row.salt), Buffer.from(row.hash, 'hex'));
    if (!ok) return null;
    const rec: ApiKeyRecord = { id: row.id, tenant: row.tenant, scope: row.scope, sandbox: row.sandbox };
    if (this.cache.size >= CACHE_MAX) this.cache.clear();
    this.cache.set(fp, { rec, until: Date.now() + CACHE_MS });
    return rec;
  }

  /**
   * The tenant a presented key claims through its id part, when that id names a real key: lets
   * a failed attempt be recorded against the tenant under attack. Never looks at the secret.
   */
  claimedTenant(key: string): { keyId: string; tenant: string | null } | null {
    const m = /^alk_([0-9a-f]{12})_/.exec(key);
    if (!m) return null;
    const row = this.db.prepare('SELECT id, tenant FROM api_keys WHERE id = ?').get(m[1]) as { id: string; tenant: string | null } | undefined;
    return row ? { keyId: row.id, tenant: row.tenant } : null;
  }

  get(id: string): ApiKeyRow | null {
    const row = this.db.prepare('SELECT * FROM api_keys WHERE id = ?').get(id) as Row | undefined;
    return row ? toKeyRow(row) : null;
  }

  /** Every key (admin: tenant undefined) or one tenant's, oldest first; revoked ones included. */
  list(tenant?: string): ApiKeyRow[] {
    const rows = (tenant === undefined
      ? this.db.prepare('SELECT * FROM api_keys ORDER BY created_at, id').all()
      : this.db.prepare('SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at, id').all(tenant)) as Row[];
    return rows.map(toKeyRow);
  }

  /** true when the key was live; its cache entries go at once. */
  revoke(id: string): boolean {
    const r = this.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(Date.now(), id);
    this.forget((rec) => rec.id === id);
    return r.changes === 1;
  }

  /** Revokes every live key of a tenant; returns how many. */
  revokeTenant(tenant: string): number {
    const r = this.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL').run(Date.now(), tenant);
    this.forget((rec) => rec.tenant === tenant);
    return r.changes;
  }

  private forget(match: (rec: ApiKeyRecord) => boolean): void {
    for (const [fp, entry] of this.cache) if (match(entry.rec)) this.cache.delete(fp);
  }
}

function toKeyRow(r: Row): ApiKeyRow {
  return {
    id: r.id, tenant: r.tenant, scope: r.scope, sandbox: r.sandbox ?? null,
    createdAt: r.created_at, revokedAt: r.revoked_at, createdBy: r.created_by ?? null,
  };
}
