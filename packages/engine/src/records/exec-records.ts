/**
 * Exec records (docs/records.md): one row per finished exec (foreground, background or PTY
 * session), written in the transaction that appends its exec.exited event. The output itself
 * lives in the blob store; a row names it by SHA-256 with the stored length and whether the cap
 * cut it.
 */
import type { Db } from '../store/db.js';

export interface RecordedStream {
  /** Bytes the command wrote to the stream. */
  bytes: number;
  /** Blob holding the first `stored` bytes; null when nothing was recorded (cap 0). */
  sha256: string | null;
  stored: number;
  truncated: boolean;
}

export interface ExecRecord {
  execId: string;
  sandbox: string;
  tenant: string;
  cmd: string[];
  envNames: string[];
  cwd: string;
  user: string | null;
  pty: boolean;
  /**
   * Started with execBackground: its output went to /dev/null, so both streams are empty and
   * unnamed. Always set by the engine (optional only so that older clients' record types fit).
   */
  background?: boolean;
  startedAt: string;
  endedAt: string;
  exitCode: number;
  reason: string;
  stdout: RecordedStream;
  stderr: RecordedStream;
}

interface Row {
  exec_id: string; sandbox: string; tenant: string; cmd: string; env_names: string; cwd: string; user: string | null;
  pty: number; background: number; started_at: number; ended_at: number; exit_code: number; reason: string;
  stdout_bytes: number; stdout_sha256: string | null; stdout_stored: number; stdout_truncated: number;
  stderr_bytes: number; stderr_sha256: string | null; stderr_stored: number; stderr_truncated: number;
}

function toRecord(r: Row): ExecRecord {
  return {
    execId: r.exec_id, sandbox: r.sandbox, tenant: r.tenant,
    cmd: JSON.parse(r.cmd) as string[], envNames: JSON.parse(r.env_names) as string[],
    cwd: r.cwd, user: r.user, pty: r.pty === 1, background: r.background === 1,
    startedAt: new Date(r.started_at).toISOString(), endedAt: new Date(r.ended_at).toISOString(),
    exitCode: r.exit_code, reason: r.reason,
    stdout: { bytes: r.stdout_bytes, sha256: r.stdout_sha256, stored: r.stdout_stored, truncated: r.stdout_truncated === 1 },
    stderr: { bytes: r.stderr_bytes, sha256: r.stderr_sha256, stored: r.stderr_stored, truncated: r.stderr_truncated === 1 },
  };
}

export class ExecRecordRepository {
  // Prepared once: an exec's recording is on its round trip's critical path.
  private readonly insertStmt;
  private readonly forSandboxStmt;
  private readonly referencesStmt;

  constructor(db: Db) {
    this.insertStmt = db.prepare(`INSERT INTO exec_records (exec_id, sandbox, tenant, cmd, env_names, cwd, user, pty, background,
        started_at, ended_at, exit_code, reason, stdout_bytes, stdout_sha256, stdout_stored, stdout_truncated,
        stderr_bytes, stderr_sha256, stderr_stored, stderr_truncated)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    this.forSandboxStmt = db.prepare('SELECT * FROM exec_records WHERE sandbox = ? ORDER BY started_at, exec_id');
    this.referencesStmt = db.prepare(`SELECT 1 FROM exec_records WHERE tenant = ? AND (stdout_sha256 = ? OR stderr_sha256 = ?)
      UNION ALL SELECT 1 FROM events WHERE tenant = ? AND type LIKE 'evidence.%' AND json_extract(data, '$.sha256') = ? LIMIT 1`);
  }

  /** Call inside the transaction that appends the exec.exited event. */
  insert(r: ExecRecord): void {
    this.insertStmt.run(
      r.execId, r.sandbox, r.tenant, JSON.stringify(r.cmd), JSON.stringify(r.envNames), r.cwd, r.user, r.pty ? 1 : 0, r.background ? 1 : 0,
      Date.parse(r.startedAt), Date.parse(r.endedAt), r.exitCode, r.reason,
      r.stdout.bytes, r.stdout.sha256, r.stdout.stored, r.stdout.truncated ? 1 : 0,
      r.stderr.bytes, r.stderr.sha256, r.stderr.stored, r.stderr.truncated ? 1 : 0,
    );
  }

  forSandbox(sandbox: string): ExecRecord[] {
    return (this.forSandboxStmt.all(sandbox) as Row[]).map(toRecord);
  }

  /** Whether any of the tenant's records names this blob (the only blobs a tenant may read). */
  tenantReferences(tenant: string, sha256: string): boolean {
    return this.referencesStmt.get(tenant, sha256, sha256, tenant, sha256) !== undefined;
  }
}
