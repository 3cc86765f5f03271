/**
 * The key that encrypts secret values at rest: 32 random bytes in a file of its own, outside
 * the database (a copy of airlock.db alone reveals no value). Created owner-only on first use;
 * an existing file must be a regular file, owned by this user, readable by nobody else.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, fsyncSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { AirlockError } from '../errors.js';

const KEY_BYTES = 32;

/** `mayCreate` false: secrets sealed with some key exist, so a missing file is an error, not a fresh start. */
export function loadOrCreateSecretKey(file: string, mayCreate = true): Buffer {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw keyError(file, (e as Error).message);
    if (!mayCreate) throw keyError(file, 'missing, but secrets sealed with a key exist; restore the file or point --secrets-key (AIRLOCK_SECRETS_KEY) at it');
    return createKey(file);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw keyError(file, 'not a regular file');
    if (st.uid !== process.getuid!()) throw keyError(file, 'owned by another user');
    if ((st.mode & 0o077) !== 0) throw keyError(file, `mode ${(st.mode & 0o777).toString(8)} lets others read it; it must be 0600`);
    if (st.size !== KEY_BYTES) throw keyError(file, `must hold exactly ${KEY_BYTES} bytes`);
    const key = Buffer.alloc(KEY_BYTES);
    if (readSync(fd, key, 0, KEY_BYTES, 0) !== KEY_BYTES) throw keyError(file, 'short read');
    return key;
  } finally {
    closeSync(fd);
  }
}

function createKey(file: string): Buffer {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(KEY_BYTES);
  let fd: number;
  try {
    // O_EXCL: two processes racing to create it must not end up with different keys.
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return loadOrCreateSecretKey(file);
    throw keyError(file, (e as Error).message);
  }
  try {
    writeSync(fd, key);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return key;
}

function keyError(file: string, why: string): AirlockError {
  return new AirlockError('internal', `secrets key file ${file}: ${why}`);
}

export interface Sealed { ciphertext: Buffer; iv: Buffer; tag: Buffer }

/** AES-256-GCM; `aad` binds the ciphertext to its row (tenant and name), so rows cannot be swapped. */
export function seal(key: Buffer, plaintext: Buffer, aad: string): Sealed {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return { ciphertext, iv, tag: c.getAuthTag() };
}

/** Throws when the key is not the one that sealed it, or the row was altered. */
export function unseal(key: Buffer, s: Sealed, aad: string): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, s.iv);
  d.setAAD(Buffer.from(aad, 'utf8'));
  d.setAuthTag(s.tag);
  return Buffer.concat([d.update(s.ciphertext), d.final()]);
}
