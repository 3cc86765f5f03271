import Database from 'better-sqlite3';
import { chmodSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export type Db = Database.Database;

/** Ordered schema migrations; the index + 1 is the schema version stored in user_version. */
const MIGRATIONS: string[] = [
  `CREATE TABLE sandboxes (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     state TEXT NOT NULL,
     runtime TEXT NOT NULL,
     template TEXT NOT NULL,
     spec TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     started_at INTEGER,
     ended_at INTEGER,
     expires_at INTEGER NOT NULL,
     reason TEXT,
     owner_pid INTEGER,
     owner_start TEXT,
     agent_token TEXT NOT NULL
   );
   CREATE INDEX sandboxes_state ON sandboxes(state);
   CREATE INDEX sandboxes_tenant ON sandboxes(tenant);
   CREATE TABLE api_keys (
     id TEXT PRIMARY KEY,
     tenant TEXT,
     scope TEXT NOT NULL,
     salt TEXT NOT NULL,
     hash TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     revoked_at INTEGER
   );
   CREATE TABLE events (
     seq INTEGER PRIMARY KEY,
     ts TEXT NOT NULL,
     tenant TEXT NOT NULL,
     sandbox TEXT,
     type TEXT NOT NULL,
     data TEXT NOT NULL,
     prev TEXT NOT NULL,
     hash TEXT NOT NULL
   );
   CREATE INDEX events_sandbox ON events(sandbox, seq);`,
  // 2: named volumes (storage/volumes.ts); a name is unique within its tenant.
  `CREATE TABLE volumes (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     name TEXT NOT NULL,
     size_mib INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     UNIQUE (tenant, name)
   );`,
  // 3: tenants, versioned policies (tenant '*' = the server default), scoped and revocable keys.
  `CREATE TABLE tenants (
     name TEXT PRIMARY KEY,
     created_at INTEGER NOT NULL,
     deleted_at INTEGER
   );
   INSERT INTO tenants (name, created_at) VALUES ('default', CAST(strftime('%s', 'now') AS INTEGER) * 1000);
   CREATE TABLE policies (
     tenant TEXT NOT NULL,
     version INTEGER NOT NULL,
     document TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     created_by TEXT,
     PRIMARY KEY (tenant, version)
   );
   ALTER TABLE api_keys ADD COLUMN sandbox TEXT;
   ALTER TABLE api_keys ADD COLUMN created_by TEXT;
   CREATE INDEX api_keys_tenant ON api_keys(tenant);
   CREATE INDEX sandboxes_tenant_created ON sandboxes(tenant, created_at);`,
  // 4: approvals (approvals/approval-repo.ts): actions a policy marks `ask`, waiting for a person.
  `CREATE TABLE approvals (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     sandbox TEXT,
     kind TEXT NOT NULL,
     action TEXT NOT NULL,
     subject TEXT NOT NULL,
     dedupe TEXT,
     state TEXT NOT NULL,
     requested_at INTEGER NOT NULL,
     requested_by TEXT,
     expires_at INTEGER NOT NULL,
     decided_at INTEGER,
     decided_by TEXT,
     reason TEXT
   );
   CREATE INDEX approvals_state ON approvals(state, expires_at);
   CREATE INDEX approvals_tenant ON approvals(tenant, requested_at);
   CREATE INDEX approvals_sandbox ON approvals(sandbox, state);`,
  // 5: tenants' secrets (secrets/secret-store.ts): AES-256-GCM, the key in a file outside this database.
  `CREATE TABLE secrets (
     tenant TEXT NOT NULL,
     name TEXT NOT NULL,
     hosts TEXT NOT NULL,
     header TEXT,
     ciphertext BLOB NOT NULL,
     iv BLOB NOT NULL,
     tag BLOB NOT NULL,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (tenant, name)
   );`,
  // audit_checkpoints (audit/event-log.ts): the chain head signed with the ed25519 key outside
  // this database every N events and at clean close, so a dropped tail is detectable.
  `CREATE TABLE audit_checkpoints (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     seq INTEGER NOT NULL,
     hash TEXT NOT NULL,
     ts TEXT NOT NULL,
     signature TEXT NOT NULL
   );
   CREATE INDEX audit_checkpoints_seq ON audit_checkpoints(seq);`,
  // metering (metering/usage-repo.ts): per (UTC day, sandbox) usage = the daily rollup, and each
  // live sandbox's last cgroup reading so a restart neither loses nor double-counts CPU time.
  `CREATE TABLE usage_daily (
     day TEXT NOT NULL,
     sandbox TEXT NOT NULL,
     tenant TEXT NOT NULL,
     cpu_seconds REAL NOT NULL DEFAULT 0,
     memory_gib_seconds REAL NOT NULL DEFAULT 0,
     disk_gib_hours REAL NOT NULL DEFAULT 0,
     net_bytes_in INTEGER NOT NULL DEFAULT 0,
     net_bytes_out INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (day, sandbox)
   );
   CREATE INDEX usage_daily_tenant ON usage_daily(tenant, day);
   CREATE INDEX usage_daily_sandbox ON usage_daily(sandbox);
   CREATE TABLE usage_meter (
     sandbox TEXT PRIMARY KEY,
     cpu_seconds REAL NOT NULL,
     sampled_at INTEGER NOT NULL
   );`,
  // exec records (records/exec-records.ts); the output lives in the blob store, named by sha256.
  `CREATE TABLE exec_records (
     exec_id TEXT PRIMARY KEY,
     sandbox TEXT NOT NULL,
     tenant TEXT NOT NULL,
     cmd TEXT NOT NULL,
     env_names TEXT NOT NULL,
     cwd TEXT NOT NULL,
     user TEXT,
     pty INTEGER NOT NULL,
     started_at INTEGER NOT NULL,
     ended_at INTEGER NOT NULL,
     exit_code INTEGER NOT NULL,
     reason TEXT NOT NULL,
     stdout_bytes INTEGER NOT NULL,
     stdout_sha256 TEXT,
     stdout_stored INTEGER NOT NULL,
     stdout_truncated INTEGER NOT NULL,
     stderr_bytes INTEGER NOT NULL,
     stderr_sha256 TEXT,
     stderr_stored INTEGER NOT NULL,
     stderr_truncated INTEGER NOT NULL
   );
   CREATE INDEX exec_records_sandbox ON exec_records(sandbox, started_at);
   CREATE INDEX exec_records_tenant_stdout ON exec_records(tenant, stdout_sha256);
   CREATE INDEX exec_records_tenant_stderr ON exec_records(tenant, stderr_sha256);`,
  // small blobs (up to 16 KiB, records/blob-store.ts) inline, content-addressed, committed with
  // the exec record that names them; larger ones stay files. Background execs get records too.
  `CREATE TABLE blobs_inline (
     sha256 TEXT PRIMARY KEY,
     data BLOB NOT NULL
   ) WITHOUT ROWID;
   ALTER TABLE exec_records ADD COLUMN background INTEGER NOT NULL DEFAULT 0;`,
];

export function openDb(file: string): Db {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  // Agent tokens and key hashes live here: owner-only, whatever the umask.
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try { chmodSync(f, 0o600); } catch { /* not created yet */ }
  }
  // WAL lets the daemon and embedded CLI processes share one data dir without blocking readers.
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`database schema version ${current} is newer than this Airlock (${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    const sql = MIGRATIONS[v]!;
    db.transaction(() => {
      db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}
