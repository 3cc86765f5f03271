/**
 * A real engine (fresh SQLite data dir, the shared templates) behind a real server on a
 * loopback port. Cleanup kills every sandbox the test left alive, even after a failure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine, type EngineOptions } from '@airlock/engine';
import { startServer, type ServerOptions } from '../src/index.js';

export const TEMPLATES_DIR = '/var/lib/airlock/templates';
export const TEMPLATE = 'tiny';

export interface TestServer {
  url: string;
  key: string;
  engine: Engine;
  /** fetch against the server with the admin key (unless headers override it). */
  api(path: string, init?: RequestInit): Promise<Response>;
  close(): Promise<void>;
}

export async function startTestServer(opts: Partial<Omit<ServerOptions, 'engine'>> = {}, engineOpts: Omit<EngineOptions, 'dataDir'> = {}): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'airlock-server-test-'));
  let engine: Engine | null = null;
  try {
    engine = await Engine.open({ templatesDir: TEMPLATES_DIR, ...engineOpts, dataDir });
    const key = engine.ensureAdminKey();
    if (!key) throw new Error('a fresh data dir must yield an admin key');
    const server = await startServer({ engine, logger: false, ...opts, listen: '127.0.0.1:0' });
    const eng = engine;
    return {
      url: server.url,
      key,
      engine: eng,
      api: (path, init = {}) => fetch(server.url + path, {
        ...init,
        headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string> | undefined) },
      }),
      async close() {
        try {
          await server.close();
        } finally {
          await killLeftovers(eng);
          await eng.shutdownStorage(); // volumes' mounts and loop devices
          await eng.close();
          rmSync(dataDir, { recursive: true, force: true });
        }
      },
    };
  } catch (e) {
    await engine?.close().catch(() => {});
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
}

async function killLeftovers(engine: Engine): Promise<void> {
  const admin = { tenant: null };
  for (const s of engine.listSandboxes(admin)) {
    if (s.state === 'running' || s.state === 'creating' || s.state === 'paused') {
      await engine.killSandbox(admin, s.id).catch(() => {});
    }
  }
}

export async function json(res: Response): Promise<any> {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`expected JSON, got ${res.status}: ${text.slice(0, 200)}`);
  }
}

/** Reads an NDJSON response to the end. */
export async function ndjsonLines(res: Response): Promise<any[]> {
  const text = await res.text();
  return text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
}

export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
