/**
 * What `airlock secret` needs, over the daemon (AIRLOCK_URL and AIRLOCK_API_KEY: a tenant key
 * acts on its tenant, an admin key on --tenant) or over the engine in this process (--data-dir,
 * acting as admin). Chosen like the other commands' backends (select-backend.ts).
 */
import type { SecretInfo, SetSecretInput } from '@airlock/engine';
import type { BackendOptions } from './backend.js';
import { UsageError } from './flags.js';
import { DEFAULT_DAEMON_URL, DEFAULT_DATA_DIR, healthy, readAdminKey } from './select-backend.js';

export type { SecretInfo };

export interface SecretBackend {
  set(name: string, input: SetSecretInput, tenant?: string): Promise<SecretInfo>;
  list(tenant?: string): Promise<SecretInfo[]>;
  remove(name: string, tenant?: string): Promise<void>;
  close(): Promise<void>;
}

const tenantOpt = (tenant: string | undefined) => (tenant === undefined ? {} : { tenant });

async function remote(url: string, apiKey: string | undefined): Promise<SecretBackend> {
  const { ApiClient } = await import('@airlock/sdk');
  const c = new ApiClient({ url, apiKey });
  return {
    set: (name, input, tenant) => c.setSecret(name, input, tenantOpt(tenant)),
    list: (tenant) => c.listSecrets(tenantOpt(tenant)),
    remove: (name, tenant) => c.deleteSecret(name, tenantOpt(tenant)),
    close: async () => {},
  };
}

async function embedded(dataDir: string): Promise<SecretBackend> {
  const { openEngine } = await import('./backend-embedded.js');
  const engine = await openEngine({ dataDir });
  // The operator at the keyboard owns the data dir: the admin view.
  const admin = { tenant: null };
  return {
    set: async (name, input, tenant) => engine.setSecret(admin, name, input, tenantOpt(tenant)),
    list: async (tenant) => engine.listSecrets(admin, tenantOpt(tenant)),
    remove: async (name, tenant) => engine.deleteSecret(admin, name, tenantOpt(tenant)),
    close: () => engine.close(),
  };
}

export async function withSecretBackend<T>(opts: BackendOptions, fn: (b: SecretBackend) => Promise<T>, env: NodeJS.ProcessEnv = process.env): Promise<T> {
  let b: SecretBackend;
  if (opts.dataDir === undefined && env.AIRLOCK_URL) b = await remote(env.AIRLOCK_URL, env.AIRLOCK_API_KEY || undefined);
  else {
    const key = opts.dataDir === undefined ? readAdminKey(DEFAULT_DATA_DIR) : null;
    if (key !== null && (await healthy(DEFAULT_DAEMON_URL, 300))) b = await remote(DEFAULT_DAEMON_URL, key);
    else {
      if (opts.dnsUpstream) throw new UsageError('--dns-upstream does not apply here');
      b = await embedded(opts.dataDir ?? DEFAULT_DATA_DIR);
    }
  }
  try {
    return await fn(b);
  } finally {
    await b.close().catch(() => undefined);
  }
}
