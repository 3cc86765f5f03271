/** Public data shapes of the engine. The REST and SDK contracts mirror these. */

export type RuntimeName = 'container' | 'gvisor' | 'microvm';
/** The isolation ladder, weakest first: a tier policy's minimum admits its tier and those after it. */
export const RUNTIME_ORDER: readonly RuntimeName[] = ['container', 'gvisor', 'microvm'];

export type SandboxState =
  | 'creating'
  | 'running'
  | 'paused'
  | 'stopped'
  | 'killed'
  | 'expired'
  | 'failed';

export const TERMINAL_STATES: readonly SandboxState[] = ['stopped', 'killed', 'expired', 'failed'];

export interface Resources {
  cpus: number;
  memoryMiB: number;
  diskMiB: number;
  pids: number;
}

export interface MountSpec {
  source: string;
  target: string;
  readOnly: boolean;
}

/** A named volume attached to a sandbox (read-only unless readOnly is false). */
export interface VolumeMount {
  name: string;
  target: string;
  readOnly: boolean;
}

export interface NetworkPolicy {
  /** Egress allowlist (network/egress-policy.ts grammar); empty = no network at all. */
  allow: string[];
  /** Always wins over allow. */
  deny: string[];
  /** Per-direction bandwidth cap of the sandbox's link, megabits per second. */
  bandwidthMbps?: number;
}

/** What a caller asks for; defaults are filled in by the engine. */
export interface SandboxSpecInput {
  template?: string;
  runtime?: RuntimeName;
  resources?: Partial<Resources>;
  timeoutSeconds?: number;
  network?: Partial<NetworkPolicy>;
  mounts?: MountSpec[];
  volumes?: Array<{ name: string; target: string; readOnly?: boolean }>;
  env?: Record<string, string>;
  workdir?: string;
  /** Where outputs are collected from after a run (default /work/out). */
  outputPath?: string;
  metadata?: Record<string, string>;
  /** Names of the tenant's secrets (docs/secrets.md): the env gets a placeholder under each name. */
  secrets?: string[];
}

export interface SandboxSpec {
  template: string;
  runtime: RuntimeName;
  resources: Resources;
  timeoutSeconds: number;
  network: NetworkPolicy;
  mounts: MountSpec[];
  volumes: VolumeMount[];
  env: Record<string, string>;
  workdir: string;
  outputPath: string;
  metadata: Record<string, string>;
  /** Secrets brokered for it (absent: none; records from before secrets existed). */
  secrets?: string[];
}

export interface SandboxInfo {
  id: string;
  tenant: string;
  state: SandboxState;
  runtime: RuntimeName;
  template: string;
  resources: Resources;
  network: NetworkPolicy;
  mounts: MountSpec[];
  volumes: VolumeMount[];
  workdir: string;
  /** Where outputs are collected from (GET …/outputs). */
  outputPath: string;
  metadata: Record<string, string>;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  expiresAt: string;
  /** Why the sandbox ended (timeout, oom, killed, error text), null while alive. */
  reason: string | null;
}

/** Why an exec ended. */
export type ExecReason = 'exited' | 'signaled' | 'timeout' | 'oom' | 'killed' | 'sandbox_ended' | 'error';

export interface ExecRequest {
  cmd: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Bytes fed to the command's stdin, then EOF. */
  stdin?: string | Uint8Array;
  /** Per-command timeout; 0 or absent: bounded only by the sandbox lifetime. */
  timeoutSeconds?: number;
  /** Start and return at once; output is discarded, the process is listed by processes(). */
  background?: boolean;
  user?: { uid: number; gid: number };
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  reason: ExecReason;
  /** true when stdout/stderr were cut at the capture cap. */
  truncated?: boolean;
}

export interface ExecHandlers {
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Abort (e.g. client disconnected): the process group is killed. */
  signal?: AbortSignal;
}

export interface ExecExit {
  exitCode: number;
  reason: ExecReason;
  durationMs: number;
  signal?: number;
}

export interface ProcessInfo {
  pid: number;
  /** exec id when Airlock started it, else null. */
  execId: string | null;
  cmdline: string[];
}

export interface FileEntry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime: string;
}

export interface AuditEvent {
  seq: number;
  ts: string;
  tenant: string;
  sandbox: string | null;
  type: string;
  data: Record<string, unknown>;
  prev: string;
  hash: string;
}

/** A named volume: storage with its own quota that outlives the sandboxes it is attached to. */
export interface VolumeInfo {
  name: string;
  tenant: string;
  sizeMiB: number;
  /** Space in use now; null when the volume is not attached on this host (after shutdownStorage). */
  usedMiB: number | null;
  createdAt: string;
  /** Live sandboxes it is attached to. */
  attachments: Array<{ sandbox: string; target: string; readOnly: boolean }>;
}

export interface CreateVolumeInput {
  name: string;
  sizeMiB: number;
}
