/** `airlock files put|get|ls`: copy files in and out of a sandbox. `-` stands for stdin/stdout. */
import { readFile, stat, writeFile } from 'node:fs/promises';
import type { BackendOptions } from '../backend.js';
import { EXIT, formatTable, printJson, shortTime } from '../output.js';
import { withBackend } from '../with-backend.js';

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks);
}

export async function putCommand(id: string, local: string, remote: string, flags: BackendOptions & { mode?: number }): Promise<number> {
  let data: Buffer;
  let mode = flags.mode;
  if (local === '-') {
    data = await readAll(process.stdin);
  } else {
    // The local file keeps its permission bits (an uploaded script stays executable).
    mode ??= (await stat(local)).mode & 0o7777;
    data = await readFile(local);
  }
  return withBackend(flags, async (b) => {
    await b.writeFile(id, remote, data, mode !== undefined ? { mode } : {});
    return EXIT.ok;
  });
}

export async function getCommand(id: string, remote: string, local: string, flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    const data = await b.readFile(id, remote);
    if (local === '-') process.stdout.write(data);
    else await writeFile(local, data);
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
