/**
 * Tenants' secrets: a value stored here is never readable again, by anyone. A sandbox created
 * with `secrets: ['NAME']` sees a placeholder in $NAME; Airlock's egress proxy puts the value
 * into requests to the secret's hosts only (docs/secrets.md).
 */
import { ApiClient, type ClientOptions } from './client.js';
import { ApiError } from './errors.js';
import type { SecretInfo, SetSecretBody } from './secret-types.js';

export class Secret {
  /** Creates or replaces it; the answer holds no value. `tenant`: admin keys only. */
  static set(name: string, body: SetSecretBody, opts: ClientOptions & { tenant?: string } = {}): Promise<SecretInfo> {
    const { tenant, ...clientOpts } = opts;
    return new ApiClient(clientOpts).setSecret(name, body, tenant === undefined ? {} : { tenant });
  }

  static list(opts: ClientOptions & { tenant?: string } = {}): Promise<SecretInfo[]> {
    const { tenant, ...clientOpts } = opts;
    return new ApiClient(clientOpts).listSecrets(tenant === undefined ? {} : { tenant });
  }

  /** false when it did not exist. */
  static async delete(name: string, opts: ClientOptions & { tenant?: string } = {}): Promise<boolean> {
    const { tenant, ...clientOpts } = opts;
    try {
      await new ApiClient(clientOpts).deleteSecret(name, tenant === undefined ? {} : { tenant });
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return false;
      throw e;
    }
  }
}
