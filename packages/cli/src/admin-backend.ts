/**
 * What the tenant, key and policy commands need, over the daemon (AIRLOCK_URL with an admin
 * AIRLOCK_API_KEY) or over the engine in this process (--data-dir, acting as admin). Chosen
 * like every other command's backend (select-backend.ts).
 */
import type {
  ApiKeyInfo, CreatedApiKey, CreateKeyInput, PolicyTestInput, PolicyTestResult, PolicyVersionInfo, TenantInfo,
} from '@airlock/engine';
import type { BackendOptions } from './backend.js';
import { UsageError } from './flags.js';
import { DEFAULT_DAEMON_URL, DEFAULT_DATA_DIR, healthy, readAdminKey } from './select-backend.js';

export type { ApiKeyInfo, CreatedApiKey, CreateKeyInput, PolicyTestInput, PolicyTestResult, PolicyVersionInfo, TenantInfo };

export interface AdminBackend {
  createTenant(name: string): Promise<TenantInfo>;
  listTenants(): Promise<TenantInfo[]>;
  deleteTenant(name: string): Promise<void>;
  createKey(input: CreateKeyInput): Promise<CreatedApiKey>;
  listKeys(filter: { tenant?: string }): Promise<ApiKeyInfo[]>;
  revokeKey(id: string): Promise<void>;
  getPolicy(tenant: string, version?: number): Promise<PolicyVersionInfo>;
  setPolicy(tenant: string, document: unknown): Promise<PolicyVersionInfo>;
  testPolicy(input: PolicyTestInput): Promise<PolicyTestResult>;
  close(): Promise<void>;
}

async function remote(url: string, apiKey: string | undefined): Promise<AdminBackend> {
  const { ApiClient } = await import('@airlock/sdk');
  const c = new ApiClient({ url, apiKey });
  return {
    createTenant: (name) => c.createTenant(name),
    listTenants: () => c.listTenants(),
    deleteTenant: (name) => c.deleteTenant(name),
    createKey: (input) => c.createKey(input) as Promise<CreatedApiKey>,
    listKeys: (filter) => c.listKeys(filter) as Promise<ApiKeyInfo[]>,
    revokeKey: (id) => c.revokeKey(id),
    getPolicy: (tenant, version) => c.getPolicy(tenant, version) as Promise<PolicyVersionInfo>,
    setPolicy: (tenant, document) => c.setPolicy(tenant, document as Record<string, unknown>) as Promise<PolicyVersionInfo>,
    testPolicy: (input) => c.testPolicy(input as never) as Promise<PolicyTestResult>,
    close: async () => {},
  };
}

async function embedded(dataDir: string): Promise<AdminBackend> {
  const { openEngine } = await import('./backend-embedded.js');
  const engine = await openEngine({ dataDir });
  // The operator at the keyboard owns the data dir: the admin view.
  const admin = { tenant: null };
  return {
    createTenant: async (name) => engine.createTenant(admin, name),
    listTenants: async () => engine.listTenants(admin),
    deleteTenant: async (name) => engine.deleteTenant(admin, name),
    createKey: async (input) => engine.createKey(admin, input),
    listKeys: async (filter) => engine.listKeys(admin, filter),
    revokeKey: async (id) => engine.revokeKey(admin, id),
    getPolicy: async (tenant, version) => engine.getPolicy(admin, tenant, version),
    setPolicy: async (tenant, document) => engine.setPolicy(admin, tenant, document),
    testPolicy: async (input) => engine.testPolicy(admin, input),
    close: () => engine.close(),
  };
}

export async function openAdminBackend(opts: BackendOptions, env: NodeJS.ProcessEnv = process.env): Promise<AdminBackend> {
  if (opts.dataDir === undefined && env.AIRLOCK_URL) return remote(env.AIRLOCK_URL, env.AIRLOCK_API_KEY || undefined);
  if (opts.dataDir === undefined) {
    const key = readAdminKey(DEFAULT_DATA_DIR);
    if (key !== null && (await healthy(DEFAULT_DAEMON_URL, 300))) return remote(DEFAULT_DAEMON_URL, key);
  }
  if (opts.dnsUpstream) throw new UsageError('--dns-upstream does not apply here');
  return embedded(opts.dataDir ?? DEFAULT_DATA_DIR);
}

export async function withAdminBackend<T>(opts: BackendOptions, fn: (b: AdminBackend) => Promise<T>): Promise<T> {
  const b = await openAdminBackend(opts);
  try {
    return await fn(b);
  } finally {
    await b.close().catch(() => undefined);
  }
}
