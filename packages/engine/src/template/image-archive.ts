import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { components } from './fs-in-root.js';
import { invalidImage, tooLarge, type ImportLimits } from './import-limits.js';

/**
 * The outer tarball of an image: an OCI image layout (index.json, blobs/sha256/...) or a
 * `docker save` archive (manifest.json, <id>/layer.tar or blobs/...). Its files are spilled to
 * a private directory under numbered names (never under names from the archive), and
 * looked up by name afterwards; links between archive entries are resolved in that table,
 * never on disk.
 */

export interface ArchiveFile {
  name: string;
  path: string;
  size: number;
  sha256: string;
}

export interface ImageConfig {
  env: string[];
  workingDir: string | null;
  user: string | null;
  entrypoint: string[] | null;
  cmd: string[] | null;
  /** sha256 of each layer's uncompressed tar (config.rootfs.diff_ids), when the image says. */
  diffIds: string[] | null;
}

export interface ImageLayerRef {
  name: string;
  file: ArchiveFile;
}

export interface ParsedImage {
  format: 'oci' | 'docker';
  layers: ImageLayerRef[];
  config: ImageConfig;
}

const MAX_ARCHIVE_ENTRIES = 100_000;
const MAX_JSON_BYTES = 4 * 1024 * 1024;
const MAX_LINK_DEPTH = 16;

export class SpilledArchive {
  readonly files = new Map<string, ArchiveFile>();
  readonly links = new Map<string, string>();

  get(name: string): ArchiveFile | null {
    let at = normalizeName(name);
    for (let i = 0; at !== null && i < MAX_LINK_DEPTH; i++) {
      const f = this.files.get(at);
      if (f) return f;
      at = this.links.get(at) ?? null;
    }
    return null;
  }

  require(name: string, what: string): ArchiveFile {
    const f = this.get(name);
    if (!f) throw invalidImage(`${what} ${name} is missing from the image tarball`);
    return f;
  }
}

/** `a/./b/` → `a/b`; null for an absolute name or one with `..` (never allowed in an archive). */
export function normalizeName(name: string): string | null {
  if (name.startsWith('/') || name.includes('\0')) return null;
  const parts = components(name);
  if (parts.includes('..')) return null;
  return parts.join('/');
}

/** Yields `source` with its first bytes peeked (to tell gzip from tar). */
export async function peek(source: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const first: Buffer[] = [];
  let len = 0;
  let ended = false;
  while (len < n) {
    const r = await it.next();
    if (r.done) { ended = true; break; }
    first.push(r.value);
    len += r.value.length;
  }
  const head = Buffer.concat(first);
  async function* all(): AsyncGenerator<Buffer> {
    try {
      if (head.length > 0) yield head;
      while (!ended) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      await it.return?.();
    }
  }
  return { head, stream: Readable.from(all(), { objectMode: false }) };
}

export const isGzip = (head: Buffer) => head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b;
export const isZstd = (head: Buffer) => head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528;

/** Counts bytes through; fails once `max` is passed. */
export function meter(max: number, what: () => Error, onBytes?: (chunk: Buffer) => void): Transform & { bytes: number } {
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      t.bytes += chunk.length;
      if (t.bytes > max) return cb(what());
      onBytes?.(chunk);
      cb(null, chunk);
    },
  }) as Transform & { bytes: number };
  t.bytes = 0;
  return t;
}

