/** Backend over airlockd's REST API (AIRLOCK_URL, or the local default daemon). */
import { ApiClient, openPty } from '@airlock/sdk';
import { ApiFileTransfer } from './file-transfer.js';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Backend, PtyConnection, PtyRequest, StreamHandlers, StreamExit, TemplateBuildRequest, VolumeInfo } from './backend.js';
import type {
  ExecRequest, ExecResult, FileEntry, ProcessInfo, SandboxInfo, SandboxSpecInput, SandboxState, TemplateInfo,
} from './backend.js';

export class RemoteBackend implements Backend {
  readonly description: string;
  private readonly client: ApiClient;

  constructor(url: string, apiKey: string | undefined) {
    this.description = url;
    this.client = new ApiClient({ url, apiKey });
    this.files = new ApiFileTransfer(this.client);
  }

  readonly files: ApiFileTransfer;

  createSandbox(input: SandboxSpecInput): Promise<SandboxInfo> {
    return this.client.createSandbox(input);
  }

  getSandbox(id: string): Promise<SandboxInfo> {
    return this.client.getSandbox(id);
  }

  listSandboxes(filter?: { state?: SandboxState; metadata?: Record<string, string> }): Promise<SandboxInfo[]> {
    return this.client.listSandboxes(filter ?? {});
  }

  updateNetwork(id: string, policy: { allow?: string[]; deny?: string[]; bandwidthMbps?: number }): Promise<SandboxInfo & { cut: number }> {
    return this.client.updateNetwork(id, policy) as Promise<SandboxInfo & { cut: number }>;
  }

  killSandbox(id: string): Promise<SandboxInfo> {
    return this.client.killSandbox(id);
  }

  pauseSandbox(id: string): Promise<SandboxInfo> {
    return this.client.pauseSandbox(id);
  }

  resumeSandbox(id: string): Promise<SandboxInfo> {
    return this.client.resumeSandbox(id);
  }

  exec(id: string, req: ExecRequest): Promise<ExecResult> {
    return this.client.exec(id, toBody(req));
  }

  async execStream(id: string, req: ExecRequest, handlers: StreamHandlers): Promise<StreamExit> {
    const r = await this.client.execStream(id, toBody(req), {
      onStdout: (s: string) => handlers.onStdout(s),
      onStderr: (s: string) => handlers.onStderr(s),
      signal: handlers.signal,
    });
    return { exitCode: r.exitCode, reason: r.reason, durationMs: r.durationMs };
  }

  execBackground(id: string, req: ExecRequest): Promise<{ pid: number; execId: string }> {
    return this.client.execBackground(id, toBody(req));
  }

  listProcesses(id: string): Promise<ProcessInfo[]> {
    return this.client.listProcesses(id);
  }

  snapshotProcesses(id: string): Promise<{ seq: number; processes: ProcessInfo[] }> {
    return this.client.snapshotProcesses(id);
  }

  sandboxHistory(id: string): Promise<import('@airlock/engine').HistoryEntry[]> {
    return this.client.history(id);
  }

  readBlob(sha256: string): Promise<Uint8Array> {
    return this.client.readBlob(sha256);
  }

  async openPty(id: string, req: PtyRequest): Promise<PtyConnection> {
    // Output can arrive with the start message, before onData: it waits here (a few frames at most).
    const early: Buffer[] = [];
    let listener: (chunk: Buffer) => void = (chunk) => { early.push(chunk); };
    const h = await openPty(this.client, id, {
      cols: req.cols, rows: req.rows, onData: (d) => listener(Buffer.from(d.buffer, d.byteOffset, d.byteLength)),
      ...(req.cmd ? { cmd: req.cmd } : {}), ...(req.cwd ? { cwd: req.cwd } : {}), ...(req.env ? { envs: req.env } : {}),
    });
    return {
      pid: h.pid,
      write: (data) => { h.sendInput(data).catch(() => undefined); },
      resize: (cols, rows) => { h.resize({ cols, rows }).catch(() => undefined); },
      signal: (signo) => { h.kill(signo).catch(() => undefined); },
      onData: (l) => {
        listener = l;
        for (const chunk of early.splice(0)) l(chunk);
      },
      pause: () => h.pause(),
      resume: () => h.resume(),
      exited: h.wait(),
      close: () => h.disconnect(),
    };
  }

  killProcess(id: string, pid: number, signal: number): Promise<void> {
    return this.client.killProcess(id, pid, signal);
  }

  readFile(id: string, path: string): Promise<Uint8Array> {
    return this.client.readFile(id, path);
  }

  async writeFile(id: string, path: string, data: Uint8Array, opts?: { mode?: number }): Promise<void> {
    await this.client.writeFile(id, path, data, opts);
  }

  listDir(id: string, path: string): Promise<FileEntry[]> {
    return this.client.listDir(id, path);
  }

  createVolume(input: { name: string; sizeMiB: number }): Promise<VolumeInfo> {
    return this.client.createVolume(input);
  }

  listVolumes(): Promise<VolumeInfo[]> {
    return this.client.listVolumes();
  }

  getVolume(name: string): Promise<VolumeInfo> {
    return this.client.getVolume(name);
  }

  deleteVolume(name: string): Promise<void> {
    return this.client.deleteVolume(name);
  }

  listTemplates(): Promise<TemplateInfo[]> {
    return this.client.listTemplates();
  }

  async buildTemplate(name: string, req: TemplateBuildRequest): Promise<TemplateInfo> {
    // The daemon cannot read this machine's files: the recipe travels as text (so it may not copy files).
    const body = req.file !== undefined ? { recipe: await readFile(req.file, 'utf8') } : { builtin: true as const };
    return this.client.buildTemplate(name, { ...body, ...(req.force ? { force: true } : {}) }, { onLog: (l) => req.onLog(l) });
  }

  async importTemplate(name: string, tarball: string, opts: { relativizeLinks?: boolean } = {}): Promise<TemplateInfo> {
    await stat(tarball); // a missing file is this machine's error, before any request
    const body = Readable.toWeb(createReadStream(tarball)) as unknown as ReadableStream<Uint8Array>;
    return this.client.importTemplate(name, body, { relativizeLinks: opts.relativizeLinks ?? false });
  }

  removeTemplate(name: string): Promise<void> {
    return this.client.removeTemplate(name);
  }

  async close(): Promise<void> {
    // Nothing held open: each request is its own connection.
  }
}

/** The REST body carries stdin as text; bytes that are not UTF-8 cannot cross it. */
function toBody(req: ExecRequest): ExecRequest & { stdin?: string } {
  const { stdin, ...rest } = req;
  if (stdin === undefined) return rest;
  return { ...rest, stdin: typeof stdin === 'string' ? stdin : Buffer.from(stdin).toString('utf8') };
}
