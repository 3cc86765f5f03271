/**
 * The Airlock CA of one data dir: it signs the certificates the secret broker shows a sandbox
 * when it terminates TLS for a secret host. Sandboxes with secrets trust its certificate; its
 * key stays in <data-dir>/ca (0700, key 0600), which no sandbox can bind or see.
 *
 * Node has no X.509 writer, so certificates come from `openssl` (argument arrays, exit codes
 * checked); keys are made with node:crypto. One leaf key serves every host; each host gets
 * its own certificate, cached in memory and renewed before it expires.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync, constants } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';
import { withFileLock } from '../storage/file-lock.js';

const CA_DAYS = 3650;
const LEAF_DAYS = 30;
/** Certificates are renewed this long before they expire. */
const RENEW_MS = 7 * 24 * 3600 * 1000;

function openssl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`openssl ${args[0]} failed: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

/** Writes `data` to a new owner-only file (never through a link), replacing `file` atomically. */
function writePrivate(file: string, data: string): void {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, data);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

function newEcKeyPem(): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

export class AirlockCa {
  private readonly leaves = new Map<string, { ctx: Promise<SecureContext>; renewAt: number }>();

  private constructor(
    readonly dir: string,
    /** PEM of the CA certificate: what sandboxes trust. */
    readonly certPem: string,
  ) {}

  get keyFile(): string { return join(this.dir, 'airlock-ca.key'); }
  get certFile(): string { return join(this.dir, 'airlock-ca.pem'); }
  private get leafKeyFile(): string { return join(this.dir, 'leaf.key'); }

  /** Opens the CA in `dir`, creating it (and the directory, 0700) on first use. */
  static async open(dir: string): Promise<AirlockCa> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
    chmodSync(dir, 0o700);
    const key = join(dir, 'airlock-ca.key');
    const cert = join(dir, 'airlock-ca.pem');
    // Locked: two engines on one data dir must not each make half of a CA.
    await withFileLock(join(dir, '.lock'), async () => {
      if (!existsSync(key) || !existsSync(cert)) await AirlockCa.create(dir, key, cert);
      if (!existsSync(join(dir, 'leaf.key'))) writePrivate(join(dir, 'leaf.key'), newEcKeyPem());
    });
    return new AirlockCa(dir, readFileSync(cert, 'utf8'));
  }

  private static async create(dir: string, key: string, cert: string): Promise<void> {
    const keyTmp = join(dir, `ca-new.${randomBytes(4).toString('hex')}.key`);
    const certTmp = `${keyTmp}.pem`;
    try {
      writeFileSync(keyTmp, newEcKeyPem(), { mode: 0o600, flag: 'wx' });
      await openssl(['req', '-new', '-x509', '-key', keyTmp, '-out', certTmp, '-days', String(CA_DAYS),
        '-subj', `/O=Airlock/CN=Airlock sandbox CA ${randomBytes(4).toString('hex')}`,
        '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
        '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
        '-addext', 'subjectKeyIdentifier=hash']);
      // The certificate last: a CA is complete once both are in place.
      renameSync(keyTmp, key);
      renameSync(certTmp, cert);
    } finally {
      rmSync(keyTmp, { force: true });
      rmSync(certTmp, { force: true });
    }
  }

  /** The TLS context presenting a certificate for `host` (made on first use, then cached). */
  contextFor(host: string): Promise<SecureContext> {
    const cached = this.leaves.get(host);
    if (cached && cached.renewAt > Date.now()) return cached.ctx;
    const ctx = this.issue(host);
    const entry = { ctx, renewAt: Date.now() + LEAF_DAYS * 24 * 3600 * 1000 - RENEW_MS };
    this.leaves.set(host, entry);
    ctx.catch(() => { if (this.leaves.get(host) === entry) this.leaves.delete(host); });
    return ctx;
  }

  private async issue(host: string): Promise<SecureContext> {
    // `host` was checked as a DNS name (letters, digits, -, _, .) before it got here.
    if (!/^[a-z0-9_.-]{1,253}$/.test(host)) throw new Error(`not a host name: ${host}`);
    const pem = await openssl(['req', '-new', '-x509', '-key', this.leafKeyFile, '-CA', this.certFile, '-CAkey', this.keyFile,
      '-subj', `/CN=${host}`, '-days', String(LEAF_DAYS), '-set_serial', `0x${randomBytes(12).toString('hex')}`,
      '-addext', `subjectAltName=DNS:${host}`,
      '-addext', 'basicConstraints=critical,CA:FALSE',
      '-addext', 'keyUsage=critical,digitalSignature',
      '-addext', 'extendedKeyUsage=serverAuth']);
    return createSecureContext({ key: readFileSync(this.leafKeyFile), cert: `${pem}${this.certPem}`, minVersion: 'TLSv1.2' });
  }
}
