import type { RuntimeName, SandboxSpec } from '../types.js';

export interface TemplateRef {
  name: string;
  /** Read-only layers, topmost first (overlayfs lowerdir order). */
  layers: string[];
  env: string[];
  workdir: string;
}

/** Everything a driver needs to bring one sandbox up. */
export interface SandboxLaunch {
  id: string;
  spec: SandboxSpec;
  template: TemplateRef;
  /** Host-private directory of this sandbox (<data-dir>/sandboxes/<id>). */
  dir: string;
  /** Host directory bind-mounted read-only at /run/airlock; the agent dials host.sock there. */
  controlDir: string;
  agentBinary: string;
  agentToken: string;
  /**
   * Resolves when the agent has dialled in. A driver may treat it as proof of a successful
   * start and return before its runtime's own bookkeeping finishes (it must then let that
   * finish before destroy()).
   */
  ready?: Promise<void>;
}

export type DriverStatus = 'running' | 'paused' | 'stopped' | 'absent';

export interface LimitCounters {
  oomKills: number;
  pidsMaxHits: number;
}

/**
 * One interface for every isolation tier. A driver owns the host objects of its sandboxes
 * (runtime state, mounts, cgroups) and must be able to remove them knowing only the id,
 * so reconcile works after a crash.
 */
export interface RuntimeDriver {
  readonly name: RuntimeName;
  /** Creates and starts the sandbox with the agent as PID 1. Cleans up after itself on failure. */
  start(launch: SandboxLaunch): Promise<void>;
  /** Kills every process and frees every host object. Idempotent, tolerant of partial state. */
  destroy(id: string): Promise<void>;
  status(id: string): Promise<DriverStatus>;
  /** Ids of the sandboxes this driver currently holds on the host. */
  list(): Promise<string[]>;
  /** Kernel counters read before and after an exec to tell why a process died. */
  limitCounters(id: string): LimitCounters;
}
