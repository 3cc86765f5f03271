import type {
  AuditEvent, ExecExit, ExecHandlers, ExecRequest, ExecResult, FileEntry, ProcessInfo,
  NetworkPolicy, SandboxInfo, SandboxSpecInput, SandboxState,
} from './types.js';
import type { FileData, FileWatchEvent, FileWatchHandle, OutputsListing } from './files/types.js';
import type { CreateVolumeInput, VolumeInfo } from './types.js';
import type { BuildTemplateOptions as TemplateBuildOptions } from './template/build-template.js';
import type { ImportTemplateOptions as TemplateImportOptions } from './template/import-template.js';

export type { TemplateBuildOptions, TemplateImportOptions };

/**
 * Who is asking. `tenant: null` is the admin view (sees every tenant).
 * Every method throws AirlockError (not_found for unknown ids and for ids of another tenant).
 */
export interface Caller {
  tenant: string | null;
}

export interface ListFilter {
  state?: SandboxState;
  metadata?: Record<string, string>;
}

export interface TemplateInfo {
  name: string;
  /** Host path of the topmost layer (admins only over HTTP). */
  path: string;
  sizeBytes: number | null;
  createdAt: string;
  /** `sha256:<hex>` of the recipe or imported image; null for a template of the old one-directory layout. */
  digest: string | null;
  /** Read-only layers a sandbox stacks. */
  layers: number;
  /** Live sandboxes (creating, running, paused) of this engine's store started from it. */
  inUse: number;
}

export interface FileStat {
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime: string;
}

export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface EventFilter {
  sandbox?: string;
  type?: string;
  afterSeq?: number;
  limit?: number;
}

/** The engine's public surface; airlockd, the CLI's embedded mode, MCP and the dashboard all sit on it. */
export interface AirlockEngine {
  createSandbox(caller: Caller, input: SandboxSpecInput): Promise<SandboxInfo>;
  getSandbox(caller: Caller, id: string): SandboxInfo;
  listSandboxes(caller: Caller, filter?: ListFilter): SandboxInfo[];
  killSandbox(caller: Caller, id: string): Promise<SandboxInfo>;
  /** Sets the remaining lifetime to `timeoutSeconds` from now. */
  setSandboxTimeout(caller: Caller, id: string, timeoutSeconds: number): SandboxInfo;
  /** Live egress policy change (fields left out keep their value); `cut` = connections it closed. */
  updateNetwork(caller: Caller, id: string, policy: Partial<NetworkPolicy>): Promise<SandboxInfo & { cut: number }>;

  /** Runs to completion and returns captured output (capped); handlers see output live. */
  exec(caller: Caller, id: string, req: ExecRequest, handlers?: ExecHandlers): Promise<ExecResult>;
  /** Starts a background process; returns its in-sandbox pid. */
  execBackground(caller: Caller, id: string, req: ExecRequest): Promise<{ pid: number; execId: string }>;
  listProcesses(caller: Caller, id: string): Promise<ProcessInfo[]>;
  killProcess(caller: Caller, id: string, pid: number, signal?: number): Promise<void>;

  /** Whole file in memory (capped at 256 MiB); readFileStream for anything large. */
  readFile(caller: Caller, id: string, path: string): Promise<Buffer>;
  /** Resolves once the first bytes arrived (errors come first); leaving the loop early cancels the read. */
  readFileStream(caller: Caller, id: string, path: string): Promise<AsyncIterable<Buffer>>;
  /** `data` as bytes or a stream of bytes (streamed to the sandbox with backpressure, never gathered). */
  writeFile(caller: Caller, id: string, path: string, data: FileData, opts?: { mode?: number }): Promise<FileStat>;
  listDir(caller: Caller, id: string, path: string): Promise<FileEntry[]>;
  statPath(caller: Caller, id: string, path: string): Promise<FileStat>;
  deletePath(caller: Caller, id: string, path: string, opts?: { recursive?: boolean }): Promise<void>;
  makeDir(caller: Caller, id: string, path: string, opts?: { parents?: boolean; mode?: number }): Promise<FileStat>;
  /** Never follows a link in the last component of either path; refuses to replace unless `overwrite`. */
  renamePath(caller: Caller, id: string, from: string, to: string, opts?: { overwrite?: boolean }): Promise<FileStat>;
  /** Resolves once the watch is in place; events until `signal` aborts, stop(), the directory goes or the sandbox ends. */
  watchFiles(
    caller: Caller, id: string, path: string, opts: { recursive?: boolean },
    onEvent: (e: FileWatchEvent) => void, signal?: AbortSignal,
  ): Promise<FileWatchHandle>;
  /** The sandbox's outputs (its outputPath) as a tar stream; links recorded, never followed. */
  outputsTar(caller: Caller, id: string): Promise<import('node:stream').Readable>;
  /** The sandbox's outputs as a list with sizes, modes and SHA-256 sums. */
  outputsList(caller: Caller, id: string): Promise<OutputsListing>;

  /** Named volumes (per tenant; an admin caller creates and finds them in tenant "default", lists all). */
  createVolume(caller: Caller, input: CreateVolumeInput): Promise<VolumeInfo>;
  listVolumes(caller: Caller): VolumeInfo[];
  getVolume(caller: Caller, name: string): VolumeInfo;
  /** 409 while attached to a live sandbox. */
  deleteVolume(caller: Caller, name: string): Promise<void>;

  listTemplates(): TemplateInfo[];
  /**
   * Builds template `name` from `opts.recipe` / `opts.file`, or from its built-in recipe (base,
   * tiny). Unchanged layers are reused; an unchanged recipe is not rebuilt. Operator-only: the
   * HTTP layer lets admin keys call it and nobody else.
   */
  buildTemplate(name: string, opts?: TemplateBuildOptions): Promise<TemplateInfo>;
  /** Imports an OCI image layout or `docker save` tarball (a host path or a byte stream). Operator-only. */
  importTemplate(name: string, source: string | import('node:stream').Readable, opts?: TemplateImportOptions): Promise<TemplateInfo>;
  /** Conflict while live sandboxes use it; layers nothing else uses are garbage-collected. Operator-only. */
  removeTemplate(name: string): Promise<void>;
  listEvents(caller: Caller, filter?: EventFilter): AuditEvent[];
  /** Live events; returns an unsubscribe function. */
  subscribeEvents(caller: Caller, filter: EventFilter, listener: (e: AuditEvent) => void): () => void;
  doctor(): Promise<DoctorCheck[]>;

  /** Creates the first admin key when none exists; returns its plaintext (shown once) or null. */
  ensureAdminKey(): string | null;
  /** Resolves a bearer key to its caller, or null (unknown or revoked). Cheap: cached after the first check. */
  authenticate(key: string): Caller | null;
  /** Stops timers and listeners; running sandboxes keep running (a later engine reconciles them). */
  close(): Promise<void>;
}

export type { ExecExit };
