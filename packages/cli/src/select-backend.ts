/**
 * Which Airlock the CLI talks to:
 *   --data-dir DIR         embedded engine on DIR (explicit wins)
 *   AIRLOCK_URL            that daemon, with AIRLOCK_API_KEY
 *   local default daemon   when /var/lib/airlock/admin.key is readable and /healthz answers in 300 ms
 *   otherwise              embedded engine on /var/lib/airlock
 * The engine, server and sdk are imported only here, lazily: `airlock --help` loads none of them.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend, BackendOptions } from './backend.js';
import { UsageError } from './flags.js';

/** Same as the engine's DEFAULT_DATA_DIR; repeated so choosing a backend does not load the engine. */
export const DEFAULT_DATA_DIR = '/var/lib/airlock';
export const DEFAULT_DAEMON_URL = 'http://127.0.0.1:7070';
const PROBE_TIMEOUT_MS = 300;

export async function openBackend(opts: BackendOptions, env: NodeJS.ProcessEnv = process.env): Promise<Backend> {
  if (opts.dataDir === undefined && env.AIRLOCK_URL) {
    if (opts.dnsUpstream) {
      throw new UsageError('--dns-upstream applies to the embedded engine; with AIRLOCK_URL set, the daemon chooses its resolver');
    }
    const { RemoteBackend } = await import('./backend-remote.js');
    return new RemoteBackend(env.AIRLOCK_URL, env.AIRLOCK_API_KEY || undefined);
  }
  if (opts.dataDir === undefined && !opts.dnsUpstream) {
    const key = readAdminKey(DEFAULT_DATA_DIR);
    if (key !== null && (await healthy(DEFAULT_DAEMON_URL, PROBE_TIMEOUT_MS))) {
      const { RemoteBackend } = await import('./backend-remote.js');
      return new RemoteBackend(DEFAULT_DAEMON_URL, key);
    }
  }
  const { EmbeddedBackend } = await import('./backend-embedded.js');
  return EmbeddedBackend.open({
    dataDir: opts.dataDir ?? DEFAULT_DATA_DIR,
    ...(opts.dnsUpstream ? { dnsUpstream: opts.dnsUpstream } : {}),
  });
}

/** The first admin key `airlock serve` saved, or null when absent or unreadable (not root). */
export function readAdminKey(dataDir: string): string | null {
  try {
    const key = readFileSync(join(dataDir, 'admin.key'), 'utf8').trim();
    return key || null;
  } catch {
    return null;
  }
}

/** GET /healthz with a hard deadline; any failure means "no daemon". node:http, not fetch: undici costs ~20 ms to load. */
export async function healthy(baseUrl: string, timeoutMs: number): Promise<boolean> {
  const { request } = await import('node:http');
  return new Promise((resolve) => {
    const req = request(new URL('/healthz', baseUrl), { method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    const timer = setTimeout(() => req.destroy(), timeoutMs);
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.on('close', () => {
      clearTimeout(timer);
      resolve(false); // no-op when the response already resolved true
    });
    req.end();
  });
}
