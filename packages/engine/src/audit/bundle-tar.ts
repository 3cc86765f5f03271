import { gunzipSync, gzipSync } from 'node:zlib';

/**
 * The few regular files of an evidence bundle as a ustar tar.gz, and back. Own code rather than
 * the general extractor: a bundle is read into memory, never onto disk, so there are no paths to
 * escape through; names are checked anyway so a crafted bundle cannot confuse the reader.
 */
const BLOCK = 512;
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,99}$/;
/** A bundle bigger than this is refused on read (it is all held in memory). */
export const MAX_BUNDLE_BYTES = 1024 * 1024 * 1024;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

function header(name: string, size: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(0o644, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(mtime, 12), 136, 'ascii');
  h.fill(' ', 148, 156);
  h.write('0', 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 'ascii');
  return h;
}

export function writeBundleTar(files: Map<string, Buffer | string>): Buffer {
  const mtime = Math.floor(Date.now() / 1000);
  const parts: Buffer[] = [];
  for (const [name, content] of files) {
    if (!NAME_RE.test(name)) throw new Error(`bad bundle entry name ${name}`);
    const body = typeof content === 'string' ? Buffer.from(content) : content;
    parts.push(header(name, body.length, mtime), body);
    const pad = (BLOCK - (body.length % BLOCK)) % BLOCK;
    if (pad) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return gzipSync(Buffer.concat(parts));
}

export function readBundleTar(gz: Buffer): Map<string, Buffer> {
  const tar = gunzipSync(gz, { maxOutputLength: MAX_BUNDLE_BYTES });
  const files = new Map<string, Buffer>();
  let off = 0;
  while (off + BLOCK <= tar.length) {
    const h = tar.subarray(off, off + BLOCK);
    if (h.every((b) => b === 0)) break;
    const name = h.toString('utf8', 0, 100).replace(/\0.*$/s, '');
    const size = parseInt(h.toString('ascii', 124, 136).replace(/\0.*$/s, '').trim(), 8);
    const type = String.fromCharCode(h[156]!);
    if (!NAME_RE.test(name) || !Number.isSafeInteger(size) || size < 0 || (type !== '0' && type !== '\0')) {
      throw new Error(`bundle has an unexpected entry ${JSON.stringify(name)}`);
    }
    if (files.has(name)) throw new Error(`bundle has ${name} twice`);
    off += BLOCK;
    if (off + size > tar.length) throw new Error(`bundle entry ${name} is cut short`);
    files.set(name, Buffer.from(tar.subarray(off, off + size)));
    off += size + ((BLOCK - (size % BLOCK)) % BLOCK);
  }
  return files;
}
