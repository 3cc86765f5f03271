import { ApiError, errorFromResponse } from './errors.js';
import { NdjsonParser } from './ndjson.js';
import { SseParser } from './sse.js';
import type { CreateVolumeBody, VolumeInfo } from './volume-types.js';
import type { SecretInfo, SetSecretBody } from './secret-types.js';
import type { ApprovalInfo, ApprovalState } from './approval-types.js';
import type { HistoryEntry } from './record-types.js';
import type { UsageQuery, UsageReport } from './usage-types.js';
import type {
  ApiKeyInfo, CreatedApiKey, CreateKeyBody, PolicyDocument, PolicyTestBody, PolicyTestResult, PolicyVersionInfo, TenantInfo,
} from './tenant-types.js';
import { uploadBody } from './file-streams.js';
import type { FileWatchEnd, FileWatchEvent, OutputsListing, UploadData } from './file-types.js';
import type {
  NetworkPolicy,
  AuditEvent, CreateSandboxBody, ExecBody, ExecExit, ExecResult, ExecStreamLine, FileEntry, FileStatInfo,
  ProcessInfo, SandboxInfo, TemplateBuildBody, TemplateInfo,
} from './types.js';

export interface ClientOptions {
  /** Default: $AIRLOCK_URL, else http://127.0.0.1:7070. */
  url?: string;
  /** Default: $AIRLOCK_API_KEY. */
  apiKey?: string;
  /**
   * Bound on each call except commands (their own timeout bounds them) and followed event
   * streams. Default 60 000 ms.
   */
  requestTimeoutMs?: number;
  /**
   * Extra time allowed to a create, POST …/timeout and PATCH …/network, which wait while a
   * policy asks a person for approval (docs/approvals.md). Default 900 000 ms.
   */
  approvalWaitMs?: number;
}

export interface ExecStreamHandlers {
  onStdout?(data: string): void;
  onStderr?(data: string): void;
  /** Aborting closes the connection, which kills the command. */
  signal?: AbortSignal;
}

const DEFAULT_URL = 'http://127.0.0.1:7070';
const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
const DEFAULT_APPROVAL_WAIT_MS = 900_000;

interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  json?: unknown;
  bytes?: Uint8Array;
  /** A streamed request body (application/octet-stream). */
  stream?: ReadableStream<Uint8Array>;
  accept?: string;
  /** null: no timeout. */
  timeoutMs?: number | null;
  signal?: AbortSignal;
}

function env(name: string): string | undefined {
  // `process` is absent in browsers and some edge runtimes; the SDK must still load there.
  const p = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return p?.env?.[name];
}

const enc = (s: string) => encodeURIComponent(s);

/** Low level: one method per REST call (docs/rest-api.md). Throws ApiError on any failure. */
export class ApiClient {
  readonly url: string;
  private readonly apiKey: string | undefined;
  private readonly requestTimeoutMs: number;
  /** Bound on calls that may wait for an approval. */
  private readonly approvalTimeoutMs: number;

  constructor(opts: ClientOptions = {}) {
    this.url = (opts.url ?? env('AIRLOCK_URL') ?? DEFAULT_URL).replace(/\/+$/, '');
    this.apiKey = opts.apiKey ?? env('AIRLOCK_API_KEY');
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.approvalTimeoutMs = this.requestTimeoutMs + (opts.approvalWaitMs ?? DEFAULT_APPROVAL_WAIT_MS);
  }

  /** The headers every request carries (the bearer key), for connections made outside fetch (WebSocket). */
  authHeaders(): Record<string, string> {
    return this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {};
  }

  // ---- sandboxes ----

  createSandbox(body: CreateSandboxBody): Promise<SandboxInfo> {
    return this.json('POST', '/v1/sandboxes', { json: body, timeoutMs: this.approvalTimeoutMs });
  }

  getSandbox(id: string): Promise<SandboxInfo> {
    return this.json('GET', `/v1/sandboxes/${enc(id)}`);
  }

  async listSandboxes(q: { state?: string; metadata?: Record<string, string> } = {}): Promise<SandboxInfo[]> {
    const query: Record<string, string> = {};
    if (q.state) query.state = q.state;
    for (const [k, v] of Object.entries(q.metadata ?? {})) query[`metadata.${k}`] = v;
    const r = await this.json<{ sandboxes: SandboxInfo[] }>('GET', '/v1/sandboxes', { query });
    return r.sandboxes;
  }

