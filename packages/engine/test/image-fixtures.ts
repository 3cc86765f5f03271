/**
 * Image tarballs made in the test itself (tar-stream, zlib): OCI image layouts and
 * `docker save` archives, valid or deliberately malicious.
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';

export interface FixtureEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  devmajor?: number;
  devminor?: number;
}

export async function tarBuffer(entries: FixtureEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) chunks.push(Buffer.from(c as Uint8Array));
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const body = type === 'file' ? Buffer.from(e.content ?? '') : undefined;
    const header = {
      name: e.name, type, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644), uid: e.uid ?? 0, gid: e.gid ?? 0,
      mtime: new Date('2024-01-02T03:04:05Z'),
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
      ...(e.devmajor !== undefined ? { devmajor: e.devmajor, devminor: e.devminor ?? 0 } : {}),
    };
    await new Promise<void>((res, rej) => {
      if (body) pack.entry(header, body, (err) => (err ? rej(err) : res()));
      else pack.entry(header, (err) => (err ? rej(err) : res())).end(undefined);
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export interface FixtureConfig {
  Env?: string[];
  WorkingDir?: string;
  User?: string;
  Entrypoint?: string[];
  Cmd?: string[];
}

/** An OCI image layout tarball; layers gzip-compressed unless `gzip: false`. */
export async function ociImage(layers: FixtureEntry[][], config: FixtureConfig = {}, opts: { gzip?: boolean; extra?: FixtureEntry[] } = {}): Promise<Buffer> {
  const blobs: FixtureEntry[] = [];
  const layerDescs = [];
  const diffIds: string[] = [];
  for (const l of layers) {
    const raw = await tarBuffer(l);
    diffIds.push(`sha256:${sha(raw)}`);
    const blob = opts.gzip === false ? raw : gzipSync(raw);
    blobs.push({ name: `blobs/sha256/${sha(blob)}`, content: blob });
    layerDescs.push({ mediaType: opts.gzip === false ? 'application/vnd.oci.image.layer.v1.tar' : 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha(blob)}`, size: blob.length });
  }
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config, rootfs: { type: 'layers', diff_ids: diffIds } }));
  blobs.push({ name: `blobs/sha256/${sha(cfg)}`, content: cfg });
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(cfg)}`, size: cfg.length },
    layers: layerDescs,
  }));
  blobs.push({ name: `blobs/sha256/${sha(manifest)}`, content: manifest });
  const index = { schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length }] };
  return tarBuffer([
    { name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', content: JSON.stringify(index) },
    { name: 'blobs/', type: 'directory' },
    { name: 'blobs/sha256/', type: 'directory' },
    ...blobs,
    ...(opts.extra ?? []),
  ]);
}

/** A classic `docker save` archive: <id>/layer.tar (plain tar), <id>.json config, manifest.json. */
export async function dockerSaveImage(layers: FixtureEntry[][], config: FixtureConfig = {}, opts: { extra?: FixtureEntry[] } = {}): Promise<Buffer> {
  const entries: FixtureEntry[] = [];
  const names: string[] = [];
  const diffIds: string[] = [];
  for (const l of layers) {
    const raw = await tarBuffer(l);
    const id = sha(raw);
    diffIds.push(`sha256:${id}`);
    entries.push({ name: `${id}/`, type: 'directory' }, { name: `${id}/layer.tar`, content: raw });
    names.push(`${id}/layer.tar`);
  }
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config, rootfs: { type: 'layers', diff_ids: diffIds } }));
  entries.push({ name: `${sha(cfg)}.json`, content: cfg });
  entries.push({ name: 'manifest.json', content: JSON.stringify([{ Config: `${sha(cfg)}.json`, RepoTags: ['test:latest'], Layers: names }]) });
  return tarBuffer([...entries, ...(opts.extra ?? [])]);
}
