import type {
  AuditEvent, ExecExit, ExecHandlers, ExecRequest, ExecResult, FileEntry, ProcessInfo,
  SandboxInfo, SandboxSpecInput, SandboxState,
} from './types.js';

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
  path: string;
  sizeBytes: number | null;
  createdAt: string;
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

  /** Runs to completion and returns captured output (capped); handlers see output live. */
  exec(caller: Caller, id: string, req: ExecRequest, handlers?: ExecHandlers): Promise<ExecResult>;
  /** Starts a background process; returns its in-sandbox pid. */
  execBackground(caller: Caller, id: string, req: ExecRequest): Promise<{ pid: number; execId: string }>;
  listProcesses(caller: Caller, id: string): Promise<ProcessInfo[]>;
  killProcess(caller: Caller, id: string, pid: number, signal?: number): Promise<void>;

  readFile(caller: Caller, id: string, path: string): Promise<Buffer>;
  writeFile(caller: Caller, id: string, path: string, data: Buffer, opts?: { mode?: number }): Promise<FileStat>;
  listDir(caller: Caller, id: string, path: string): Promise<FileEntry[]>;
  statPath(caller: Caller, id: string, path: string): Promise<FileStat>;
  deletePath(caller: Caller, id: string, path: string, opts?: { recursive?: boolean }): Promise<void>;

  listTemplates(): TemplateInfo[];
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
