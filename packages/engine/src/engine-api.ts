import type {
  AuditEvent, ExecExit, ExecHandlers, ExecRequest, ExecResult, FileEntry, ProcessInfo,
  NetworkPolicy, RuntimeName, SandboxInfo, SandboxSpecInput, SandboxState,
} from './types.js';
import type { FileData, FileWatchEvent, FileWatchHandle, OutputsListing } from './files/types.js';
import type { PtyExit, PtyOptions, PtySession } from './sandbox/pty-session.js';
import type { HistoryEntry } from './records/history.js';
import type { CreateVolumeInput, VolumeInfo } from './types.js';
import type { BuildTemplateOptions as TemplateBuildOptions } from './template/build-template.js';
import type { ImportTemplateOptions as TemplateImportOptions } from './template/import-template.js';

import type { KeyScope } from './store/key-repo.js';
import type { DailyUsage, PriceSheet, SandboxUsage, UsageQuery, UsageReport, UsageTotals } from './metering/types.js';
import type { SecretInfo, SetSecretInput } from './secrets/secret-store.js';
import type { ApiKeyInfo, CreatedApiKey, CreateKeyInput, TenantInfo } from './tenants/types.js';
import type { PolicyDocument, PolicyTestInput, PolicyTestResult, PolicyVersionInfo, RuleResult } from './policy/types.js';
import type {
  ApprovalAction, ApprovalDecisionInput, ApprovalFilter, ApprovalInfo, ApprovalKind, ApprovalOptions, ApprovalState, ApprovalSubject,
} from './approvals/types.js';

export type { TemplateBuildOptions, TemplateImportOptions };
export type { DailyUsage, PriceSheet, SandboxUsage, UsageQuery, UsageReport, UsageTotals };
export type { KeyScope, ApiKeyInfo, CreatedApiKey, CreateKeyInput, TenantInfo };
export type { PolicyDocument, PolicyTestInput, PolicyTestResult, PolicyVersionInfo, RuleResult };
export type { PtyExit, PtyOptions, PtySession };
export type { SecretInfo, SetSecretInput };
export type { ApprovalAction, ApprovalDecisionInput, ApprovalFilter, ApprovalInfo, ApprovalKind, ApprovalOptions, ApprovalState, ApprovalSubject };

/** What a caller's key may do (docs/tenants.md): the engine enforces it on every method. */
export type CallerScope = KeyScope;

/**
 * Who is asking. `tenant: null` is the admin view (sees every tenant).
 * Every method throws AirlockError (not_found for unknown ids and for ids of another tenant;
 * forbidden where the caller's scope does not allow the method).
 */
export interface Caller {
  tenant: string | null;
  /** Default: admin when tenant is null, else tenant (full use of that tenant). */
  scope?: CallerScope;
  /** An exec key's one sandbox: any other id is not found. */
  sandbox?: string;
  /** The API key acting, for the audit trail. */
  keyId?: string;
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
  /** An admin's filter; a tenant caller only ever sees its own tenant's events. */
  tenant?: string;
  afterSeq?: number;
  limit?: number;
}

/** The engine's public surface; airlockd, the CLI's embedded mode, MCP and the dashboard all sit on it. */
/** For calls that may wait (on an approval): aborting withdraws what they wait for. */
export interface RequestOptions {
  signal?: AbortSignal;
}

export interface AirlockEngine {
  /** `opts.signal`: the requester went away; a create waiting for an approval withdraws it. */
  createSandbox(caller: Caller, input: SandboxSpecInput, opts?: RequestOptions): Promise<SandboxInfo>;
  getSandbox(caller: Caller, id: string): SandboxInfo;
  listSandboxes(caller: Caller, filter?: ListFilter): SandboxInfo[];
  killSandbox(caller: Caller, id: string): Promise<SandboxInfo>;
  /**
   * Sets the remaining lifetime to `timeoutSeconds` from now. Where the policy asks
   * (approvals.lifetimeAbove), waits for the decision; denied or unanswered: 422 approval_denied.
   */
  setSandboxTimeout(caller: Caller, id: string, timeoutSeconds: number, opts?: RequestOptions): Promise<SandboxInfo>;
  /** The runtimes (isolation tiers) this host can run, weakest first. */
  runtimes(): RuntimeName[];
  /** Freezes a running sandbox (no CPU; memory, files, network kept); 409 unless running or paused. */
  pauseSandbox(caller: Caller, id: string): Promise<SandboxInfo>;
  /** Thaws a paused sandbox; 409 unless paused or running. */
  resumeSandbox(caller: Caller, id: string): Promise<SandboxInfo>;
  /** Live egress policy change (fields left out keep their value); `cut` = connections it closed. */
  updateNetwork(caller: Caller, id: string, policy: Partial<NetworkPolicy>, opts?: RequestOptions): Promise<SandboxInfo & { cut: number }>;

