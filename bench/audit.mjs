// Audit log: events/s appended (hash chain + a signed checkpoint every 1000 events, each event
// its own transaction, as a lone state change would be), then `verify` over 1,000,000 events.
// Targets (issue 7): ≥ 20,000 events/s appended; verify of 1,000,000 events ≤ 30 s.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventLog } from '../packages/engine/dist/src/audit/event-log.js';
import { loadAuditSigner } from '../packages/engine/dist/src/audit/signing-key.js';
import { openDb } from '../packages/engine/dist/src/store/db.js';

const APPEND_N = Number(process.env.APPEND_N ?? 200_000);
const TOTAL = Number(process.env.TOTAL ?? 1_000_000);
const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-audit-'));
try {
  const db = openDb(join(dir, 'airlock.db'));
  const log = new EventLog(db, { signer: loadAuditSigner(join(dir, 'audit-signing.key')) });
  const event = (i) => ({
    tenant: 'default', sandbox: `sb${i % 50}`, type: 'exec.exited',
    data: { execId: `e${i}`, exitCode: 0, reason: 'exited', durationMs: 12, stdoutBytes: 5, stderrBytes: 0, stdout: 'hello' },
  });

  let t0 = performance.now();
  for (let i = 0; i < APPEND_N; i++) log.append(event(i));
  const appendS = (performance.now() - t0) / 1000;
  console.log(`append: ${APPEND_N} events, one transaction each: ${(APPEND_N / appendS).toFixed(0)} events/s (target ≥ 20000)`);

  // The rest of the million in transactions of 1000 (same append path), to have a log to verify.
  const batch = db.transaction((from, to) => { for (let i = from; i < to; i++) log.append(event(i)); });
  for (let i = APPEND_N; i < TOTAL; i += 1000) { batch(i, Math.min(i + 1000, TOTAL)); log.flush(); }

  t0 = performance.now();
  const r = log.verify();
  const verifyS = (performance.now() - t0) / 1000;
  console.log(`verify: ${r.events} events, ${r.checkpoints} checkpoints, ok=${r.ok}: ${verifyS.toFixed(2)} s (target ≤ 30 s)`);
  db.close();
  if (!r.ok || r.events !== TOTAL) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