/** Reads the outer tarball (plain or gzip) into `dir`. */
export async function spillArchive(source: Readable, dir: string, limits: ImportLimits): Promise<SpilledArchive> {
  const { head, stream } = await peek(source, 4);
  if (head.length === 0) throw invalidImage('the image tarball is empty');
  const stages: NodeJS.ReadWriteStream[] = [];
  if (isGzip(head)) stages.push(createGunzip());
  stages.push(meter(limits.maxImageBytes, () => tooLarge(`the image tarball is larger than ${limits.maxImageBytes} bytes`)));
  const extract = tar.extract();
  const archive = new SpilledArchive();
  const feeding = pipeline([stream, ...stages, extract] as unknown as ReadonlyArray<NodeJS.ReadableStream | NodeJS.WritableStream | NodeJS.ReadWriteStream>);
  feeding.catch(() => {});
  const upstreamFailed = feeding.then(() => new Promise<never>(() => {}), (e: unknown) => { throw e; });
  upstreamFailed.catch(() => {});
  let count = 0;
  try {
    for await (const entry of extract) {
      if (++count > MAX_ARCHIVE_ENTRIES) throw invalidImage(`the image tarball has more than ${MAX_ARCHIVE_ENTRIES} entries`);
      const h = entry.header;
      const name = normalizeName(h.name);
      if (name === null) throw invalidImage(`path traversal in the image tarball: ${JSON.stringify(h.name)}`);
      switch (h.type) {
        case 'file':
        case 'contiguous-file': {
          const path = join(dir, `blob-${count}`);
          const hash = createHash('sha256');
          const m = meter(Number.MAX_SAFE_INTEGER, () => new Error('unreachable'), (c) => hash.update(c));
          // Raced with the outer pipeline: a failing upstream may leave a streamx entry silent.
          await Promise.race([pipeline(entry, m, createWriteStream(path, { flags: 'wx', mode: 0o600 })), upstreamFailed]);
          archive.files.set(name, { name, path, size: m.bytes, sha256: hash.digest('hex') });
          archive.links.delete(name);
          continue;
        }
        case 'symlink':
        case 'link': {
          const target = h.type === 'link'
            ? normalizeName(h.linkname ?? '')
            : (h.linkname ?? '').startsWith('/') ? null : normalizeName([...components(name).slice(0, -1), h.linkname ?? ''].join('/'));
          if (target === null) throw invalidImage(`link out of the image tarball: ${name} -> ${h.linkname}`);
          archive.links.set(name, target);
          archive.files.delete(name);
          break;
        }
        case 'directory':
          break;
        case 'character-device':
        case 'block-device':
        case 'fifo':
          throw invalidImage(`device node in the image tarball: ${name}`);
        default:
          throw invalidImage(`unsupported entry type in the image tarball: ${name}`);
      }
      entry.resume();
    }
    await feeding;
  } catch (e) {
    stream.destroy();
    extract.destroy();
    await feeding.catch(() => {});
    throw asImageError(e);
  }
  return archive;
}

/** tar-stream and zlib errors mean a malformed archive; ours pass through. */
export function asImageError(e: unknown): Error {
  if (e instanceof Error && e.name === 'AirlockError') return e;
  const msg = e instanceof Error ? e.message : String(e);
  return invalidImage(`malformed tarball: ${msg}`);
}

async function readJson(file: ArchiveFile, what: string): Promise<unknown> {
  if (file.size > MAX_JSON_BYTES) throw invalidImage(`${what} is larger than ${MAX_JSON_BYTES} bytes`);
  try {
    return JSON.parse(await readFile(file.path, 'utf8'));
  } catch {
    throw invalidImage(`${what} is not valid JSON`);
  }
}

const OCI_INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
const DIGEST_RE = /^sha256:([a-f0-9]{64})$/;

interface Descriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
}

function descriptors(v: unknown, what: string): Descriptor[] {
  const list = (v as { manifests?: unknown } | null)?.manifests;
  if (!Array.isArray(list)) throw invalidImage(`${what} has no manifests list`);
  return list.map((d, i) => {
    if (typeof d !== 'object' || d === null || typeof (d as Descriptor).digest !== 'string') throw invalidImage(`${what} manifests.${i} has no digest`);
    return d as Descriptor;
  });
}

/** A blob by digest, checked against the digest. */
function blob(archive: SpilledArchive, digest: unknown, what: string): ArchiveFile {
  const m = typeof digest === 'string' ? DIGEST_RE.exec(digest) : null;
  if (!m) throw invalidImage(`${what}: unsupported or malformed digest ${JSON.stringify(digest)} (sha256 only)`);
  const f = archive.require(`blobs/sha256/${m[1]}`, what);
  if (f.sha256 !== m[1]) throw invalidImage(`${what}: content does not match its digest ${digest}`);
  return f;
}

const runnable = (d: Descriptor) => !d.platform || ((d.platform.os ?? 'linux') === 'linux' && ['amd64', undefined].includes(d.platform.architecture));

/** Finds the single image of the archive and its layers (bottom first) and config. */
export async function readImage(archive: SpilledArchive): Promise<ParsedImage> {
  if (archive.get('index.json')) return readOciImage(archive);
  if (archive.get('manifest.json')) return readDockerImage(archive);
  throw invalidImage('neither an OCI image layout (index.json) nor a docker save archive (manifest.json)');
}

