import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { chmod, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { acquireBuildLock } from './build-lock.js';
import { DIGEST_HEX_RE, LAYER_META_FILE, ROOTFS_DIR, TemplateLayout } from './layout.js';
import { unmountUnder } from './mounts-under.js';
import { isValidTemplateName } from './template-store.js';
import { readManifest } from './template-manifest.js';
import { treeDiskUsage } from './rootfs-tree.js';

export interface LayerMeta {
  digest: string;
  parent: string | null;
  /** What the layer holds, for people: "debootstrap bookworm minbase", "run: pip install x". */
  step: string;
  sizeBytes: number;
  createdAt: string;
}

/** How long a builder waits for the store lock (held only for short bookkeeping). */
const STORE_LOCK_WAIT_MS = 5 * 60_000;

/** 0711: sandbox ids must traverse to a layer, but have no business listing the store. */
export async function prepareStoreDirs(layout: TemplateLayout): Promise<void> {
  for (const dir of [layout.root, layout.layersDir, layout.tmpDir, layout.logsDir]) {
    await mkdir(dir, { recursive: true, mode: 0o711 });
    await chmod(dir, 0o711);
  }
}

/** A private work directory under `_tmp`, traversable by sandbox ids (the build container's rootfs lives in it). */
export async function makeWorkDir(layout: TemplateLayout, kind: string): Promise<string> {
  const dir = join(layout.tmpDir, `${kind}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { mode: 0o711 });
  await chmod(dir, 0o711);
  return dir;
}

export async function removeTree(path: string): Promise<void> {
  await unmountUnder(path);
  await rm(path, { recursive: true, force: true });
}

export function layerPresent(layout: TemplateLayout, hex: string): boolean {
  return existsSync(join(layout.layerDir(hex), LAYER_META_FILE)) && isDir(layout.layerRootfs(hex));
}

export function readLayerMeta(layout: TemplateLayout, hex: string): LayerMeta | null {
  try {
    const m = JSON.parse(readFileSync(join(layout.layerDir(hex), LAYER_META_FILE), 'utf8')) as LayerMeta;
    return typeof m.sizeBytes === 'number' && m.digest === hex ? m : null;
  } catch {
    return null;
  }
}

/**
 * Moves a finished rootfs (on the same file system, under `_tmp`) into `_layers/<hex>` in one
 * rename, metadata included, so a layer is either wholly there or absent. When another builder
 * committed the same digest first, ours is discarded: same digest, same content.
 */
export async function commitLayer(layout: TemplateLayout, hex: string, rootfs: string, meta: { parent: string | null; step: string }): Promise<LayerMeta> {
  const existing = layerPresent(layout, hex) ? readLayerMeta(layout, hex) : null;
  if (existing) {
    await removeTree(rootfs);
    return existing;
  }
  const staging = await makeWorkDir(layout, `commit-${hex.slice(0, 12)}`);
  try {
    await rename(rootfs, join(staging, ROOTFS_DIR));
    const full: LayerMeta = {
      digest: hex, parent: meta.parent, step: meta.step,
      sizeBytes: await treeDiskUsage(join(staging, ROOTFS_DIR)), createdAt: new Date().toISOString(),
    };
    await writeFile(join(staging, LAYER_META_FILE), `${JSON.stringify(full, null, 2)}\n`, { mode: 0o644 });
    try {
      await rename(staging, layout.layerDir(hex));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      const other = readLayerMeta(layout, hex);
      if (!other) throw e;
      return other;
    }
    return full;
  } finally {
    await removeTree(staging);
  }
}

/** Serializes claim writes against garbage collection (both short). */
export async function withStoreLock<T>(layout: TemplateLayout, fn: () => Promise<T>): Promise<T> {
  const release = await acquireBuildLock(layout.tmpDir, 'store', STORE_LOCK_WAIT_MS);
  try {
    return await fn();
  } finally {
    await release();
  }
}

/**
 * A builder's promise to use some layers: garbage collection keeps every layer a live
 * builder claimed, so a layer it reuses or just committed (not yet named by any manifest)
 * stays. Written under the store lock, before the builder looks at which layers exist.
 */
export async function claimLayers(layout: TemplateLayout, hexes: string[]): Promise<() => Promise<void>> {
  const path = join(layout.tmpDir, `claim-${process.pid}-${randomBytes(4).toString('hex')}.json`);
  await withStoreLock(layout, () => writeFile(path, JSON.stringify({ pid: process.pid, layers: hexes }), { mode: 0o600 }));
  return () => rm(path, { force: true });
}

/** Layers claimed by live builders; claims of dead ones are removed. */
function liveClaims(layout: TemplateLayout): Set<string> {
  const claimed = new Set<string>();
  for (const name of safeReaddir(layout.tmpDir)) {
    if (!name.startsWith('claim-') || !name.endsWith('.json')) continue;
    const path = join(layout.tmpDir, name);
    try {
      const c = JSON.parse(readFileSync(path, 'utf8')) as { pid: number; layers: string[] };
      if (!pidAlive(c.pid)) {
        rmSafe(path);
        continue;
      }
      for (const l of c.layers) claimed.add(l);
    } catch {
      // Being written (rename-free) or corrupt: treat as a claim on nothing.
    }
  }
  return claimed;
}

/** Layers (and old-layout rootfs dirs) that some mount on this host stacks, e.g. running sandboxes. */
function mountedPaths(): string {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return '';
  }
}

export interface GcResult {
  removedLayers: string[];
  removedLegacy: string[];
}

/**
 * Removes layers no template names, no live builder claimed and no mount uses (a sandbox
 * started from a template that was rebuilt or removed since keeps its layers until it ends),
 * and the `<name>/rootfs` directory of templates rebuilt from the old layout.
 */
export async function collectGarbage(layout: TemplateLayout, log: (line: string) => void = () => {}): Promise<GcResult> {
  const result: GcResult = { removedLayers: [], removedLegacy: [] };
  await withStoreLock(layout, async () => {
    const referenced = new Set<string>();
    const legacy: string[] = [];
    for (const name of safeReaddir(layout.root)) {
      if (!isValidTemplateName(name)) continue;
      const m = readManifest(layout.templateDir(name));
      if (!m) continue;
      for (const l of m.layers ?? []) referenced.add(l);
      if (m.layers && isDir(layout.legacyRootfs(name))) legacy.push(name);
    }
    const claimed = liveClaims(layout);
    const mounts = mountedPaths();
    const inUse = (path: string) => mounts.includes(`${path}/`) || mounts.includes(`${path},`) || mounts.includes(`${path}:`);
    for (const name of await readdir(layout.layersDir).catch(() => [] as string[])) {
      const path = join(layout.layersDir, name);
      if (DIGEST_HEX_RE.test(name) && (referenced.has(name) || claimed.has(name))) continue;
      if (inUse(join(path, ROOTFS_DIR))) continue;
      await trash(layout, path);
      result.removedLayers.push(name);
      log(`removed unused layer ${name.slice(0, 12)}`);
    }
    for (const name of safeReaddir(layout.tmpDir)) {
      // `<kind>-<pid>-<rand>` work directories of a builder that was killed (its overlay may still be mounted).
      const m = /-(\d+)-[0-9a-f]{8}$/.exec(name);
      if (!m || pidAlive(Number(m[1])) || !isDir(join(layout.tmpDir, name))) continue;
      await removeTree(join(layout.tmpDir, name));
      log(`removed leftover ${name}`);
    }
    for (const name of legacy) {
      const rootfs = layout.legacyRootfs(name);
      if (inUse(rootfs)) continue;
      await trash(layout, rootfs);
      result.removedLegacy.push(name);
      log(`removed the old-layout rootfs of ${name}`);
    }
  });
  return result;
}

/** Renamed out of the store first, so a half-deleted layer is never visible under its digest. */
async function trash(layout: TemplateLayout, path: string): Promise<void> {
  const dest = join(layout.tmpDir, `trash-${process.pid}-${randomBytes(4).toString('hex')}`);
  await rename(path, dest);
  await removeTree(dest);
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function rmSafe(path: string): void {
  try {
    rmSync(path);
  } catch {
    // gone already
  }
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
