import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { eventHash, EventLog } from '../src/audit/event-log.js';
import { verifyBundle } from '../src/audit/evidence-bundle.js';
import { buildEvidenceBundle } from '../src/audit/evidence-bundle.js';
import { readBundleTar, writeBundleTar } from '../src/audit/bundle-tar.js';
import { checkpointMessage, loadAuditSigner, parsePublicKey } from '../src/audit/signing-key.js';
import { verifyEventLog } from '../src/audit/verify-log.js';
import { openDb } from '../src/store/db.js';

const EVERY = 100;

/** A log of `n` events (sandboxes a and b interleaved), a checkpoint every 100 and one at the head. */
function makeLog(dir: string, n = 250): { file: string; keyFile: string } {
  const file = join(dir, 'airlock.db');
  const keyFile = join(dir, 'audit-signing.key');
  const db = openDb(file);
  const log = new EventLog(db, { signer: loadAuditSigner(keyFile), checkpointEvery: EVERY });
  for (let i = 1; i <= n; i++) {
    // Data keys out of order on purpose: the stored text is canonical anyway.
    log.append({ tenant: 'default', sandbox: i % 2 ? 'sba' : 'sbb', type: i % 3 ? 'exec.exited' : 'file.written', data: { z: i, a: { y: [1, 'x'], b: null }, path: `/f${i}` } });
  }
  log.checkpointHead();
  db.close();
  return { file, keyFile };
}

/** Runs `tamper` on a copy of a fresh log, then verifies the copy. */
function tampered(tamper: (db: Database.Database, keyFile: string) => void, n?: number) {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-'));
  try {
    const { file, keyFile } = makeLog(dir, n);
    const copy = join(dir, 'copy.db');
    copyFileSync(file, copy);
    const raw = new Database(copy);
    tamper(raw, keyFile);
    raw.close();
    const db = openDb(copy);
    try {
      return verifyEventLog(db, parsePublicKey(readFileSync(keyFile, 'utf8')));
    } finally {
      db.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('an intact log verifies, with its checkpoints; the key file is 0600', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-'));
  try {
    const { file, keyFile } = makeLog(dir);
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    const db = openDb(file);
    const r = verifyEventLog(db, parsePublicKey(readFileSync(keyFile, 'utf8')));
    assert.deepEqual(r, { ok: true, events: 250, checkpoints: 3, headSeq: 250 });
    const cps = db.prepare('SELECT seq FROM audit_checkpoints ORDER BY seq').pluck().all();
    assert.deepEqual(cps, [100, 200, 250]);
    // The stored hash is the documented one: sha256(prev + canonical JSON of the rest).
    const row = db.prepare('SELECT * FROM events WHERE seq = 7').get() as Record<string, unknown>;
    assert.equal(eventHash(row.prev as string, { seq: 7, ts: row.ts as string, tenant: 'default', sandbox: 'sba', type: 'exec.exited', data: JSON.parse(row.data as string) }), row.hash);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an edited event is reported at its seq as hash-mismatch', () => {
  const r = tampered((db) => db.prepare(`UPDATE events SET data = json_set(data, '$.z', 999) WHERE seq = 57`).run());
  assert.equal(r.ok, false);
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 57, reason: 'hash-mismatch' });
  assert.equal(r.events, 56);
});

test('an edited type or tenant is reported too', () => {
  const r = tampered((db) => db.prepare(`UPDATE events SET tenant = 'other' WHERE seq = 120`).run());
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 120, reason: 'hash-mismatch' });
});

test('a deleted event is reported as a seq gap at its position', () => {
  const r = tampered((db) => db.prepare('DELETE FROM events WHERE seq = 80').run());
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 80, reason: 'seq-gap' });
});

test('two events swapped (their seqs exchanged) are reported as reordered', () => {
  const r = tampered((db) => {
    db.prepare('UPDATE events SET seq = -1 WHERE seq = 30').run();
    db.prepare('UPDATE events SET seq = 30 WHERE seq = 31').run();
    db.prepare('UPDATE events SET seq = 31 WHERE seq = -1').run();
  });
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 30, reason: 'reordered' });
});

