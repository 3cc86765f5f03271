/** `airlock serve`: airlockd, the HTTP API, in the foreground. */
import { unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT, warn } from '../output.js';

export interface ServeFlags {
  /** Already validated `host:port`. */
  listen: string;
  dataDir: string;
  dnsUpstream?: string;
  /** --mount-allow, repeatable. */
  mountAllow?: string[];
  /** false with --no-rw-mounts. */
  rwMounts?: boolean;
  /** --storage-size, MiB. */
  storageSize?: number;
  netPool?: string;
  blockRange?: string[];
  /** --max-upload, MiB: the largest file one PUT may write (413 past it). */
  maxUpload?: number;
}

/**
 * Saves the first admin key where the CLI finds it (`<data-dir>/admin.key`, 0600). O_EXCL so a
 * planted symlink or a looser pre-made file is never written through; a stale file (from a
 * database that was since removed) holds a key that no longer works, so it is replaced.
 */
export function saveAdminKey(dataDir: string, key: string): string {
  const path = join(dataDir, 'admin.key');
  const write = () => writeFileSync(path, `${key}\n`, { mode: 0o600, flag: 'wx' });
  try {
    write();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    unlinkSync(path);
    write();
  }
  return path;
}

export async function serveCommand(flags: ServeFlags): Promise<number> {
  const [{ openEngine }, { startServer }] = await Promise.all([import('../backend-embedded.js'), import('@airlock/server')]);
  const engine = await openEngine({
    dataDir: flags.dataDir,
    ...(flags.dnsUpstream ? { dnsUpstream: flags.dnsUpstream } : {}),
    mountPolicy: { allowReadWrite: flags.rwMounts !== false, ...(flags.mountAllow ? { allowedHostPrefixes: flags.mountAllow } : {}) },
    ...(flags.storageSize ? { storageSizeGiB: flags.storageSize / 1024 } : {}),
    ...(flags.netPool || flags.blockRange ? {
      network: {
        ...(flags.netPool ? { addressPool: flags.netPool } : {}),
        ...(flags.blockRange ? { blockedRanges: flags.blockRange } : {}),
      },
    } : {}),
  });
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  try {
    const key = engine.ensureAdminKey();
    if (key) {
      const path = saveAdminKey(flags.dataDir, key);
      process.stdout.write(`Admin API key (shown once; saved to ${path}, mode 0600):\n${key}\n`);
    }
    server = await startServer({
      engine, listen: flags.listen, ...(flags.maxUpload ? { uploadLimitBytes: flags.maxUpload * 1024 * 1024 } : {}),
    });
    process.stdout.write(`airlockd listening on ${server.url}\n`);
    const sig = await new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    warn(`${sig}: shutting down (running sandboxes keep running; the next start adopts them)`);
    return EXIT.ok;
  } finally {
    await server?.close().catch((e: Error) => warn(`closing the server: ${e.message}`));
    await engine.close();
  }
}
