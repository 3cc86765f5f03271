/**
 * The E2B-shaped face of the SDK: agent authors already know `Sandbox.create()`,
 * `sbx.commands.run()` and `sbx.files.write()`, so Airlock speaks the same shapes.
 */
import { ApiClient, type ClientOptions } from './client.js';
import { ApiError } from './errors.js';
import { Pty } from './pty.js';
import type {
  CreateSandboxBody, ExecBody, ExecReason, FileEntry, FileStatInfo, MountSpec, NetworkPolicy, ProcessInfo,
  Resources, RuntimeName, SandboxInfo,
} from './types.js';
import type { FileWatchEnd, FileWatchEvent, OutputsListing, UploadData } from './file-types.js';

export interface SandboxCreateOptions extends ClientOptions {
  /** Default: the server's default template (`base`). */
  template?: string;
  runtime?: RuntimeName;
  /** Sandbox lifetime in ms (rounded up to whole seconds); default 300 000. */
  timeoutMs?: number;
  network?: Partial<NetworkPolicy>;
  resources?: Partial<Resources>;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  mounts?: Array<Omit<MountSpec, 'readOnly'> & { readOnly?: boolean }>;
  /** Named volumes (see Volume): read-only unless readOnly is false. */
  volumes?: Array<{ name: string; target: string; readOnly?: boolean }>;
  workdir?: string;
  /** Where outputs are collected from (default /work/out). */
  outputPath?: string;
  /** Secrets to broker (see Secret): the env holds a placeholder under each name, never the value. */
  secrets?: string[];
}

export interface CommandOptions {
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** This command's timeout; default: bounded by the sandbox lifetime. */
  timeoutMs?: number;
  cwd?: string;
  envs?: Record<string, string>;
  stdin?: string;
  background?: boolean;
  /** Aborting kills the command. */
  signal?: AbortSignal;
}

export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  reason: ExecReason;
  durationMs: number;
  /** true when stdout or stderr outgrew the SDK's capture cap (16 MiB each). */
  truncated?: boolean;
}

export interface BackgroundCommand {
  pid: number;
  execId: string;
}

/** Output kept per stream by commands.run; handlers still see all of it. */
const CAPTURE_CAP_CHARS = 16 * 1024 * 1024;

class OutputBuffer {
  private parts: string[] = [];
  private length = 0;
  truncated = false;

  push(s: string): void {
    if (this.length >= CAPTURE_CAP_CHARS) { this.truncated = true; return; }
    const room = CAPTURE_CAP_CHARS - this.length;
    const kept = s.length > room ? s.slice(0, room) : s;
    if (kept.length < s.length) this.truncated = true;
    this.parts.push(kept);
    this.length += kept.length;
  }

  text(): string {
    return this.parts.join('');
  }
}

export class Commands {
  constructor(private readonly api: ApiClient, private readonly sandboxId: string) {}

  /**
   * Runs `cmd` (a string goes through `/bin/sh -c`, an array runs as is). Resolves with the
   * exit code and output; a non-zero exit is a result, not an error. With `background: true`
   * resolves at once with the process id.
   */
  run(cmd: string | string[], opts: CommandOptions & { background: true }): Promise<BackgroundCommand>;
  run(cmd: string | string[], opts?: CommandOptions & { background?: false }): Promise<CommandResult>;
  async run(cmd: string | string[], opts: CommandOptions = {}): Promise<CommandResult | BackgroundCommand> {
    const body: ExecBody = { cmd: typeof cmd === 'string' ? ['/bin/sh', '-c', cmd] : cmd };
    if (opts.cwd !== undefined) body.cwd = opts.cwd;
    if (opts.envs !== undefined) body.env = opts.envs;
    if (opts.stdin !== undefined) body.stdin = opts.stdin;
    if (opts.timeoutMs !== undefined) body.timeoutSeconds = opts.timeoutMs / 1000;
    if (opts.background) return this.api.execBackground(this.sandboxId, body);

    // Always streamed: output reaches the handlers live, and a long silent command is not cut
    // off by fetch's 300 s wait for response headers.
    const stdout = new OutputBuffer();
    const stderr = new OutputBuffer();
    const exit = await this.api.execStream(this.sandboxId, body, {
      onStdout: (d) => { stdout.push(d); opts.onStdout?.(d); },
      onStderr: (d) => { stderr.push(d); opts.onStderr?.(d); },
      signal: opts.signal,
    });
    const result: CommandResult = {
      exitCode: exit.exitCode, stdout: stdout.text(), stderr: stderr.text(), reason: exit.reason, durationMs: exit.durationMs,
    };
    if (exit.truncated || stdout.truncated || stderr.truncated) result.truncated = true;
    return result;
  }