test('dropping the last 10 events after a checkpoint is reported as tail-truncated', () => {
  const r = tampered((db) => db.prepare('DELETE FROM events WHERE seq > 240').run());
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 241, reason: 'tail-truncated' });
  assert.equal(r.events, 240);
});

test('a rewritten chain (edit + every later hash recomputed) still fails at the next checkpoint', () => {
  const r = tampered((db) => {
    db.prepare(`UPDATE events SET data = json_set(data, '$.z', -1) WHERE seq = 150`).run();
    let prev = db.prepare('SELECT hash FROM events WHERE seq = 149').pluck().get() as string;
    for (const row of db.prepare('SELECT * FROM events WHERE seq >= 150 ORDER BY seq').all() as Array<Record<string, unknown>>) {
      const hash = eventHash(prev, { seq: row.seq as number, ts: row.ts as string, tenant: row.tenant as string, sandbox: row.sandbox as string, type: row.type as string, data: JSON.parse(row.data as string) });
      db.prepare('UPDATE events SET prev = ?, hash = ? WHERE seq = ?').run(prev, hash, row.seq);
      prev = hash;
    }
  });
  assert.deepEqual({ seq: r.firstBroken?.seq, reason: r.firstBroken?.reason }, { seq: 200, reason: 'checkpoint-mismatch' });
});

test('a forged checkpoint (edited, or signed by another key) is reported', () => {
  const edited = tampered((db) => db.prepare(`UPDATE audit_checkpoints SET hash = ? WHERE seq = 100`).run('f'.repeat(64)));
  assert.deepEqual({ seq: edited.firstBroken?.seq, reason: edited.firstBroken?.reason }, { seq: 100, reason: 'checkpoint-signature' });

  // Truncate and cover it with a checkpoint signed by a key of the attacker's own.
  const forged = tampered((db) => {
    db.prepare('DELETE FROM events WHERE seq > 240').run();
    db.prepare('DELETE FROM audit_checkpoints WHERE seq = 250').run();
    const { privateKey } = generateKeyPairSync('ed25519');
    const head = db.prepare('SELECT hash FROM events WHERE seq = 240').pluck().get() as string;
    const ts = new Date().toISOString();
    db.prepare('INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)')
      .run(240, head, ts, sign(null, Buffer.from(checkpointMessage(240, head, ts)), privateKey).toString('base64'));
  });
  assert.deepEqual({ seq: forged.firstBroken?.seq, reason: forged.firstBroken?.reason }, { seq: 240, reason: 'checkpoint-signature' });
});

