/** Opens the chosen backend for one command and always releases it. */
import type { Backend, BackendOptions } from './backend.js';
import { openBackend } from './select-backend.js';

export async function withBackend<T>(opts: BackendOptions, fn: (b: Backend) => Promise<T>): Promise<T> {
  const backend = await openBackend({
    ...(opts.dataDir !== undefined ? { dataDir: opts.dataDir } : {}),
    ...(opts.dnsUpstream !== undefined ? { dnsUpstream: opts.dnsUpstream } : {}),
  });
  try {
    return await fn(backend);
  } finally {
    await backend.close().catch(() => undefined);
  }
}