  /** Runs to completion and returns captured output (capped); handlers see output live. */
  exec(caller: Caller, id: string, req: ExecRequest, handlers?: ExecHandlers): Promise<ExecResult>;
  /** Starts a background process; returns its in-sandbox pid. */
  execBackground(caller: Caller, id: string, req: ExecRequest): Promise<{ pid: number; execId: string }>;
  /**
   * An interactive terminal: `cmd` (default /bin/bash, else /bin/sh) on a new pseudo-terminal.
   * Resolves once the program runs; records exec.started / exec.exited with `pty: true`.
   */
  openPty(caller: Caller, id: string, opts?: PtyOptions): Promise<PtySession>;
  listProcesses(caller: Caller, id: string): Promise<ProcessInfo[]>;
  /** Stores the process tree now as a `process.snapshot` event (docs/records.md). */
  snapshotProcesses(caller: Caller, id: string): Promise<{ seq: number; processes: ProcessInfo[] }>;
  /** The sandbox's timeline: events merged with exec records, oldest first (docs/records.md). */
  sandboxHistory(caller: Caller, id: string): HistoryEntry[];
  /** A recorded output blob by SHA-256; 404 unless one of the caller's tenant's records names it. */
  readBlob(caller: Caller, sha256: string): Buffer;
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
  /** Recomputes the whole hash chain and checks the signed checkpoints (docs/audit.md). Admin-only. */
  verifyAudit(caller: Caller): import('./audit/chain-verifier.js').VerifyResult;
  /** SPKI PEM of the ed25519 key that signs audit checkpoints. Admin-only. */
  auditPublicKey(caller: Caller): string;
  /**
   * An evidence bundle (tar.gz, docs/audit.md) of one sandbox's events, or of all since a time,
   * checkable offline. Admin-only. 404 for an unknown sandbox; 400 when nothing matches.
   */
  exportAudit(caller: Caller, selection: { sandbox?: string; since?: string }): Buffer;
  doctor(): Promise<DoctorCheck[]>;
  /**
   * Metered usage and its cost by the price sheet (docs/metering.md): totals, per sandbox and per
   * UTC day. A tenant's key sees its own tenant (another tenant's sandbox: 404; naming another
   * tenant: 403); admins see every tenant or `query.tenant`.
   */
  usage(caller: Caller, query?: UsageQuery): UsageReport;

  // ---- tenants, keys, policies (docs/tenants.md); all admin-only but getPolicy/testPolicy ----

  /** 409 if it exists; `system` is reserved and `default` always exists. */
  createTenant(caller: Caller, name: string): TenantInfo;
  listTenants(caller: Caller): TenantInfo[];
  /** 409 while it has live sandboxes or volumes; revokes its keys. */
  deleteTenant(caller: Caller, name: string): void;
  /** The plaintext key is in the answer only, never stored. */
  createKey(caller: Caller, input: CreateKeyInput): CreatedApiKey;
  listKeys(caller: Caller, filter?: { tenant?: string }): ApiKeyInfo[];
  /** Takes effect at once. */
  revokeKey(caller: Caller, id: string): void;
  /** `tenant` = `default` for the server default; latest version unless `version`. A tenant may read its own. */
  getPolicy(caller: Caller, tenant: string, version?: number): PolicyVersionInfo;
  /** Stores the next version (a new row; old versions stay). 400 naming the path of a bad field. */
  setPolicy(caller: Caller, tenant: string, document: unknown): PolicyVersionInfo;
  /** Evaluates a sandbox spec against a tenant's policy (or a draft): every rule with its verdict. */
  testPolicy(caller: Caller, input: PolicyTestInput): PolicyTestResult;

  // ---- approvals (docs/approvals.md): what a policy marks `ask` waits for a person ----

  /** Newest first; a tenant's keys see their tenant's, admins all (or `filter.tenant`'s). Overdue requests are expired first. */
  listApprovals(caller: Caller, filter?: ApprovalFilter): ApprovalInfo[];
  getApproval(caller: Caller, id: string): ApprovalInfo;
  /** Admin keys only. The waiting action resumes; 409 when already decided or expired. */
  approveApproval(caller: Caller, id: string, input?: ApprovalDecisionInput): ApprovalInfo;
  /** Admin keys, and tenant keys for their own tenant's requests. 409 when already decided or expired. */
  denyApproval(caller: Caller, id: string, input?: ApprovalDecisionInput): ApprovalInfo;

  // ---- secrets (docs/secrets.md): values go in, never come out ----

  /**
   * Creates or replaces secret `name` of the caller's tenant (an admin key picks one with
   * opts.tenant, default "default"). The answer, like every other, holds no value.
   */
  setSecret(caller: Caller, name: string, input: SetSecretInput, opts?: { tenant?: string }): SecretInfo;
  /** Names, hosts, header templates and times. An admin sees every tenant's unless opts.tenant. */
  listSecrets(caller: Caller, opts?: { tenant?: string }): SecretInfo[];
  /** 404 when absent. Sandboxes holding its placeholder can no longer use it. */
  deleteSecret(caller: Caller, name: string, opts?: { tenant?: string }): void;

  /** Creates the first admin key when none exists; returns its plaintext (shown once) or null. */
  ensureAdminKey(): string | null;
  /**
   * Resolves a bearer key to its caller, or null (unknown or revoked; null key = none given).
   * A failure is recorded as a (coalesced) auth.denied event. Cheap: scrypt runs once per key.
   */
  authenticate(key: string | null, from?: { address?: string }): Caller | null;
  /** Records a refusal made before any key was checked (e.g. rate limited), coalesced like the rest. */
  recordAuthDenied(reason: string, from?: { address?: string }): void;
  /** Stops timers and listeners; running sandboxes keep running (a later engine reconciles them). */
  close(): Promise<void>;
}

export type { ExecExit };
