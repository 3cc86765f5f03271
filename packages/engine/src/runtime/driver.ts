import type { DiskUsage } from '../storage/disk-watch.js';
import type { MountSpec, RuntimeName, SandboxSpec } from '../types.js';

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
   * A formatted empty file system image of exactly the disk quota (never written to: the driver
   * copies it), to become the sandbox's writable layer.
   */
  blankLayer: string;
  /** gVisor only: trace the sandbox's syscalls (runsc --strace) as evidence (telemetry/syscall-trace.ts). */
  syscallTrace?: { syscalls?: string[] };
  /** Host directories of the sandbox's volumes, bound after spec.mounts. */
  volumeBinds: MountSpec[];
  /** Files the engine provides (e.g. /etc/resolv.conf), bound read-only last. */
  engineBinds?: MountSpec[];
  /**
   * The sandbox's network namespace, already plumbed, for a driver whose runtime must find its
   * interfaces at start (networkBeforeStart); absent: no network.
   */
  netnsPath?: string;
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
  /**
   * True when the network must exist before start (the runtime reads the namespace's interfaces
   * once, like runsc); false when the engine plumbs the namespace of the running sandbox.
   */
  readonly networkBeforeStart: boolean;
  /** The sandbox link's MTU when the tier needs one (network/host-network.ts SANDBOX_LINK_MTU otherwise). */
  readonly linkMtu?: number;
  /**
   * True when a process the host's OOM killer ended reaches the agent as a plain failed exit
   * rather than SIGKILL (gVisor: the kill lands on the sentry's address-space stub, and the sentry
   * ends the task itself); the engine then reads the cgroup's OOM counter to tell.
   */
  readonly oomSeenAsExit: boolean;
  /**
   * How long a connection to the agent socket may wait for the agent's HELLO; absent: the link's
   * default (2 s). A runtime whose own process dials in before the agent runs sets it longer.
   */
  readonly agentHelloTimeoutMs?: number;
  /** Creates and starts the sandbox with the agent as PID 1. Cleans up after itself on failure. */
  start(launch: SandboxLaunch): Promise<void>;
  /** Kills every process and frees every host object. Idempotent, tolerant of partial state. */
  destroy(id: string): Promise<void>;
  status(id: string): Promise<DriverStatus>;
  /**
   * Freezes every process of the sandbox (cgroup freezer, runsc pause, QEMU stop) so it uses no
   * CPU until resume(); its memory, files and network objects stay. Idempotent.
   */
  pause(id: string): Promise<void>;
  /** Thaws a paused sandbox. Idempotent. */
  resume(id: string): Promise<void>;
  /**
   * A host pid inside the sandbox's network namespace, for the network layer to name and plumb
   * it (null when the sandbox is gone).
   */
  networkPid(id: string): Promise<number | null>;
  /** Ids of the sandboxes this driver currently holds on the host. */
  list(): Promise<string[]>;
  /** Kernel counters read before and after an exec to tell why a process died. */
  limitCounters(id: string): LimitCounters;
  /** Space and inodes of the sandbox's writable layer; null when it has none (any more). */
  diskUsage(id: string): DiskUsage | null;
}
