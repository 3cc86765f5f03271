import { chmod, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import type { TemplateInfo } from '../engine-api.js';
import { AirlockError, badRequest } from '../errors.js';
import { populateBaseRootfs } from './base-rootfs.js';
import { acquireBuildLock } from './build-lock.js';
import { hostDebianMirror } from './debian-mirror.js';
import { unmountUnder } from './mounts-under.js';
import { removeDeviceNodes, shiftOwnership, treeDiskUsage } from './rootfs-tree.js';
import { writeSandboxEtc } from './sandbox-etc.js';
import {
  DEFAULT_TEMPLATE_ENV, DEFAULT_TEMPLATE_WORKDIR, ROOTFS_DIR, writeManifest,
} from './template-manifest.js';
import { TemplateStore } from './template-store.js';
import { populateTinyRootfs } from './tiny-rootfs.js';

export type BuildableTemplate = 'base' | 'tiny';
export const BUILDABLE_TEMPLATES: readonly BuildableTemplate[] = ['base', 'tiny'];

export interface BuildTemplateOptions {
  /** Progress, one line at a time. */
  log?: (line: string) => void;
  /** Debian mirror for `base`; default: the one the host's apt sources use. */
  mirror?: string;
}

export interface EnsureTemplateOptions extends BuildTemplateOptions {
  /** How long to wait for another process already building the same template (default 20 min). */
  waitMs?: number;
}

export function isBuildableTemplate(name: string): name is BuildableTemplate {
  return (BUILDABLE_TEMPLATES as readonly string[]).includes(name);
}

/**
 * Builds (or rebuilds) template `name` into `<dir>/<name>`. Work happens in
 * `<dir>/.<name>.build-<pid>` and is renamed into place, so a half-built template is never
 * visible; leftovers of an interrupted build are removed first. Throws conflict while
 * another process builds the same name.
 *
 * Rebuilding swaps the old tree out and deletes it: do not rebuild a template that running
 * sandboxes use as their lower layer.
 */
export async function buildTemplate(dir: string, name: BuildableTemplate, opts: BuildTemplateOptions = {}): Promise<TemplateInfo> {
  assertBuildable(name);
  const root = resolve(dir);
  await prepareTemplatesDir(root);
  const release = await acquireBuildLock(root, name, 0);
  try {
    return await buildLocked(root, name, opts);
  } finally {
    await release();
  }
}

/** Returns the template when present; otherwise builds it (waiting out a concurrent builder first). */
export async function ensureTemplate(dir: string, name: BuildableTemplate, opts: EnsureTemplateOptions = {}): Promise<TemplateInfo> {
  assertBuildable(name);
  const root = resolve(dir);
  const store = new TemplateStore(root);
  const present = store.info(name);
  if (present) return present;
  await prepareTemplatesDir(root);
  const release = await acquireBuildLock(root, name, opts.waitMs ?? 20 * 60_000);
  try {
    return store.info(name) ?? await buildLocked(root, name, opts);
  } finally {
    await release();
  }
}

function assertBuildable(name: string): void {
  if (!isBuildableTemplate(name)) {
    throw badRequest(`no recipe for template ${JSON.stringify(name)}: buildable are ${BUILDABLE_TEMPLATES.join(', ')}`, 'name');
  }
}

/**
 * 0711: sandbox processes (host uid SANDBOX_ID_BASE and up) must be able to traverse to
 * a rootfs, but have no business listing the templates directory.
 */
async function prepareTemplatesDir(root: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o711 });
}

async function buildLocked(root: string, name: BuildableTemplate, opts: BuildTemplateOptions): Promise<TemplateInfo> {
  const log = opts.log ?? (() => {});
  const started = Date.now();
  await removeLeftovers(root, name, log);

  const buildDir = join(root, `.${name}.build-${process.pid}`);
  const rootfs = join(buildDir, ROOTFS_DIR);
  await mkdir(buildDir, { mode: 0o755 });
  await chmod(buildDir, 0o755);
  try {
    if (name === 'tiny') {
      await populateTinyRootfs(rootfs);
    } else {
      await populateBaseRootfs(rootfs, opts.mirror ?? hostDebianMirror(), log);
    }
    await writeSandboxEtc(rootfs, DEFAULT_TEMPLATE_WORKDIR);
    const devices = await removeDeviceNodes(rootfs);
    if (devices > 0) log(`removed ${devices} device nodes (runtimes provide /dev)`);
    log(`shifting ownership by ${SANDBOX_ID_BASE}`);
    await shiftOwnership(rootfs, SANDBOX_ID_BASE, SANDBOX_ID_SIZE);
    const sizeBytes = await treeDiskUsage(rootfs);
    writeManifest(buildDir, {
      name,
      createdAt: new Date().toISOString(),
      sizeBytes,
      env: [...DEFAULT_TEMPLATE_ENV],
      workdir: DEFAULT_TEMPLATE_WORKDIR,
    });
    await swapIntoPlace(root, name, buildDir);
  } catch (e) {
    await removeTree(buildDir);
    throw e;
  }

  const info = new TemplateStore(root).info(name);
  if (!info) throw new AirlockError('internal', `template ${name} vanished right after its build`);
  log(`template ${name} ready: ${(info.sizeBytes ?? 0) >> 20} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return info;
}

/** Renames the finished build to `<root>/<name>`, moving a previous version aside and deleting it. */
async function swapIntoPlace(root: string, name: string, buildDir: string): Promise<void> {
  const target = join(root, name);
  const old = join(root, `.${name}.old-${process.pid}`);
  let hadOld = false;
  try {
    await rename(target, old);
    hadOld = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  try {
    await rename(buildDir, target);
  } catch (e) {
    if (hadOld) await rename(old, target);
    throw e;
  }
  if (hadOld) await removeTree(old);
}

/** Build and swap directories of `name` left by a killed builder (we hold the lock, so none is live). */
async function removeLeftovers(root: string, name: string, log: (line: string) => void): Promise<void> {
  for (const entry of await readdir(root)) {
    if (entry.startsWith(`.${name}.build-`) || entry.startsWith(`.${name}.old-`)) {
      log(`removing leftover ${entry}`);
      await removeTree(join(root, entry));
    }
  }
}

async function removeTree(path: string): Promise<void> {
  await unmountUnder(path);
  await rm(path, { recursive: true, force: true });
}
