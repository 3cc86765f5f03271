/**
 * What the CLI's commands need from Airlock, whether it runs in this process (embedded engine)
 * or behind airlockd (remote). Commands are written once against this.
 */
import type {
  DoctorCheck, ExecReason, ExecRequest, ExecResult, FileEntry, ProcessInfo, SandboxInfo,
  SandboxSpecInput, SandboxState,
} from '@airlock/engine';

import type { VolumeInfo } from '@airlock/engine';
export type { VolumeInfo };
export type { DoctorCheck, ExecReason, ExecRequest, ExecResult, FileEntry, ProcessInfo, SandboxInfo, SandboxSpecInput, SandboxState };

/** A template as both backends report it (a remote daemon shows `path` only to admins). */
export interface TemplateInfo {
  name: string;
  path?: string;
  sizeBytes: number | null;
  createdAt: string;
  digest: string | null;
  layers: number;
  inUse: number;
}

export interface TemplateBuildRequest {
  /** A recipe file; none: the built-in recipe of that name. */
  file?: string;
  force?: boolean;
  /** Progress lines as the build goes. */
  onLog(line: string): void;
}

/** Live output of a streamed exec. Embedded mode hands raw bytes, remote mode decoded text. */
export interface StreamHandlers {
  onStdout(chunk: Buffer | string): void;
  onStderr(chunk: Buffer | string): void;
  /** Aborting kills the command (Ctrl-C). */
  signal?: AbortSignal;
}

export interface StreamExit {
  exitCode: number;
  reason: ExecReason;
  durationMs: number;
}

/** An interactive terminal in a sandbox (`sandbox shell`), the same through either backend. */
export interface PtyConnection {
  readonly pid: number;
  write(data: Buffer): void;
  resize(cols: number, rows: number): void;
  /** Signals the terminal's process group. */
  signal(signo: number): void;
  /** Terminal output; set once, before anything else. */
  onData(listener: (chunk: Buffer) => void): void;
  /** Flow control while this side's stdout is full. */
  pause(): void;
  resume(): void;
  readonly exited: Promise<StreamExit & { signal?: number }>;
  /** Leaves the session: it is hung up (SIGHUP, then SIGKILL). */
  close(): void;
}

export interface PtyRequest {
  cmd?: string[];
  cwd?: string;
  env?: Record<string, string>;
  cols: number;
  rows: number;
}

export interface Backend {
  /** For messages: "embedded (/var/lib/airlock)" or "http://127.0.0.1:7070". */
  readonly description: string;

  createSandbox(input: SandboxSpecInput): Promise<SandboxInfo>;
  getSandbox(id: string): Promise<SandboxInfo>;
  listSandboxes(filter?: { state?: SandboxState; metadata?: Record<string, string> }): Promise<SandboxInfo[]>;
  killSandbox(id: string): Promise<SandboxInfo>;
  pauseSandbox(id: string): Promise<SandboxInfo>;
  resumeSandbox(id: string): Promise<SandboxInfo>;
  updateNetwork(id: string, policy: { allow?: string[]; deny?: string[]; bandwidthMbps?: number }): Promise<SandboxInfo & { cut: number }>;

  /** Runs to completion and returns the captured output. */
  exec(id: string, req: ExecRequest): Promise<ExecResult>;
  /** Runs to completion, handing output over as it comes. */
  execStream(id: string, req: ExecRequest, handlers: StreamHandlers): Promise<StreamExit>;
  execBackground(id: string, req: ExecRequest): Promise<{ pid: number; execId: string }>;
  /** Opens a terminal session; resolves once its process runs. */
  openPty(id: string, req: PtyRequest): Promise<PtyConnection>;
  listProcesses(id: string): Promise<ProcessInfo[]>;
  /** Stores the process tree now as a process.snapshot event (docs/records.md). */
  snapshotProcesses(id: string): Promise<{ seq: number; processes: ProcessInfo[] }>;
  /** The sandbox's timeline, oldest first (docs/records.md). */
  sandboxHistory(id: string): Promise<import('@airlock/engine').HistoryEntry[]>;
  /** A recorded output blob by SHA-256. */
  readBlob(sha256: string): Promise<Uint8Array>;
  killProcess(id: string, pid: number, signal: number): Promise<void>;

  readFile(id: string, path: string): Promise<Uint8Array>;
  writeFile(id: string, path: string, data: Uint8Array, opts?: { mode?: number }): Promise<void>;
  listDir(id: string, path: string): Promise<FileEntry[]>;
  /** Streamed transfers, stat, mkdir, rename, watch, outputs. */
  readonly files: import('./file-transfer.js').FileTransfer;

  createVolume(input: { name: string; sizeMiB: number }): Promise<VolumeInfo>;
  listVolumes(): Promise<VolumeInfo[]>;
  getVolume(name: string): Promise<VolumeInfo>;
  deleteVolume(name: string): Promise<void>;

  listTemplates(): Promise<TemplateInfo[]>;
  buildTemplate(name: string, req: TemplateBuildRequest): Promise<TemplateInfo>;
  importTemplate(name: string, tarball: string, opts?: { relativizeLinks?: boolean }): Promise<TemplateInfo>;
  removeTemplate(name: string): Promise<void>;

  /** Releases the engine or connection; sandboxes keep running. */
  close(): Promise<void>;
}

/** Options that choose and configure the backend (shared by every command that needs one). */
export interface BackendOptions {
  /** Given explicitly: forces embedded mode on this data dir. */
  dataDir?: string;
  dnsUpstream?: string;
}
