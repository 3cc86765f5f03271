import { createReadStream } from 'node:fs';
import { chmod, lchown, mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { canonicalJson } from '../audit/canonical-json.js';
import { SANDBOX_ID_BASE } from '../constants.js';
import { AirlockError, badRequest } from '../errors.js';
import { acquireBuildLock } from './build-lock.js';
import { openBuildLog } from './build-log.js';
import { mountBuildOverlay } from './build-overlay.js';
import { resolveDirInRoot } from './fs-in-root.js';
import { readImage, spillArchive } from './image-archive.js';
import { DEFAULT_IMPORT_LIMITS, invalidImage, type ImportLimits } from './import-limits.js';
import { ROOTFS_DIR, TemplateLayout } from './layout.js';
import {
  claimLayers, collectGarbage, commitLayer, layerPresent, makeWorkDir, prepareStoreDirs, readLayerMeta, removeTree,
} from './layer-store.js';
import { applyLayer, type AbsoluteSymlinks, type ApplyState } from './layer-tar.js';
import { BUILDER_VERSION, layerDigest, mergeEnv, sha256Hex } from './recipe-plan.js';
import { writeSandboxEtc } from './sandbox-etc.js';
import { DEFAULT_TEMPLATE_ENV, DEFAULT_TEMPLATE_WORKDIR, writeManifest } from './template-manifest.js';
import { TemplateStore, validateTemplateName, type StoredTemplateInfo } from './template-store.js';

export interface ImportTemplateOptions {
  log?: (line: string) => void;
  limits?: Partial<ImportLimits>;
  /** How long to wait for another process building or importing the same name (default 0). */
  waitMs?: number;
  /** Absolute symlinks in the image: refused (default) or stored as equivalent relative links. */
  absoluteSymlinks?: AbsoluteSymlinks;
}

/**
 * Imports an OCI image layout or `docker save` tarball (a path, or a stream such as an HTTP
 * body) as template `name`: the image's layers are applied in order into one flattened
 * layer (rules in layer-tar.ts), a finalize layer (hostname, hosts, empty resolv.conf, working
 * directory) goes on top, and the image config's Env, WorkingDir, User, Entrypoint and Cmd are
 * kept in the manifest. A rejected image leaves nothing behind: all work happens under
 * `_tmp` and only a complete import is moved into the store.
 */
export async function importTemplate(dir: string, name: string, source: string | Readable, opts: ImportTemplateOptions = {}): Promise<StoredTemplateInfo> {
  validateTemplateName(name, 'name');
  const limits: ImportLimits = { ...DEFAULT_IMPORT_LIMITS, ...opts.limits };
  const input = typeof source === 'string' ? await openTarball(source) : source;
  const layout = new TemplateLayout(dir);
  await prepareStoreDirs(layout);
  let release: (() => Promise<void>) | null = null;
  try {
    release = await acquireBuildLock(layout.tmpDir, `name-${name}`, opts.waitMs ?? 0);
  } catch (e) {
    input.destroy();
    throw e;
  }
  const log = openBuildLog(layout, name, 'import', opts.log ?? (() => {}));
  const work = await makeWorkDir(layout, 'import');
  let releaseClaim: (() => Promise<void>) | null = null;
  let committed = false;
  let failure: AirlockError | null = null;
  try {
    const started = Date.now();
    log.progress(`importing template ${name}; log: ${log.path}`);
    const blobs = join(work, 'blobs');
    await mkdir(blobs, { mode: 0o700 });
    const archive = await spillArchive(input, blobs, limits);
    const image = await readImage(archive);
    log.progress(`${image.format === 'oci' ? 'OCI image layout' : 'docker save archive'}, ${image.layers.length} layer${image.layers.length === 1 ? '' : 's'}`);

    const rootfs = join(work, ROOTFS_DIR);
    await mkdir(rootfs, { mode: 0o755 });
    await lchown(rootfs, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
    await chmod(rootfs, 0o755);
    const state: ApplyState = { unpackedBytes: 0, entries: 0, absoluteSymlinks: opts.absoluteSymlinks ?? 'reject' };
    const diffIds: string[] = [];
    for (const [i, l] of image.layers.entries()) {
      const label = `layer ${i + 1}/${image.layers.length}`;
      const diffId = await applyLayer(rootfs, l.file.path, label, limits, state);
      const expected = image.config.diffIds?.length === image.layers.length ? image.config.diffIds[i] : undefined;
      if (expected !== undefined && expected !== diffId) throw invalidImage(`${label}: content does not match the config's diff_id sha256:${expected}`);
      diffIds.push(diffId);
      log.progress(`[${i + 1}/${image.layers.length}] applied (${state.entries} entries, ${(state.unpackedBytes / 2 ** 20).toFixed(1)} MiB so far)`);
    }
    await rm(blobs, { recursive: true, force: true });

    const c = image.config;
    const env = mergeEnv([...DEFAULT_TEMPLATE_ENV], c.env);
    const workdir = c.workingDir ?? DEFAULT_TEMPLATE_WORKDIR;
    const importHex = layerDigest(null, { kind: 'import', diffIds });
    const finalizeHex = layerDigest(importHex, { kind: 'finalize', workdir });
    const digest = `sha256:${sha256Hex(canonicalJson({
      builder: BUILDER_VERSION, kind: 'import', diffIds, env, workdir, user: c.user, entrypoint: c.entrypoint, cmd: c.cmd,
    }))}`;
    releaseClaim = await claimLayers(layout, [importHex, finalizeHex]);
    committed = true;
    await commitLayer(layout, importHex, rootfs, { parent: null, step: `import of ${image.layers.length} image layers` });
    if (!layerPresent(layout, finalizeHex)) {
      const fwork = join(work, 'finalize');
      await mkdir(fwork, { mode: 0o711 });
      const overlay = await mountBuildOverlay(fwork, [layout.layerRootfs(importHex)]);
      try {
        await writeSandboxEtc(overlay.merged, workdir);
        if (workdir !== DEFAULT_TEMPLATE_WORKDIR) await resolveDirInRoot(overlay.merged, DEFAULT_TEMPLATE_WORKDIR, true);
      } finally {
        await overlay.close();
      }
      await commitLayer(layout, finalizeHex, overlay.upper, { parent: importHex, step: `finalize (workdir ${workdir})` });
    }

    const layers = [finalizeHex, importHex];
    const sizeBytes = layers.reduce((sum, hex) => sum + (readLayerMeta(layout, hex)?.sizeBytes ?? 0), 0);
    await mkdir(layout.templateDir(name), { recursive: true, mode: 0o755 });
    writeManifest(layout.templateDir(name), {
      name, createdAt: new Date().toISOString(), sizeBytes, env, workdir, digest, layers, source: 'import',
      ...(c.user !== null ? { user: c.user } : {}),
      ...(c.entrypoint !== null ? { entrypoint: c.entrypoint } : {}),
      ...(c.cmd !== null ? { cmd: c.cmd } : {}),
    });
    log.progress(`template ${name} ready: ${digest.slice(0, 19)}, ${(sizeBytes / 2 ** 20).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    input.destroy();
    failure = e instanceof AirlockError ? e : new AirlockError('internal', `import of ${name} failed: ${(e as Error).message}`);
  } finally {
    await removeTree(work).catch(() => {});
    await releaseClaim?.();
    log.close();
    // A refused image leaves nothing: not even its log (the error says why).
    if (failure) await rm(log.path, { force: true });
    await release();
  }
  if (committed) {
    // Replaced layers of an earlier import of this name, or this import's own when it failed late.
    await collectGarbage(layout, (l) => opts.log?.(l)).catch((e: Error) => opts.log?.(`garbage collection failed: ${e.message}`));
  }
  if (failure) throw failure;
  const info = new TemplateStore(layout.root).info(name);
  if (!info) throw new AirlockError('internal', `template ${name} vanished right after its import`);
  return info;
}

async function openTarball(path: string): Promise<Readable> {
  try {
    if (!(await stat(path)).isFile()) throw badRequest(`${path} is not a file`, 'image');
  } catch (e) {
    if (e instanceof AirlockError) throw e;
    throw badRequest(`image tarball ${path}: no such file`, 'image');
  }
  return createReadStream(path);
}
