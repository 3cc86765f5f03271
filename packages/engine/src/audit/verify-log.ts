import type { KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Db } from '../store/db.js';
import { ChainVerifier, type CheckpointRow, type VerifyResult } from './chain-verifier.js';
import { parsePublicKey } from './signing-key.js';

export function readCheckpoints(db: Db): CheckpointRow[] {
  return db.prepare('SELECT seq, hash, ts, signature FROM audit_checkpoints ORDER BY seq ASC, id ASC').all() as CheckpointRow[];
}

/**
 * Recomputes the whole event chain of a database, streaming rows in seq order (raw arrays, no
 * per-row objects), and checks every signed checkpoint. `publicKey` null skips signature checks
 * (a reviewer without the key still learns whether the chain itself holds).
 */
export function verifyEventLog(db: Db, publicKey: KeyObject | null): VerifyResult {
  const successor = db.prepare('SELECT seq FROM events WHERE prev = ? ORDER BY seq LIMIT 1').pluck();
  const v = new ChainVerifier(readCheckpoints(db), publicKey, undefined, (prev) => successor.get(prev) as number | undefined);
  const rows = db.prepare('SELECT seq, ts, tenant, sandbox, type, data, prev, hash FROM events ORDER BY seq ASC').raw();
  for (const r of rows.iterate() as IterableIterator<[number, string, string, string | null, string, string, string, string]>) {
    if (!v.row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])) break;
  }
  return v.finish();
}

/**
 * Offline verification of a data dir's log (`airlock audit verify --data-dir`): the database is
 * opened read-only, nothing is migrated or written. The key is `publicKeyPem`, else the public
 * half of `keyFile`; with neither readable, signatures cannot be checked and the answer says so.
 */
export function verifyDataDir(dataDir: string, key: { publicKeyPem?: string; keyFile?: string } = {}): VerifyResult & { signaturesChecked: boolean } {
  const file = join(dataDir, 'airlock.db');
  if (!existsSync(file)) throw new Error(`no Airlock database at ${file}`);
  let pem = key.publicKeyPem;
  if (pem === undefined) {
    const keyFile = key.keyFile ?? (process.env.AIRLOCK_AUDIT_KEY || join(dataDir, 'audit-signing.key'));
    try { pem = readFileSync(keyFile, 'utf8'); } catch { pem = undefined; }
  }
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    const hasCheckpoints = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_checkpoints'").get() !== undefined;
    const publicKey = pem === undefined ? null : parsePublicKey(pem);
    if (!hasCheckpoints) {
      // A log from before signed checkpoints: only the chain can be checked.
      const successor = db.prepare('SELECT seq FROM events WHERE prev = ? ORDER BY seq LIMIT 1').pluck();
      const v = new ChainVerifier([], publicKey, undefined, (prev) => successor.get(prev) as number | undefined);
      for (const r of db.prepare('SELECT seq, ts, tenant, sandbox, type, data, prev, hash FROM events ORDER BY seq ASC').raw().iterate() as IterableIterator<[number, string, string, string | null, string, string, string, string]>) {
        if (!v.row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])) break;
      }
      return { ...v.finish(), signaturesChecked: false };
    }
    return { ...verifyEventLog(db, publicKey), signaturesChecked: publicKey !== null };
  } finally {
    db.close();
  }
}