  list(): Promise<ProcessInfo[]> {
    return this.api.listProcesses(this.sandboxId);
  }

  /** Signals a process (default SIGKILL); false when no such process exists. */
  async kill(pid: number, signal?: string | number): Promise<boolean> {
    try {
      await this.api.killProcess(this.sandboxId, pid, signal);
      return true;
    } catch (e) {
      // 404 about the process (not about the sandbox, which stays an error).
      if (e instanceof ApiError && e.status === 404 && !/^sandbox /.test(e.message)) return false;
      throw e;
    }
  }
}

export class Files {
  constructor(private readonly api: ApiClient, private readonly sandboxId: string) {}

  /** Whole file as text or bytes; `format: 'stream'` streams it (any size, read as it arrives). */
  read(path: string, opts?: { format?: 'text' }): Promise<string>;
  read(path: string, opts: { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, opts: { format: 'stream' }): Promise<ReadableStream<Uint8Array>>;
  async read(path: string, opts: { format?: 'text' | 'bytes' | 'stream' } = {}): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    if (opts.format === 'stream') return this.api.readFileStream(this.sandboxId, path);
    const bytes = await this.api.readFile(this.sandboxId, path);
    return opts.format === 'bytes' ? bytes : new TextDecoder().decode(bytes);
  }

  /**
   * Creates or replaces the file (parent directories included); returns its new metadata.
   * A ReadableStream or async iterable (e.g. fs.createReadStream) is streamed, never gathered.
   */
  write(path: string, data: UploadData, opts: { mode?: number } = {}): Promise<FileStatInfo> {
    return this.api.writeFile(this.sandboxId, path, data, opts);
  }

  /** Type, size, mode, mtime; a link is reported as a link. */
  stat(path: string): Promise<FileStatInfo> {
    return this.api.statPath(this.sandboxId, path);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.api.statPath(this.sandboxId, path);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && !/^sandbox /.test(e.message)) return false;
      throw e;
    }
  }

  /** Creates a directory with its missing parents (like mkdir -p, unless `parents: false`). */
  makeDir(path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<FileStatInfo> {
    return this.api.makeDir(this.sandboxId, path, { parents: opts.parents ?? true, ...(opts.mode !== undefined ? { mode: opts.mode } : {}) });
  }

  /** Renames or moves; fails (409) when `to` exists unless `overwrite`. Links are moved, not followed. */
  rename(from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<FileStatInfo> {
    return this.api.renamePath(this.sandboxId, from, to, opts);
  }

  /**
   * Calls `onEvent` for changes under the directory `path` (with `recursive`, everything below
   * it too) until the returned function is called. Resolves once the watch is in place.
   */
  async watch(
    path: string, onEvent: (e: FileWatchEvent) => void,
    opts: { recursive?: boolean; onEnd?: (reason: FileWatchEnd) => void } = {},
  ): Promise<() => void> {
    const ctl = new AbortController();
    const { done } = await this.api.watchDir(this.sandboxId, path, { recursive: opts.recursive ?? false }, { onEvent, signal: ctl.signal });
    void done.then((reason) => opts.onEnd?.(reason));
    return () => ctl.abort();
  }

  /** The sandbox's outputs (its outputPath, default /work/out): a list with SHA-256 sums, or a tar stream. */
  outputs(opts?: { format?: 'list' }): Promise<OutputsListing>;
  outputs(opts: { format: 'tar' }): Promise<ReadableStream<Uint8Array>>;
  outputs(opts: { format?: 'list' | 'tar' } = {}): Promise<OutputsListing | ReadableStream<Uint8Array>> {
    return opts.format === 'tar' ? this.api.outputsTar(this.sandboxId) : this.api.outputsList(this.sandboxId);
  }

  list(path: string): Promise<FileEntry[]> {
    return this.api.listDir(this.sandboxId, path);
  }

  /** Removes a file, a link or (like E2B) a whole directory; `recursive: false` refuses non-empty ones. */
  remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    return this.api.deletePath(this.sandboxId, path, { recursive: opts.recursive ?? true });
  }
}