test('a checkpoint is written in the same transaction as the event crossing the boundary', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-'));
  try {
    const db = openDb(join(dir, 'airlock.db'));
    const log = new EventLog(db, { signer: loadAuditSigner(join(dir, 'k')), checkpointEvery: 5 });
    for (let i = 0; i < 4; i++) log.append({ tenant: 't', sandbox: null, type: 'x' });
    // A rolled-back transaction takes the boundary event and its checkpoint with it.
    assert.throws(() => db.transaction(() => { log.append({ tenant: 't', sandbox: null, type: 'x' }); throw new Error('rollback'); })());
    log.discardPending();
    assert.equal(db.prepare('SELECT COUNT(*) FROM audit_checkpoints').pluck().get(), 0);
    log.append({ tenant: 't', sandbox: null, type: 'x' });
    assert.deepEqual(db.prepare('SELECT seq FROM audit_checkpoints').pluck().all(), [5]);
    assert.equal(log.verify().ok, true);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an evidence bundle verifies offline; tampering with it is reported', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-'));
  try {
    const { file, keyFile } = makeLog(dir, 230);
    const db = openDb(file);
    const publicKeyPem = loadAuditSigner(keyFile).publicKeyPem;
    const gz = buildEvidenceBundle({ db, publicKeyPem, logVerification: verifyEventLog(db, parsePublicKey(publicKeyPem)) }, { sandbox: 'sba' });
    db.close();
    const ok = verifyBundle(gz);
    assert.equal(ok.ok, true, JSON.stringify(ok.firstBroken));
    assert.equal(ok.selectedEvents, 115);
    assert.equal(ok.redactedEvents, 115); // sbb's, from seq 1 to the head checkpoint at 230
    assert.equal(verifyBundle(gz, publicKeyPem).ok, true);

    const files = readBundleTar(gz);
    assert.ok(files.has('file-manifest.json') && files.has('exec-outputs.ndjson') && files.has('policy.json') && files.has('verification.json'));
    const manifest = JSON.parse(files.get('file-manifest.json')!.toString()) as Array<{ path: string }>;
    assert.ok(manifest.some((f) => f.path === '/f3'));

    const rewrite = (edit: (lines: string[]) => void) => {
      const copy = new Map(files);
      const lines = copy.get('events.ndjson')!.toString().trimEnd().split('\n');
      edit(lines);
      copy.set('events.ndjson', Buffer.from(lines.join('\n') + '\n'));
      return verifyBundle(writeBundleTar(copy));
    };
    const edited = rewrite((l) => { l[8] = l[8]!.replace('"z":9', '"z":10'); });
    assert.deepEqual({ seq: edited.firstBroken?.seq, reason: edited.firstBroken?.reason }, { seq: 9, reason: 'hash-mismatch' });
    const dropped = rewrite((l) => { l.splice(20, 1); });
    assert.deepEqual({ seq: dropped.firstBroken?.seq, reason: dropped.firstBroken?.reason }, { seq: 21, reason: 'seq-gap' });
    const cut = rewrite((l) => { l.splice(-5); });
    assert.equal(cut.ok, false);

    // Another key than the reviewer's: every checkpoint fails.
    const other = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    assert.equal(verifyBundle(gz, other).firstBroken?.reason, 'checkpoint-signature');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the engine signs its head on close, verifies for admins only, and refuses others', async () => {
  const { Engine } = await import('../src/engine.js');
  const { TEMPLATES_DIR, tempDataDir } = await import('./support.js');
  const dataDir = tempDataDir('audit');
  const keyDir = mkdtempSync(join(tmpdir(), 'airlock-test-audit-key-'));
  const keyFile = join(keyDir, 'audit.key');
  try {
    let engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, auditKeyFile: keyFile, auditCheckpointEvery: 2 });
    const admin = { tenant: null };
    engine.createTenant(admin, 'team-a');
    engine.createTenant(admin, 'team-b');
    engine.createTenant(admin, 'team-c');
    const pem = engine.auditPublicKey(admin);
    assert.match(pem, /BEGIN PUBLIC KEY/);
    assert.throws(() => engine.verifyAudit({ tenant: 'team-a' }), (e: Error & { code?: string }) => e.code === 'forbidden');
    assert.throws(() => engine.exportAudit({ tenant: 'team-a', scope: 'tenant' }, { since: '2000-01-01T00:00:00Z' }), (e: Error & { code?: string }) => e.code === 'forbidden');
    const live = engine.verifyAudit(admin);
    assert.equal(live.ok, true);
    await engine.close();
    const db = openDb(join(dataDir, 'airlock.db'));
    const head = db.prepare('SELECT MAX(seq) FROM events').pluck().get() as number;
    assert.equal(db.prepare('SELECT MAX(seq) FROM audit_checkpoints').pluck().get(), head, 'the head is signed at close');
    db.close();
    engine = await Engine.open({ dataDir, templatesDir: TEMPLATES_DIR, auditKeyFile: keyFile });
    const again = engine.verifyAudit(admin);
    assert.equal(again.ok, true);
    assert.ok(again.checkpoints >= 2);
    await engine.close();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(keyDir, { recursive: true, force: true });
  }
});
