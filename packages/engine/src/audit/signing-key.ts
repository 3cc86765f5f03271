import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * The ed25519 key that signs audit checkpoints. It lives in a file outside the database, so
 * whoever can rewrite the database cannot also re-sign a shortened or edited log.
 */
export interface AuditSigner {
  /** SPKI PEM of the public half; what a reviewer verifies checkpoints with. */
  readonly publicKeyPem: string;
  sign(message: string): string;
}

/** Loads the PKCS#8 PEM key at `file`, making it (0600) on first use. */
export function loadAuditSigner(file: string): AuditSigner {
  if (!existsSync(file)) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const { privateKey } = generateKeyPairSync('ed25519');
    // 'wx': never overwrite a key another process made meanwhile.
    try {
      writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  chmodSync(file, 0o600);
  const key = createPrivateKey(readFileSync(file));
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`audit signing key ${file} is not an ed25519 key`);
  const publicKeyPem = createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString();
  return {
    publicKeyPem,
    sign: (message) => sign(null, Buffer.from(message), key).toString('base64'),
  };
}

/** Reads a public key from PEM (SPKI) or from a private key PEM (its public half). */
export function parsePublicKey(pem: string): KeyObject {
  const key = pem.includes('PRIVATE KEY') ? createPublicKey(createPrivateKey(pem)) : createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error('audit public key is not an ed25519 key');
  return key;
}

/** What a checkpoint signs: the chain head at `seq`, and when it was taken. */
export function checkpointMessage(seq: number, hash: string, ts: string): string {
  return `airlock-audit-checkpoint:v1:${seq}:${hash}:${ts}`;
}

export function verifyCheckpointSignature(key: KeyObject, seq: number, hash: string, ts: string, signature: string): boolean {
  try {
    return verify(null, Buffer.from(checkpointMessage(seq, hash, ts)), key, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}