export class Sandbox {
  readonly sandboxId: string;
  readonly commands: Commands;
  readonly files: Files;
  /** Interactive terminals: `await sbx.pty.create({ cols, rows, onData })` (Node: uses `ws`). */
  readonly pty: Pty;

  private constructor(readonly api: ApiClient, info: SandboxInfo) {
    this.sandboxId = info.id;
    this.commands = new Commands(api, info.id);
    this.files = new Files(api, info.id);
    this.pty = new Pty(api, info.id);
  }

  static async create(opts: SandboxCreateOptions = {}): Promise<Sandbox> {
    const api = new ApiClient(opts);
    const body: CreateSandboxBody = {};
    if (opts.template !== undefined) body.template = opts.template;
    if (opts.runtime !== undefined) body.runtime = opts.runtime;
    if (opts.timeoutMs !== undefined) body.timeoutSeconds = msToSeconds(opts.timeoutMs);
    if (opts.network !== undefined) body.network = opts.network;
    if (opts.resources !== undefined) body.resources = opts.resources;
    if (opts.env !== undefined) body.env = opts.env;
    if (opts.metadata !== undefined) body.metadata = opts.metadata;
    if (opts.mounts !== undefined) body.mounts = opts.mounts;
    if (opts.volumes !== undefined) body.volumes = opts.volumes;
    if (opts.workdir !== undefined) body.workdir = opts.workdir;
    if (opts.outputPath !== undefined) body.outputPath = opts.outputPath;
    if (opts.secrets !== undefined) body.secrets = opts.secrets;
    return new Sandbox(api, await api.createSandbox(body));
  }

  static async connect(sandboxId: string, opts: ClientOptions = {}): Promise<Sandbox> {
    const api = new ApiClient(opts);
    return new Sandbox(api, await api.getSandbox(sandboxId));
  }

  static list(opts: ClientOptions & { state?: string; metadata?: Record<string, string> } = {}): Promise<SandboxInfo[]> {
    const { state, metadata, ...clientOpts } = opts;
    return new ApiClient(clientOpts).listSandboxes({ state, metadata });
  }

  /** Kills a sandbox by id; false when it had already ended or does not exist. */
  static async kill(sandboxId: string, opts: ClientOptions = {}): Promise<boolean> {
    try {
      await new ApiClient(opts).killSandbox(sandboxId);
      return true;
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 409)) return false;
      throw e;
    }
  }

  /** Sets the remaining lifetime to `timeoutMs` from now (rounded up to whole seconds). */
  async setTimeout(timeoutMs: number): Promise<void> {
    await this.api.setTimeout(this.sandboxId, msToSeconds(timeoutMs));
  }

  /**
   * Changes what the sandbox may reach, live: `{ allow: ['pypi.org'] }` grants, `{ deny: [...] }`
   * revokes (deny wins; open connections to a denied host are cut), `{ allow: [] }` takes the
   * network away. Returns how many connections were cut.
   */
  async updateNetwork(policy: Partial<NetworkPolicy>): Promise<{ cut: number }> {
    const r = await this.api.updateNetwork(this.sandboxId, policy);
    return { cut: r.cut };
  }

  async kill(): Promise<void> {
    await this.api.killSandbox(this.sandboxId);
  }

  /**
   * Freezes every process of the sandbox: it uses no CPU while its memory, files and network
   * stay; commands and file calls fail (409) until resume(). The lifetime keeps counting.
   */
  async pause(): Promise<void> {
    await this.api.pauseSandbox(this.sandboxId);
  }

  /** Thaws a paused sandbox. */
  async resume(): Promise<void> {
    await this.api.resumeSandbox(this.sandboxId);
  }

  getInfo(): Promise<SandboxInfo> {
    return this.api.getSandbox(this.sandboxId);
  }

  async isRunning(): Promise<boolean> {
    return (await this.getInfo()).state === 'running';
  }
}

function msToSeconds(ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0) throw new ApiError(400, 'bad_request', 'timeoutMs must be a positive number', 'timeoutMs');
  return Math.ceil(ms / 1000);
}
