import type { Db } from './db.js';
import type { SandboxInfo, SandboxSpec, SandboxState } from '../types.js';
import { DEFAULT_OUTPUT_PATH } from '../sandbox/spec.js';

/** A sandbox as stored: its public info plus what only the engine needs. */
export interface SandboxRecord {
  id: string;
  tenant: string;
  state: SandboxState;
  spec: SandboxSpec;
  createdAt: number;
  startedAt: number | null;
  endedAt: number | null;
  expiresAt: number;
  reason: string | null;
  ownerPid: number | null;
  ownerStart: string | null;
  agentToken: string;
}

export interface SandboxQuery {
  tenant?: string | null;
  state?: SandboxState;
  states?: SandboxState[];
}

/** Repository interface: the engine never writes SQL itself, so another store can slot in. */
export interface SandboxRepository {
  insert(r: SandboxRecord): void;
  get(id: string): SandboxRecord | null;
  list(q: SandboxQuery): SandboxRecord[];
  update(id: string, patch: Partial<Pick<SandboxRecord, 'state' | 'startedAt' | 'endedAt' | 'expiresAt' | 'reason' | 'ownerPid' | 'ownerStart'>>): void;
  /** Replaces the stored spec (a live network policy change). */
  updateSpec(id: string, spec: SandboxSpec): void;
  nextExpiry(): number | null;
}

interface Row {
  id: string; tenant: string; state: string; runtime: string; template: string; spec: string;
  created_at: number; started_at: number | null; ended_at: number | null; expires_at: number;
  reason: string | null; owner_pid: number | null; owner_start: string | null; agent_token: string;
}

const COLUMNS: Record<string, string> = {
  state: 'state', startedAt: 'started_at', endedAt: 'ended_at', expiresAt: 'expires_at',
  reason: 'reason', ownerPid: 'owner_pid', ownerStart: 'owner_start',
};

function fromRow(r: Row): SandboxRecord {
  return {
    id: r.id,
    tenant: r.tenant,
    state: r.state as SandboxState,
    spec: JSON.parse(r.spec) as SandboxSpec,
    createdAt: r.created_at,
    startedAt: r.started_at,
    endedAt: r.ended_at,
    expiresAt: r.expires_at,
    reason: r.reason,
    ownerPid: r.owner_pid,
    ownerStart: r.owner_start,
    agentToken: r.agent_token,
  };
}

export class SqliteSandboxRepository implements SandboxRepository {
  private readonly getStmt;
  private readonly insertStmt;
  private readonly nextExpiryStmt;

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare('SELECT * FROM sandboxes WHERE id = ?');
    this.insertStmt = db.prepare(
      `INSERT INTO sandboxes (id, tenant, state, runtime, template, spec, created_at, started_at, ended_at, expires_at, reason, owner_pid, owner_start, agent_token)
       VALUES (@id, @tenant, @state, @runtime, @template, @spec, @createdAt, @startedAt, @endedAt, @expiresAt, @reason, @ownerPid, @ownerStart, @agentToken)`,
    );
    this.nextExpiryStmt = db.prepare(
      "SELECT MIN(expires_at) AS t FROM sandboxes WHERE state IN ('creating','running','paused')",
    );
  }

  insert(r: SandboxRecord): void {
    this.insertStmt.run({
      ...r,
      runtime: r.spec.runtime,
      template: r.spec.template,
      spec: JSON.stringify(r.spec),
    });
  }

  get(id: string): SandboxRecord | null {
    const row = this.getStmt.get(id) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  list(q: SandboxQuery): SandboxRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.tenant) { where.push('tenant = ?'); args.push(q.tenant); }
    if (q.state) { where.push('state = ?'); args.push(q.state); }
    if (q.states?.length) { where.push(`state IN (${q.states.map(() => '?').join(',')})`); args.push(...q.states); }
    const sql = `SELECT * FROM sandboxes ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at ASC`;
    return (this.db.prepare(sql).all(...args) as Row[]).map(fromRow);
  }

  update(id: string, patch: Partial<Pick<SandboxRecord, 'state' | 'startedAt' | 'endedAt' | 'expiresAt' | 'reason' | 'ownerPid' | 'ownerStart'>>): void {
    const sets: string[] = [];
    const args: unknown[] = [];
    for (const [k, v] of Object.entries(patch)) {
      const col = COLUMNS[k];
      if (!col) throw new Error(`not an updatable column: ${k}`);
      sets.push(`${col} = ?`);
      args.push(v);
    }
    if (!sets.length) return;
    this.db.prepare(`UPDATE sandboxes SET ${sets.join(', ')} WHERE id = ?`).run(...args, id);
  }

  updateSpec(id: string, spec: SandboxSpec): void {
    this.db.prepare('UPDATE sandboxes SET spec = ? WHERE id = ?').run(JSON.stringify(spec), id);
  }

  nextExpiry(): number | null {
    const r = this.nextExpiryStmt.get() as { t: number | null };
    return r.t;
  }
}

export function toSandboxInfo(r: SandboxRecord): SandboxInfo {
  const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
  return {
    id: r.id,
    tenant: r.tenant,
    state: r.state,
    runtime: r.spec.runtime,
    template: r.spec.template,
    resources: r.spec.resources,
    network: r.spec.network,
    mounts: r.spec.mounts,
    // Records written before volumes existed have none.
    volumes: r.spec.volumes ?? [],
    workdir: r.spec.workdir,
    // Records from before outputPath existed collect from the default.
    outputPath: r.spec.outputPath ?? DEFAULT_OUTPUT_PATH,
    metadata: r.spec.metadata,
    createdAt: new Date(r.createdAt).toISOString(),
    startedAt: iso(r.startedAt),
    endedAt: iso(r.endedAt),
    expiresAt: new Date(r.expiresAt).toISOString(),
    reason: r.reason,
  };
}
