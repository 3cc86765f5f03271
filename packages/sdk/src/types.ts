/**
 * Shapes of the REST API (docs/rest-api.md). Duplicated from the engine on purpose: the SDK
 * is installed by agent authors who must not pull the engine (SQLite, runc drivers) with it.
 */

import type { VolumeMount } from './volume-types.js';

export type RuntimeName = 'container' | 'gvisor' | 'microvm';
export type SandboxState = 'creating' | 'running' | 'paused' | 'stopped' | 'killed' | 'expired' | 'failed';
/** Why a command ended. */
export type ExecReason = 'exited' | 'signaled' | 'timeout' | 'oom' | 'killed' | 'sandbox_ended' | 'error';

export interface Resources {
  cpus: number;
  memoryMiB: number;
  diskMiB: number;
  pids: number;
}

export interface NetworkPolicy {
  /** Egress allowlist: host, *.suffix, IPv4 or CIDR, each optionally :PORT; empty = no network. */
  allow: string[];
  /** Always wins over allow. */
  deny: string[];
  /** Per-direction cap of the sandbox link, megabits per second. */
  bandwidthMbps?: number;
}

export interface MountSpec {
  /** Host path. */
  source: string;
  /** Path inside the sandbox. */
  target: string;
  readOnly: boolean;
}

export interface CreateSandboxBody {
  template?: string;
  runtime?: RuntimeName;
  resources?: Partial<Resources>;
  /** Sandbox lifetime, whole seconds (1 to 86400). */
  timeoutSeconds?: number;
  network?: Partial<NetworkPolicy>;
  mounts?: Array<{ source: string; target: string; readOnly?: boolean }>;
  /** Named volumes to attach (read-only unless readOnly is false). */
  volumes?: Array<{ name: string; target: string; readOnly?: boolean }>;
  env?: Record<string, string>;
  workdir?: string;
  /** Where outputs are collected from (default /work/out). */
  outputPath?: string;
  metadata?: Record<string, string>;
  /** Names of the tenant's secrets: the env gets a placeholder under each, swapped for the value at the egress proxy. */
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
  /** Where GET …/outputs collects from. */
  outputPath: string;
  metadata: Record<string, string>;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  expiresAt: string;
  /** Why the sandbox ended, null while it is alive. */
  reason: string | null;
}

export interface ExecBody {
  /** Program and arguments; no shell is involved. */
  cmd: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Text fed to stdin, then EOF. */
  stdin?: string;
  /** Per-command timeout; 0 or absent: bounded only by the sandbox lifetime. */
  timeoutSeconds?: number;
  background?: boolean;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  reason: ExecReason;
  /** true when stdout or stderr was cut at the capture cap (16 MiB each). */
  truncated?: boolean;
}

export interface ExecExit {
  exitCode: number;
  reason: ExecReason;
  durationMs: number;
  truncated?: boolean;
}

export interface ProcessInfo {
  pid: number;
  /** Exec id when Airlock started it, else null. */
  execId: string | null;
  cmdline: string[];
}

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

export interface FileEntry {
  name: string;
  type: FileType;
  size: number;
  mode: number;
  mtime: string;
}

export interface FileStatInfo {
  path: string;
  type: FileType;
  size: number;
  mode: number;
  mtime: string;
}

export interface TemplateInfo {
  name: string;
  /** Host path of the topmost layer; only admin callers see it. */
  path?: string;
  sizeBytes: number | null;
  createdAt: string;
  /** `sha256:<hex>` of the recipe or imported image; null for an old-layout template. */
  digest: string | null;
  /** Read-only layers a sandbox stacks. */
  layers: number;
  /** Live sandboxes started from it. */
  inUse: number;
}

/** What POST /v1/templates/:name/build takes: a recipe (YAML/JSON text or object) or the built-in one. */
export interface TemplateBuildBody {
  recipe?: string | Record<string, unknown>;
  builtin?: true;
  /** Rebuild even when the recipe is unchanged. */
  force?: boolean;
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

/** One line of an exec NDJSON stream. */
export type ExecStreamLine =
  | { type: 'stdout' | 'stderr'; data: string }
  | ({ type: 'exit' } & ExecExit)
  | { type: 'error'; error: { code: string; message: string } };
