/**
 * File operations beyond whole-file read/write, for both backends: streamed transfers, stat,
 * mkdir, rename, watch and outputs. Streams never gather a file in memory.
 */
import type { AirlockEngine, Caller, FileWatchEvent, OutputsListing } from '@airlock/engine';
import type { ApiClient } from '@airlock/sdk';

export type { FileWatchEvent, OutputsListing };

export interface PathStat {
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime: string;
}

export interface FileTransfer {
  /** Resolves once the file is open (errors first); the bytes then arrive as they are read. */
  readStream(id: string, path: string): Promise<AsyncIterable<Uint8Array>>;
  write(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, opts?: { mode?: number }): Promise<PathStat>;
  stat(id: string, path: string): Promise<PathStat>;
  makeDir(id: string, path: string, opts: { parents?: boolean; mode?: number }): Promise<PathStat>;
  rename(id: string, from: string, to: string, opts: { overwrite?: boolean }): Promise<PathStat>;
  /** Resolves once the watch is in place; `done` settles with why it ended. */
  watch(id: string, path: string, opts: { recursive?: boolean }, onEvent: (e: FileWatchEvent) => void, signal: AbortSignal): Promise<{ done: Promise<string> }>;
  outputsTar(id: string): Promise<AsyncIterable<Uint8Array>>;
  outputsList(id: string): Promise<OutputsListing>;
}

/** Through the engine in this process. */
export class EngineFileTransfer implements FileTransfer {
  constructor(private readonly engine: AirlockEngine, private readonly caller: Caller) {}

  readStream(id: string, path: string): Promise<AsyncIterable<Uint8Array>> {
    return this.engine.readFileStream(this.caller, id, path);
  }

  write(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, opts: { mode?: number } = {}): Promise<PathStat> {
    return this.engine.writeFile(this.caller, id, path, data, opts);
  }

  stat(id: string, path: string): Promise<PathStat> {
    return this.engine.statPath(this.caller, id, path);
  }

  makeDir(id: string, path: string, opts: { parents?: boolean; mode?: number }): Promise<PathStat> {
    return this.engine.makeDir(this.caller, id, path, opts);
  }

  rename(id: string, from: string, to: string, opts: { overwrite?: boolean }): Promise<PathStat> {
    return this.engine.renamePath(this.caller, id, from, to, opts);
  }

  async watch(id: string, path: string, opts: { recursive?: boolean }, onEvent: (e: FileWatchEvent) => void, signal: AbortSignal): Promise<{ done: Promise<string> }> {
    const w = await this.engine.watchFiles(this.caller, id, path, opts, onEvent, signal);
    return { done: w.done };
  }

  outputsTar(id: string): Promise<AsyncIterable<Uint8Array>> {
    return this.engine.outputsTar(this.caller, id);
  }

  outputsList(id: string): Promise<OutputsListing> {
    return this.engine.outputsList(this.caller, id);
  }
}

/** Through airlockd's REST API. Web streams are async iterables in Node. */
export class ApiFileTransfer implements FileTransfer {
  constructor(private readonly client: ApiClient) {}

  async readStream(id: string, path: string): Promise<AsyncIterable<Uint8Array>> {
    return (await this.client.readFileStream(id, path)) as unknown as AsyncIterable<Uint8Array>;
  }

  write(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, opts: { mode?: number } = {}): Promise<PathStat> {
    return this.client.writeFile(id, path, data, opts);
  }

  stat(id: string, path: string): Promise<PathStat> {
    return this.client.statPath(id, path);
  }

  makeDir(id: string, path: string, opts: { parents?: boolean; mode?: number }): Promise<PathStat> {
    return this.client.makeDir(id, path, opts);
  }

  rename(id: string, from: string, to: string, opts: { overwrite?: boolean }): Promise<PathStat> {
    return this.client.renamePath(id, from, to, opts);
  }

  watch(id: string, path: string, opts: { recursive?: boolean }, onEvent: (e: FileWatchEvent) => void, signal: AbortSignal): Promise<{ done: Promise<string> }> {
    return this.client.watchDir(id, path, opts, { onEvent, signal });
  }

  async outputsTar(id: string): Promise<AsyncIterable<Uint8Array>> {
    return (await this.client.outputsTar(id)) as unknown as AsyncIterable<Uint8Array>;
  }

  outputsList(id: string): Promise<OutputsListing> {
    return this.client.outputsList(id);
  }
}
