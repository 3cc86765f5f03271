/** Public shapes of tenants and API keys (REST and SDK mirror these). */
import type { KeyScope } from '../store/key-repo.js';

export type { KeyScope };

export interface TenantInfo {
  name: string;
  createdAt: string;
  /** Live sandboxes (creating, running, paused) of the tenant now. */
  liveSandboxes: number;
  /** Keys not revoked. */
  activeKeys: number;
}

export interface ApiKeyInfo {
  id: string;
  /** null for admin keys. */
  tenant: string | null;
  scope: KeyScope;
  /** The one sandbox an exec key may use; null otherwise. */
  sandbox: string | null;
  createdAt: string;
  revokedAt: string | null;
  /** Key id of the admin who created it (null: created by the engine, e.g. the first admin key). */
  createdBy: string | null;
}

/** A new key: `key` is its plaintext, shown this once and never stored. */
export interface CreatedApiKey extends ApiKeyInfo {
  key: string;
}

export interface CreateKeyInput {
  /** Required unless scope is admin (admin keys belong to no tenant). */
  tenant?: string | null;
  /** Default `tenant`. */
  scope?: KeyScope;
  /** Required for (and only for) an exec key. */
  sandbox?: string;
}
