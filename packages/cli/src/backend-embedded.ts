/** Backend over the engine in this process: no daemon needed. */
import { Engine } from '@airlock/engine';
import type { AirlockEngine, Caller } from '@airlock/engine';
import { EngineFileTransfer } from './file-transfer.js';
import type { Backend, PtyConnection, PtyRequest, StreamHandlers, StreamExit, TemplateBuildRequest, VolumeInfo } from './backend.js';
import type { EngineOptions } from '@airlock/engine';
import type {
  ExecRequest, ExecResult, FileEntry, ProcessInfo, SandboxInfo, SandboxSpecInput, SandboxState, TemplateInfo,
} from './backend.js';

/** The operator at the keyboard owns the data dir: the admin view, every tenant. */
const ADMIN: Caller = { tenant: null };

/**
 * The engine's own options (serve's policy, network and storage flags pass straight through), with
 * the data dir required.
 */
export type EmbeddedOptions = EngineOptions & { dataDir: string };

export async function openEngine(opts: EmbeddedOptions): Promise<AirlockEngine> {
  // Unset fields must not override the engine's defaults.
  const defined = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined && v !== '')) as EmbeddedOptions;
  return Engine.open(defined);
}

export class EmbeddedBackend implements Backend {
  readonly description: string;

  readonly files: EngineFileTransfer;

  private constructor(private readonly engine: AirlockEngine, dataDir: string) {
    this.description = `embedded engine (${dataDir})`;
    this.files = new EngineFileTransfer(engine, ADMIN);
  }

  static async open(opts: EmbeddedOptions): Promise<EmbeddedBackend> {
    return new EmbeddedBackend(await openEngine(opts), opts.dataDir);
  }

  createSandbox(input: SandboxSpecInput): Promise<SandboxInfo> {
    return this.engine.createSandbox(ADMIN, input);
  }

  async getSandbox(id: string): Promise<SandboxInfo> {
    return this.engine.getSandbox(ADMIN, id);
  }

  async listSandboxes(filter?: { state?: SandboxState; metadata?: Record<string, string> }): Promise<SandboxInfo[]> {
    return this.engine.listSandboxes(ADMIN, filter);
  }

  updateNetwork(id: string, policy: { allow?: string[]; deny?: string[]; bandwidthMbps?: number }): Promise<SandboxInfo & { cut: number }> {
    return this.engine.updateNetwork(ADMIN, id, policy);
  }

  killSandbox(id: string): Promise<SandboxInfo> {
    return this.engine.killSandbox(ADMIN, id);
  }

  pauseSandbox(id: string): Promise<SandboxInfo> {
    return this.engine.pauseSandbox(ADMIN, id);
  }

  resumeSandbox(id: string): Promise<SandboxInfo> {
    return this.engine.resumeSandbox(ADMIN, id);
  }

  exec(id: string, req: ExecRequest): Promise<ExecResult> {
    return this.engine.exec(ADMIN, id, req);
  }

  async execStream(id: string, req: ExecRequest, handlers: StreamHandlers): Promise<StreamExit> {
    const r = await this.engine.exec(ADMIN, id, req, {
      onStdout: (b) => handlers.onStdout(b),
      onStderr: (b) => handlers.onStderr(b),
      ...(handlers.signal ? { signal: handlers.signal } : {}),
    });
    return { exitCode: r.exitCode, reason: r.reason, durationMs: r.durationMs };
  }

  execBackground(id: string, req: ExecRequest): Promise<{ pid: number; execId: string }> {
    return this.engine.execBackground(ADMIN, id, req);
  }

  listProcesses(id: string): Promise<ProcessInfo[]> {
    return this.engine.listProcesses(ADMIN, id);
  }

  snapshotProcesses(id: string): Promise<{ seq: number; processes: ProcessInfo[] }> {
    return this.engine.snapshotProcesses(ADMIN, id);
  }

  async sandboxHistory(id: string): Promise<import('@airlock/engine').HistoryEntry[]> {
    return this.engine.sandboxHistory(ADMIN, id);
  }

  async readBlob(sha256: string): Promise<Uint8Array> {
    return this.engine.readBlob(ADMIN, sha256);
  }

  async openPty(id: string, req: PtyRequest): Promise<PtyConnection> {
    const s = await this.engine.openPty(ADMIN, id, req);
    return {
      pid: s.pid,
      write: (data) => { s.write(data); },
      resize: (cols, rows) => s.resize(cols, rows),
      signal: (signo) => s.kill(signo),
      onData: (l) => { s.onData(l); },
      pause: () => s.pause(),
      resume: () => s.resume(),
      exited: s.exited,
      close: () => {
        // As the server does for a client that leaves: SIGHUP, then SIGKILL for a process that ignores it.
        s.kill(1);
        const timer = setTimeout(() => s.kill(9), 2000);
        void s.exited.then(() => clearTimeout(timer));
      },
    };
  }

  killProcess(id: string, pid: number, signal: number): Promise<void> {
    return this.engine.killProcess(ADMIN, id, pid, signal);
  }

  async readFile(id: string, path: string): Promise<Uint8Array> {
    return this.engine.readFile(ADMIN, id, path);
  }

  async writeFile(id: string, path: string, data: Uint8Array, opts?: { mode?: number }): Promise<void> {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.engine.writeFile(ADMIN, id, path, buf, opts);
  }

  listDir(id: string, path: string): Promise<FileEntry[]> {
    return this.engine.listDir(ADMIN, id, path);
  }

  createVolume(input: { name: string; sizeMiB: number }): Promise<VolumeInfo> {
    return this.engine.createVolume(ADMIN, input);
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    return this.engine.listVolumes(ADMIN);
  }

  async getVolume(name: string): Promise<VolumeInfo> {
    return this.engine.getVolume(ADMIN, name);
  }

  deleteVolume(name: string): Promise<void> {
    return this.engine.deleteVolume(ADMIN, name);
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    return this.engine.listTemplates();
  }

  buildTemplate(name: string, req: TemplateBuildRequest): Promise<TemplateInfo> {
    return this.engine.buildTemplate(name, {
      ...(req.file !== undefined ? { file: req.file } : {}), ...(req.force ? { force: true } : {}), log: req.onLog,
    });
  }

  importTemplate(name: string, tarball: string, opts: { relativizeLinks?: boolean } = {}): Promise<TemplateInfo> {
    return this.engine.importTemplate(name, tarball, { absoluteSymlinks: opts.relativizeLinks ? 'relativize' : 'reject' });
  }

  removeTemplate(name: string): Promise<void> {
    return this.engine.removeTemplate(name);
  }

  close(): Promise<void> {
    return this.engine.close();
  }
}
