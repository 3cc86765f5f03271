/**
 * `airlock files put|get|ls|stat|mkdir|mv|watch|outputs`: files in and out of a sandbox.
 * `-` stands for stdin/stdout. Transfers stream: a large file is never held in memory.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Backend, BackendOptions } from '../backend.js';
import type { FileWatchEvent } from '../file-transfer.js';
import { watchInterrupts } from '../interrupt.js';
import { EXIT, formatTable, humanBytes, printJson, shortTime } from '../output.js';
import { withBackend } from '../with-backend.js';

export async function putCommand(id: string, local: string, remote: string, flags: BackendOptions & { mode?: number }): Promise<number> {
  let mode = flags.mode;
  if (local !== '-') {
    // The local file keeps its permission bits (an uploaded script stays executable).
    const st = await stat(local);
    if (!st.isFile()) throw new Error(`${local} is not a regular file`);
    mode ??= st.mode & 0o7777;
  }
  return withBackend(flags, async (b) => {
    const source = local === '-' ? process.stdin : createReadStream(local, { highWaterMark: 1024 * 1024 });
    await b.files.write(id, remote, source, mode !== undefined ? { mode } : {});
    return EXIT.ok;
  });
}

/** Bytes to stdout, honouring its backpressure. */
async function toStdout(chunks: AsyncIterable<Uint8Array>): Promise<void> {
  await pipeline(Readable.from(chunks, { objectMode: false }), new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (process.stdout.write(chunk)) cb();
      else process.stdout.once('drain', () => cb());
    },
  }));
}

/**
 * Written as it arrives, into a temp file beside LOCAL renamed over it at the end: an
 * interrupted transfer never leaves a truncated file under the real name.
 */
async function toLocalFile(chunks: AsyncIterable<Uint8Array>, local: string): Promise<void> {
  const tmp = join(dirname(local), `.${basename(local)}.airlock-${process.pid}.part`);
  try {
    await pipeline(Readable.from(chunks, { objectMode: false }), createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
    await rename(tmp, local);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export async function getCommand(id: string, remote: string, local: string, flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    const chunks = await b.files.readStream(id, remote);
    if (local === '-') await toStdout(chunks);
    else await toLocalFile(chunks, local);
    return EXIT.ok;
  });
}

function modeString(type: string, mode: number): string {
  const t = type === 'dir' ? 'd' : type === 'symlink' ? 'l' : type === 'file' ? '-' : '?';
  const bits = 'rwxrwxrwx'.split('').map((c, i) => ((mode >> (8 - i)) & 1 ? c : '-')).join('');
  return t + bits;
}

export async function lsCommand(id: string, path: string, flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const entries = await b.listDir(id, path);
    if (flags.json) {
      printJson(entries);
      return EXIT.ok;
    }
    const sorted = [...entries].sort((x, y) => x.name.localeCompare(y.name));
    process.stdout.write(
      formatTable(
        ['MODE', 'SIZE', 'MODIFIED', 'NAME'],
        sorted.map((e) => [modeString(e.type, e.mode), String(e.size), shortTime(e.mtime), e.type === 'dir' ? `${e.name}/` : e.name]),
      ),
    );
    return EXIT.ok;
  });
}

export async function statCommand(id: string, path: string, flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const st = await b.files.stat(id, path);
    if (flags.json) printJson({ path, ...st });
    else process.stdout.write(`${modeString(st.type, st.mode)} ${st.size} ${st.mtime} ${path}\n`);
    return EXIT.ok;
  });
}

export async function mkdirCommand(id: string, path: string, flags: BackendOptions & { parents?: boolean; mode?: number }): Promise<number> {
  return withBackend(flags, async (b) => {
    await b.files.makeDir(id, path, { parents: flags.parents ?? false, ...(flags.mode !== undefined ? { mode: flags.mode } : {}) });
    return EXIT.ok;
  });
}

export async function mvCommand(id: string, from: string, to: string, flags: BackendOptions & { overwrite?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    await b.files.rename(id, from, to, { overwrite: flags.overwrite ?? false });
    return EXIT.ok;
  });
}

/** Prints changes until Ctrl-C (or the directory or the sandbox goes away). */
export async function watchCommand(id: string, path: string, flags: BackendOptions & { recursive?: boolean; json?: boolean }): Promise<number> {
  const interrupt = watchInterrupts();
  try {
    return await withBackend(flags, async (b) => {
      const print = (e: FileWatchEvent): void => {
        if (flags.json) process.stdout.write(`${JSON.stringify(e)}\n`);
        else process.stdout.write(`${e.type}${e.isDir ? ' dir' : ''} ${e.from !== undefined ? `${e.from} -> ` : ''}${e.path}\n`);
      };
      const { done } = await b.files.watch(id, path, { recursive: flags.recursive ?? false }, print, interrupt.signal);
      const reason = await done;
      return reason === 'stopped' || interrupt.received() ? EXIT.ok : EXIT.failure;
    });
  } finally {
    interrupt.dispose();
  }
}

export interface OutputsFlags extends BackendOptions {
  list?: boolean;
  json?: boolean;
}

/** Extracts a sandbox's outputs into `dir` (refusing unsafe entries, never following links). */
export async function collectOutputs(b: Backend, id: string, dir: string): Promise<{ files: number; dirs: number; symlinks: number; bytes: number }> {
  const { extractTarSafely } = await import('@airlock/engine');
  return extractTarSafely(await b.files.outputsTar(id), dir);
}

export async function outputsCommand(id: string, dir: string | undefined, flags: OutputsFlags): Promise<number> {
  return withBackend(flags, async (b) => {
    if (flags.list || dir === undefined) {
      const listing = await b.files.outputsList(id);
      if (flags.json) {
        printJson(listing);
        return EXIT.ok;
      }
      process.stdout.write(formatTable(
        ['MODE', 'SIZE', 'SHA256', 'PATH'],
        listing.entries.map((e) => [
          modeString(e.type, e.mode), e.type === 'file' ? humanBytes(e.size) : '-', e.sha256?.slice(0, 16) ?? '-',
          e.type === 'symlink' ? `${e.path} -> ${e.linkTarget}` : e.type === 'dir' ? `${e.path}/` : e.path,
        ]),
      ));
      return EXIT.ok;
    }
    const s = await collectOutputs(b, id, dir);
    if (flags.json) printJson(s);
    else process.stderr.write(`airlock: ${s.files} files (${humanBytes(s.bytes)}), ${s.dirs} directories, ${s.symlinks} links → ${dir}\n`);
    return EXIT.ok;
  });
}