async function readOciImage(archive: SpilledArchive): Promise<ParsedImage> {
  let list = descriptors(await readJson(archive.require('index.json', 'file'), 'index.json'), 'index.json');
  for (let depth = 0; depth < 3; depth++) {
    const images = list.filter(runnable);
    if (images.length === 0) throw invalidImage('no linux/amd64 image in the archive');
    if (images.length > 1) throw invalidImage(`the archive holds ${images.length} images; import one at a time`);
    const d = images[0]!;
    const doc = await readJson(blob(archive, d.digest, 'manifest'), `manifest ${d.digest}`);
    const type = d.mediaType ?? (doc as { mediaType?: string }).mediaType;
    if (type && OCI_INDEX_TYPES.has(type)) {
      list = descriptors(doc, `index ${d.digest}`);
      continue;
    }
    const man = doc as { config?: { digest?: unknown }; layers?: unknown };
    if (!man.config || !Array.isArray(man.layers)) throw invalidImage(`manifest ${d.digest} has no config or layers`);
    const layers = man.layers.map((l: { digest?: unknown; mediaType?: unknown }, i: number) => {
      if (typeof l.mediaType === 'string' && l.mediaType.includes('zstd')) throw invalidImage(`layer ${i} is zstd-compressed; only gzip and plain tar layers can be imported`);
      return { name: String(l.digest), file: blob(archive, l.digest, `layer ${i}`) };
    });
    const config = parseConfig(await readJson(blob(archive, man.config.digest, 'config'), 'image config'));
    return { format: 'oci', layers, config };
  }
  throw invalidImage('image indexes nest too deep');
}

async function readDockerImage(archive: SpilledArchive): Promise<ParsedImage> {
  const doc = await readJson(archive.require('manifest.json', 'file'), 'manifest.json');
  if (!Array.isArray(doc) || doc.length === 0) throw invalidImage('manifest.json lists no image');
  if (doc.length > 1) throw invalidImage(`the archive holds ${doc.length} images; import one at a time`);
  const m = doc[0] as { Config?: unknown; Layers?: unknown };
  if (typeof m.Config !== 'string' || !Array.isArray(m.Layers) || !m.Layers.every((l) => typeof l === 'string')) {
    throw invalidImage('manifest.json: Config and Layers are missing or malformed');
  }
  const layers = (m.Layers as string[]).map((name) => ({ name, file: archive.require(name, 'layer') }));
  const config = parseConfig(await readJson(archive.require(m.Config, 'config'), 'image config'));
  return { format: 'docker', layers, config };
}

function stringList(v: unknown, field: string): string[] | null {
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && !s.includes('\0'))) throw invalidImage(`image config ${field} must be a list of strings`);
  return v as string[];
}

function parseConfig(doc: unknown): ImageConfig {
  const top = (doc ?? {}) as { config?: Record<string, unknown>; rootfs?: { diff_ids?: unknown } };
  const c = top.config ?? {};
  const env = stringList(c['Env'], 'Env') ?? [];
  if (!env.every((e) => /^[^=]+=/.test(e))) throw invalidImage('image config Env entries must be K=V');
  const str = (k: string): string | null => {
    const v = c[k];
    if (v === undefined || v === null || v === '') return null;
    if (typeof v !== 'string' || v.includes('\0')) throw invalidImage(`image config ${k} must be a string`);
    return v;
  };
  const workingDir = str('WorkingDir');
  if (workingDir !== null && (!workingDir.startsWith('/') || workingDir.split('/').includes('..'))) {
    throw invalidImage(`image config WorkingDir must be an absolute path without '..': ${workingDir}`);
  }
  const diffIds = stringList(top.rootfs?.diff_ids, 'rootfs.diff_ids');
  if (diffIds && !diffIds.every((d) => DIGEST_RE.test(d))) throw invalidImage('image config rootfs.diff_ids must be sha256 digests');
  return {
    env, workingDir, user: str('User'), entrypoint: stringList(c['Entrypoint'], 'Entrypoint'), cmd: stringList(c['Cmd'], 'Cmd'),
    diffIds: diffIds ? diffIds.map((d) => d.slice('sha256:'.length)) : null,
  };
}

/** First bytes of a spilled file. */
export async function fileHead(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}