  killSandbox(id: string): Promise<SandboxInfo> {
    return this.json('DELETE', `/v1/sandboxes/${enc(id)}`);
  }

  /** Freezes the sandbox (no CPU; memory, files, network kept); idempotent. */
  pauseSandbox(id: string): Promise<SandboxInfo> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/pause`);
  }

  /** Thaws a paused sandbox; idempotent. */
  resumeSandbox(id: string): Promise<SandboxInfo> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/resume`);
  }

  setTimeout(id: string, timeoutSeconds: number): Promise<SandboxInfo> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/timeout`, { json: { timeoutSeconds }, timeoutMs: this.approvalTimeoutMs });
  }

  /** Changes the egress policy live; fields left out keep their value. `cut`: connections closed. */
  updateNetwork(id: string, policy: Partial<NetworkPolicy>): Promise<SandboxInfo & { cut: number }> {
    return this.json('PATCH', `/v1/sandboxes/${enc(id)}/network`, { json: policy, timeoutMs: this.approvalTimeoutMs });
  }

  // ---- commands ----

  /**
   * Runs to completion and returns the captured output. Long silent commands are better run
   * with execStream: fetch gives up on a response whose headers take over 300 s.
   */
  exec(id: string, body: ExecBody): Promise<ExecResult> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/exec`, { json: { ...body, background: false }, timeoutMs: null });
  }

  /** Streams output to the handlers as it is produced; resolves with how the command ended. */
  async execStream(id: string, body: ExecBody, h: ExecStreamHandlers = {}): Promise<ExecExit> {
    const res = await this.send('POST', `/v1/sandboxes/${enc(id)}/exec`, {
      json: { ...body, background: false }, accept: 'application/x-ndjson', timeoutMs: null, signal: h.signal,
    });
    const parser = new NdjsonParser();
    let exit: ExecExit | null = null;
    const handle = (values: unknown[]) => {
      for (const v of values) {
        const line = v as ExecStreamLine;
        if (line.type === 'stdout') h.onStdout?.(line.data);
        else if (line.type === 'stderr') h.onStderr?.(line.data);
        else if (line.type === 'exit') {
          exit = { exitCode: line.exitCode, reason: line.reason, durationMs: line.durationMs };
          if (line.truncated) exit.truncated = true;
        } else if (line.type === 'error') {
          throw new ApiError(res.status, line.error.code, line.error.message);
        }
        // Unknown line types are from a newer server: skip them.
      }
    };
    await this.eachChunk(res, (chunk) => handle(parser.push(chunk)));
    handle(parser.end());
    if (!exit) throw new ApiError(0, 'bad_response', 'the exec stream ended without an exit line');
    return exit;
  }

  execBackground(id: string, body: ExecBody): Promise<{ pid: number; execId: string }> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/exec`, { json: { ...body, background: true } });
  }

  async listProcesses(id: string): Promise<ProcessInfo[]> {
    const r = await this.json<{ processes: ProcessInfo[] }>('GET', `/v1/sandboxes/${enc(id)}/processes`);
    return r.processes;
  }

  async killProcess(id: string, pid: number, signal?: string | number): Promise<void> {
    const query = signal === undefined ? {} : { signal: String(signal) };
    await this.send('DELETE', `/v1/sandboxes/${enc(id)}/processes/${enc(String(pid))}`, { query });
  }

  /** Stores the process tree now as a process.snapshot event. */
  async snapshotProcesses(id: string): Promise<{ seq: number; processes: ProcessInfo[] }> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/snapshots/processes`);
  }

  // ---- records (docs/records.md) ----

  /** The sandbox's timeline, oldest first. */
  async history(id: string): Promise<HistoryEntry[]> {
    const r = await this.json<{ entries: HistoryEntry[] }>('GET', `/v1/sandboxes/${enc(id)}/history`);
    return r.entries;
  }

  /** A recorded output blob by SHA-256. */
  async readBlob(sha256: string): Promise<Uint8Array> {
    const res = await this.send('GET', `/v1/blobs/${enc(sha256)}`, { accept: 'application/octet-stream' });
    return new Uint8Array(await this.readBody(res));
  }

  // ---- files ----

  async readFile(id: string, path: string): Promise<Uint8Array> {
    const res = await this.send('GET', `/v1/sandboxes/${enc(id)}/files`, { query: { path }, accept: 'application/octet-stream' });
    if (isJson(res)) {
      await res.body?.cancel();
      throw new ApiError(400, 'bad_request', `${path} is a directory`, 'path');
    }
    return new Uint8Array(await this.readBody(res));
  }

  /**
   * Streams a file out of the sandbox: the body arrives as the client reads it. No overall
   * time limit applies (transfers of any size); cancel the stream or abort `signal` to stop.
   */
  async readFileStream(id: string, path: string, opts: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    const res = await this.send('GET', `/v1/sandboxes/${enc(id)}/files`, {
      query: { path }, accept: 'application/octet-stream', timeoutMs: null, signal: opts.signal,
    });
    if (isJson(res)) {
      await res.body?.cancel();
      throw new ApiError(400, 'bad_request', `${path} is a directory`, 'path');
    }
    if (!res.body) throw new ApiError(0, 'bad_response', 'the answer has no body');
    return res.body;
  }

  /**
   * Creates or replaces a file. Streams (a ReadableStream or any async iterable of bytes,
   * e.g. Node's fs.createReadStream) are sent as they are read, with no overall time limit.
   */
  writeFile(id: string, path: string, data: UploadData, opts: { mode?: number; signal?: AbortSignal } = {}): Promise<FileStatInfo> {
    const body = uploadBody(data);
    const query: Record<string, string> = { path };
    if (opts.mode !== undefined) query.mode = opts.mode.toString(8).padStart(4, '0');
    const streamed = body instanceof Uint8Array ? { bytes: body } : { stream: body, timeoutMs: null };
    return this.json('PUT', `/v1/sandboxes/${enc(id)}/files`, { query, ...streamed, signal: opts.signal });
  }

  statPath(id: string, path: string): Promise<FileStatInfo> {
    return this.json('GET', `/v1/sandboxes/${enc(id)}/files/stat`, { query: { path } });
  }

  makeDir(id: string, path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<FileStatInfo> {
    const query: Record<string, string> = { path };
    if (opts.parents) query.parents = '1';
    if (opts.mode !== undefined) query.mode = opts.mode.toString(8).padStart(4, '0');
    return this.json('POST', `/v1/sandboxes/${enc(id)}/files/mkdir`, { query });
  }

  renamePath(id: string, from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<FileStatInfo> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/files/rename`, { json: { from, to, overwrite: opts.overwrite ?? false } });
  }

  /**
   * Watches a directory (SSE). Resolves once the watch is in place, with `done`, which
   * settles with why it ended: abort `signal` to stop it ('stopped').
   */
  async watchDir(
    id: string, path: string, opts: { recursive?: boolean },
    h: { onEvent(e: FileWatchEvent): void; signal?: AbortSignal },
  ): Promise<{ done: Promise<FileWatchEnd> }> {
    const query: Record<string, string> = { path };
    if (opts.recursive) query.recursive = '1';
    const res = await this.send('GET', `/v1/sandboxes/${enc(id)}/files/watch`, {
      query, accept: 'text/event-stream', timeoutMs: null, signal: h.signal,
    });
    const parser = new SseParser();
    let resolveReady!: () => void;
    const ready = new Promise<void>((r) => { resolveReady = r; });
    let ended: FileWatchEnd = 'disconnected';
    const done = this.eachChunk(res, (chunk) => {
      for (const m of parser.push(chunk)) {
        if (m.event === 'ready') resolveReady();
        else if (m.event === 'end') ended = (JSON.parse(m.data) as { reason: FileWatchEnd }).reason;
        else if (m.event) h.onEvent(JSON.parse(m.data) as FileWatchEvent);
      }
    }).then(() => ended, () => (h.signal?.aborted ? 'stopped' as const : ended));
    // The server sends `ready` at once; a stream that ends first still settles the wait.
    await Promise.race([ready, done]);
    return { done };
  }

  /** The sandbox's outputs as a tar stream (links recorded, never followed). */
  async outputsTar(id: string, opts: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    const res = await this.send('GET', `/v1/sandboxes/${enc(id)}/outputs`, {
      query: { format: 'tar' }, accept: 'application/x-tar', timeoutMs: null, signal: opts.signal,
    });
    if (!res.body) throw new ApiError(0, 'bad_response', 'the answer has no body');
    return res.body;
  }

  /** The sandbox's outputs with sizes, modes and SHA-256 sums. */
  outputsList(id: string): Promise<OutputsListing> {
    return this.json('GET', `/v1/sandboxes/${enc(id)}/outputs`, { query: { format: 'list' }, timeoutMs: null });
  }

  async listDir(id: string, path: string): Promise<FileEntry[]> {
    const res = await this.send('GET', `/v1/sandboxes/${enc(id)}/files`, { query: { path }, accept: 'application/json' });
    if (!isJson(res)) {
      await res.body?.cancel();
      throw new ApiError(400, 'bad_request', `${path} is not a directory`, 'path');
    }
    const r = JSON.parse(new TextDecoder().decode(await this.readBody(res))) as { entries: FileEntry[] };
    return r.entries;
  }

  async deletePath(id: string, path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await this.send('DELETE', `/v1/sandboxes/${enc(id)}/files`, { query: { path, recursive: opts.recursive ? '1' : undefined } });
  }

  // ---- the rest ----

  // ---- secrets (values go in, never come back) ----

  /** Creates or replaces a secret of the key's tenant (`tenant`: admin keys only). */
  setSecret(name: string, body: SetSecretBody, opts: { tenant?: string } = {}): Promise<SecretInfo> {
    return this.json('PUT', `/v1/secrets/${enc(name)}`, { json: body, query: { tenant: opts.tenant } });
  }

  async listSecrets(opts: { tenant?: string } = {}): Promise<SecretInfo[]> {
    const r = await this.json<{ secrets: SecretInfo[] }>('GET', '/v1/secrets', { query: { tenant: opts.tenant } });
    return r.secrets;
  }

  async deleteSecret(name: string, opts: { tenant?: string } = {}): Promise<void> {
    await this.send('DELETE', `/v1/secrets/${enc(name)}`, { query: { tenant: opts.tenant } });
  }

  // ---- volumes ----

  createVolume(body: CreateVolumeBody): Promise<VolumeInfo> {
    return this.json('POST', '/v1/volumes', { json: body });
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const r = await this.json<{ volumes: VolumeInfo[] }>('GET', '/v1/volumes');
    return r.volumes;
  }

  getVolume(name: string): Promise<VolumeInfo> {
    return this.json('GET', `/v1/volumes/${enc(name)}`);
  }

  /** 409 while a live sandbox has it attached. */
  async deleteVolume(name: string): Promise<void> {
    await this.send('DELETE', `/v1/volumes/${enc(name)}`);
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    const r = await this.json<{ templates: TemplateInfo[] }>('GET', '/v1/templates');
    return r.templates;
  }

  /** Builds a template (admin key); progress lines reach `onLog` as the build goes. */
  async buildTemplate(name: string, body: TemplateBuildBody, h: { onLog?(line: string): void; signal?: AbortSignal } = {}): Promise<TemplateInfo> {
    const res = await this.send('POST', `/v1/templates/${enc(name)}/build`, {
      json: body, accept: 'application/x-ndjson', timeoutMs: null, signal: h.signal,
    });
    if (isJson(res)) return JSON.parse(new TextDecoder().decode(await this.readBody(res))) as TemplateInfo;
    const parser = new NdjsonParser();
    let done: TemplateInfo | null = null;
    const handle = (values: unknown[]) => {
      for (const v of values) {
        const line = v as { type: string; line?: string; template?: TemplateInfo; error?: { code: string; message: string } };
        if (line.type === 'log' && typeof line.line === 'string') h.onLog?.(line.line);
        else if (line.type === 'done' && line.template) done = line.template;
        else if (line.type === 'error' && line.error) throw new ApiError(res.status, line.error.code, line.error.message);
      }
    };
    await this.eachChunk(res, (chunk) => handle(parser.push(chunk)));
    handle(parser.end());
    if (!done) throw new ApiError(0, 'bad_response', 'the build stream ended without a result');
    return done;
  }

  /**
   * Imports an OCI image layout or `docker save` tarball (admin key). The body is streamed as
   * given: bytes, a Blob, or a ReadableStream (e.g. Node's Readable.toWeb(createReadStream(p))).
   */
  async importTemplate(name: string, tarball: Uint8Array | Blob | ReadableStream<Uint8Array>, opts: { signal?: AbortSignal; relativizeLinks?: boolean } = {}): Promise<TemplateInfo> {
    const headers: Record<string, string> = { 'content-type': 'application/x-tar', accept: 'application/json' };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    let res: Response;
    try {
      // duplex: required by fetch for a streamed request body; redirect 'error': otherwise fetch
      // keeps every chunk sent (to replay it on a redirect), so a big image would sit in memory.
      res = await fetch(`${this.url}/v1/templates/${enc(name)}/import${opts.relativizeLinks ? '?relativizeLinks=1' : ''}`, {
        method: 'POST', headers, body: tarball as BodyInit, signal: opts.signal, duplex: 'half', redirect: 'error',
      } as RequestInit & { duplex: 'half' });
    } catch (e) {
      throw wrapTransportError(e, this.url);
    }
    const text = new TextDecoder().decode(await this.readBody(res));
    if (!res.ok) throw errorFromResponse(res.status, text);
    return JSON.parse(text) as TemplateInfo;
  }

  /** Removes a template (admin key); 409 while sandboxes use it. */
  async removeTemplate(name: string): Promise<void> {
    await this.send('DELETE', `/v1/templates/${enc(name)}`);
  }

  async listEvents(q: { sandbox?: string; type?: string; after?: number; limit?: number } = {}): Promise<AuditEvent[]> {
    const r = await this.json<{ events: AuditEvent[] }>('GET', '/v1/events', { query: { ...q } });
    return r.events;
  }

  /**
   * Follows events live (SSE): those after `after` first when given, then new ones, until
   * `signal` aborts (resolves) or the server ends the stream (resolves with the last seq seen,
   * which a caller passes back as `after` to resume).
   */
  async followEvents(
    q: { sandbox?: string; type?: string; after?: number },
    h: { onEvent(e: AuditEvent): void; signal?: AbortSignal },
  ): Promise<number | undefined> {
    let last = q.after;
    let res: Response;
    try {
      res = await this.send('GET', '/v1/events', { query: { ...q, follow: '1' }, accept: 'text/event-stream', timeoutMs: null, signal: h.signal });
    } catch (e) {
      if (h.signal?.aborted) return last;
      throw e;
    }
    const parser = new SseParser();
    try {
      await this.eachChunk(res, (chunk) => {
        for (const m of parser.push(chunk)) {
          const e = JSON.parse(m.data) as AuditEvent;
          last = e.seq;
          h.onEvent(e);
        }
      });
    } catch (e) {
      if (h.signal?.aborted) return last;
      throw e;
    }
    return last;
  }

  // ---- tenants, keys, policies (admin keys; a tenant may read and test its own policy) ----

  createTenant(name: string): Promise<TenantInfo> {
    return this.json('POST', '/v1/tenants', { json: { name } });
  }

  /** Metered usage and cost; a tenant key sees its own tenant, an admin key any. */
  async usage(q: UsageQuery = {}): Promise<UsageReport> {
    return this.json<UsageReport>('GET', '/v1/usage', { query: { ...q } });
  }

  async listTenants(): Promise<TenantInfo[]> {
    return (await this.json<{ tenants: TenantInfo[] }>('GET', '/v1/tenants')).tenants;
  }

  /** 409 while it has live sandboxes or volumes; revokes its keys. */
  async deleteTenant(name: string): Promise<void> {
    await this.send('DELETE', `/v1/tenants/${enc(name)}`);
  }

  /** The answer's `key` is shown this once. */
  createKey(body: CreateKeyBody): Promise<CreatedApiKey> {
    return this.json('POST', '/v1/keys', { json: body });
  }

  async listKeys(q: { tenant?: string } = {}): Promise<ApiKeyInfo[]> {
    return (await this.json<{ keys: ApiKeyInfo[] }>('GET', '/v1/keys', { query: { ...q } })).keys;
  }

  async revokeKey(id: string): Promise<void> {
    await this.send('DELETE', `/v1/keys/${enc(id)}`);
  }

  /** `tenant` = `default` for the server default; the latest version unless `version`. */
  getPolicy(tenant: string, version?: number): Promise<PolicyVersionInfo> {
    return this.json('GET', `/v1/policies/${enc(tenant)}`, { query: { version } });
  }

  /** Stores `document` as the tenant's next policy version. */
  setPolicy(tenant: string, document: PolicyDocument): Promise<PolicyVersionInfo> {
    return this.json('PUT', `/v1/policies/${enc(tenant)}`, { json: document });
  }

  /** Judges a sandbox spec against a policy: every rule with its verdict. */
  testPolicy(body: PolicyTestBody): Promise<PolicyTestResult> {
    return this.json('POST', '/v1/policies/test', { json: body });
  }

  // ---- approvals (docs/approvals.md): admin keys approve; tenant keys list and deny their own ----

  /** Newest first. */
  async listApprovals(q: { state?: ApprovalState; sandbox?: string; tenant?: string; limit?: number } = {}): Promise<ApprovalInfo[]> {
    return (await this.json<{ approvals: ApprovalInfo[] }>('GET', '/v1/approvals', { query: { ...q } })).approvals;
  }

  getApproval(id: string): Promise<ApprovalInfo> {
    return this.json('GET', `/v1/approvals/${enc(id)}`);
  }

  /** The waiting action resumes; 409 when already decided or expired. */
  approveApproval(id: string, opts: { reason?: string } = {}): Promise<ApprovalInfo> {
    return this.json('POST', `/v1/approvals/${enc(id)}/approve`, { json: opts });
  }

  /** The waiting action is refused (422 approval_denied); 409 when already decided or expired. */
  denyApproval(id: string, opts: { reason?: string } = {}): Promise<ApprovalInfo> {
    return this.json('POST', `/v1/approvals/${enc(id)}/deny`, { json: opts });
  }

  health(): Promise<{ ok: boolean; version: string }> {
    return this.json('GET', '/healthz');
  }

  // ---- plumbing ----

  /**
   * Feeds each body chunk to `fn`. Transport failures become ApiErrors; whatever `fn` throws
   * (a handler's own error, an error line) propagates as is, and the connection is closed.
   */
  private async eachChunk(res: Response, fn: (chunk: Uint8Array) => void): Promise<void> {
    if (!res.body) throw new ApiError(0, 'bad_response', 'the answer has no body');
    const reader = res.body.getReader();
    let done = false;
    try {
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } catch (e) {
          throw wrapTransportError(e, this.url);
        }
        if (r.done) { done = true; return; }
        fn(r.value);
      }
    } finally {
      if (!done) await reader.cancel().catch(() => {});
    }
  }

  private async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.send(method, path, { accept: 'application/json', ...opts });
    const text = new TextDecoder().decode(await this.readBody(res));
    try {
      return JSON.parse(text) as T;
    } catch (cause) {
      throw new ApiError(0, 'bad_response', `${method} ${path}: the answer is not JSON`, undefined, { cause });
    }
  }

  private async readBody(res: Response): Promise<ArrayBuffer> {
    try {
      return await res.arrayBuffer();
    } catch (e) {
      throw wrapTransportError(e, this.url);
    }
  }

  /** Sends one request; returns the response when 2xx, throws ApiError otherwise. */
  private async send(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.url + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = {};
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    if (opts.accept) headers.accept = opts.accept;
    let body: string | Uint8Array | undefined;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.bytes !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = opts.bytes;
    } else if (opts.stream !== undefined) {
      headers['content-type'] = 'application/octet-stream';
    }
    const timeoutMs = opts.timeoutMs === undefined ? this.requestTimeoutMs : opts.timeoutMs;
    const signals = [opts.signal, timeoutMs === null ? undefined : AbortSignal.timeout(timeoutMs)].filter(
      (s): s is AbortSignal => s !== undefined,
    );
    const signal = signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);

    let res: Response;
    try {
      res = opts.stream !== undefined
        // duplex: what fetch requires of a streamed request body. redirect 'error': a fetch that
        // may follow a redirect keeps every chunk sent to replay it (Node's undici does), so a
        // 1 GiB upload would cost 1 GiB of memory; an API never redirects a PUT anyway.
        ? await fetch(url, { method, headers, body: opts.stream, signal, duplex: 'half', redirect: 'error' } as RequestInit & { duplex: 'half' })
        : await fetch(url, { method, headers, body: body as BodyInit | undefined, signal });
    } catch (e) {
      throw wrapTransportError(e, this.url);
    }
    if (res.ok) return res;
    const text = await res.text().catch(() => '');
    throw errorFromResponse(res.status, text);
  }
}

function isJson(res: Response): boolean {
  return (res.headers.get('content-type') ?? '').toLowerCase().startsWith('application/json');
}

/** fetch's own failures (refused, reset, timed out) as ApiErrors; a caller's abort stays an abort. */
function wrapTransportError(e: unknown, url: string): unknown {
  if (e instanceof ApiError) return e;
  const name = (e as { name?: string } | null)?.name;
  if (name === 'TimeoutError') return new ApiError(0, 'timeout', `no answer from ${url} in time`, undefined, { cause: e });
  if (name === 'AbortError') return e;
  const detail = (e as { cause?: { code?: string; message?: string } } | null)?.cause;
  const why = detail?.code ?? detail?.message ?? (e instanceof Error ? e.message : String(e));
  return new ApiError(0, 'unreachable', `cannot reach Airlock at ${url}: ${why}`, undefined, { cause: e });
}
