/** `airlock serve`: airlockd, the HTTP API, in the foreground. */
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../flags.js';
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
  /** --secrets-key: where the key that encrypts secrets lives (docs/secrets.md). */
  secretsKey?: string;
  /** --audit-key: the key that signs audit checkpoints (docs/audit.md). */
  auditKey?: string;
  /** --min-runtime: the weakest tier any sandbox may use. */
  minRuntime?: 'container' | 'gvisor' | 'microvm';
  /** --tenant-min-runtime, tenant → floor. */
  tenantMinRuntime?: Record<string, 'container' | 'gvisor' | 'microvm'>;
  /** --default-runtime: the tier of a sandbox that names none (raised to the floor). */
  defaultRuntime?: 'container' | 'gvisor' | 'microvm';
  /** --max-upload, MiB: the largest file one PUT may write (413 past it). */
  maxUpload?: number;
  /** --approval-timeout, seconds. */
  approvalTimeout?: number;
  /** --approval-webhook URL, and the file holding its HMAC key. */
  approvalWebhook?: string;
  approvalWebhookSecretFile?: string;
  /** --prices FILE: the metering price sheet (JSON; docs/metering.md). */
  prices?: string;
  /** --metrics-public: GET /metrics without a key. */
  metricsPublic?: boolean;
}

/** EngineOptions.approvals from the flags; the secret file is read here so a mistake stops serve at once. */
export function approvalOptions(flags: ServeFlags): { timeoutSeconds?: number; webhookUrl?: string; webhookSecret?: Buffer } {
  if (flags.approvalWebhook !== undefined) {
    let u: URL | null = null;
    try { u = new URL(flags.approvalWebhook); } catch { /* below */ }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) throw new UsageError(`--approval-webhook must be an http:// or https:// URL, got ${flags.approvalWebhook}`);
  }
  let secret: Buffer | undefined;
  if (flags.approvalWebhookSecretFile !== undefined) {
    try {
      secret = Buffer.from(readFileSync(flags.approvalWebhookSecretFile, 'utf8').trim(), 'utf8');
    } catch (e) {
      throw new UsageError(`--approval-webhook-secret-file: ${(e as Error).message}`);
    }
    if (secret.length === 0) throw new UsageError('--approval-webhook-secret-file: the file is empty');
  }
  return {
    ...(flags.approvalTimeout !== undefined ? { timeoutSeconds: flags.approvalTimeout } : {}),
    ...(flags.approvalWebhook !== undefined ? { webhookUrl: flags.approvalWebhook } : {}),
    ...(secret ? { webhookSecret: secret } : {}),
  };
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
  const approvals = approvalOptions(flags);
  const [{ openEngine }, { startServer, AirlockMetrics }, { engineLog, loadPriceSheet }] = await Promise.all([
    import('../backend-embedded.js'), import('@airlock/server'), import('./serve-observability.js'),
  ]);
  const prices = flags.prices !== undefined ? loadPriceSheet(flags.prices) : undefined;
  const metrics = new AirlockMetrics();
  const logging = engineLog((msg, data) => metrics.engineLog(msg, data));
  const engine = await openEngine({
    dataDir: flags.dataDir,
    approvals,
    log: logging.log,
    ...(prices ? { prices } : {}),
    ...(flags.dnsUpstream ? { dnsUpstream: flags.dnsUpstream } : {}),
    mountPolicy: { allowReadWrite: flags.rwMounts !== false, ...(flags.mountAllow ? { allowedHostPrefixes: flags.mountAllow } : {}) },
    ...(flags.storageSize ? { storageSizeGiB: flags.storageSize / 1024 } : {}),
    ...(flags.secretsKey ? { secretsKeyFile: flags.secretsKey } : {}),
    ...(flags.auditKey ? { auditKeyFile: flags.auditKey } : {}),
    runtimePolicy: {
      ...(flags.minRuntime ? { minimum: flags.minRuntime } : {}),
      ...(flags.tenantMinRuntime ? { tenants: flags.tenantMinRuntime } : {}),
      ...(flags.defaultRuntime ? { default: flags.defaultRuntime } : {}),
    },
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
      metrics, metricsPublic: flags.metricsPublic === true,
    });
    const appLog = server.app.log;
    logging.useLogger({ info: (o, m) => appLog.info(o, m), warn: (o, m) => appLog.warn(o, m), error: (o, m) => appLog.error(o, m) });
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
