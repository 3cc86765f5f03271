import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lchown, mkdir, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SANDBOX_ID_BASE, SANDBOX_ID_SIZE } from '../constants.js';
import { AirlockError, badRequest } from '../errors.js';
import { acquireBuildLock } from './build-lock.js';
import { openBuildLog, type BuildLog } from './build-log.js';
import { mountBuildOverlay } from './build-overlay.js';
import { runBuildStep } from './build-container.js';
import { debootstrapRootfs } from './debootstrap-rootfs.js';
import { hostDebianMirror } from './debian-mirror.js';
import { components, resolveDirInRoot } from './fs-in-root.js';
import { ROOTFS_DIR, TemplateLayout } from './layout.js';
import {
  claimLayers, collectGarbage, commitLayer, layerPresent, makeWorkDir, prepareStoreDirs, readLayerMeta, removeTree,
} from './layer-store.js';
import { builtinRecipePath, loadRecipeFile, parseRecipe, type Recipe } from './recipe.js';
import { planRecipe, type PlannedStep, type RecipePlan } from './recipe-plan.js';
import { removeDeviceNodes, shiftOwnership } from './rootfs-tree.js';
import { writeSandboxEtc } from './sandbox-etc.js';
import { DEFAULT_TEMPLATE_WORKDIR, writeManifest } from './template-manifest.js';
import { TemplateStore, validateTemplateName, type StoredTemplateInfo } from './template-store.js';
import { populateTinyRootfs } from './tiny-rootfs.js';

export { BUILTIN_RECIPES } from './recipe.js';

export interface BuildTemplateOptions {
  /** Recipe text (YAML or JSON) or a parsed object. Without recipe and file: the built-in recipe of that name. */
  recipe?: string | Record<string, unknown>;
  /** Where `files[].src` of `recipe` are found; none: the recipe may not copy files. */
  recipeDir?: string;
  /** A recipe file; its directory is the recipe directory. */
  file?: string;
  /** Progress, one line at a time. */
  log?: (line: string) => void;
  /** Debian mirror for debootstrap; default: the one the host's apt sources use. */
  mirror?: string;
  /** Rebuild the template even when its digest is unchanged (its layers are still reused). */
  force?: boolean;
  /** Bound on each run step (default 30 min). */
  stepTimeoutMs?: number;
  /** How long to wait for another process building the same name (default 0: fail at once). */
  waitMs?: number;
  /** OCI runtime for run steps (default as the engine picks). */
  runtime?: string;
}

export type EnsureTemplateOptions = Omit<BuildTemplateOptions, 'recipe' | 'recipeDir' | 'file' | 'force'>;

const DEFAULT_STEP_TIMEOUT_MS = 30 * 60_000;
/** Room for the lowerdir list in a mount's option page (4096 bytes), leaving some for upperdir and workdir. */
const MAX_LAYER_STACK_CHARS = 3072;
const LAYER_WAIT_MS = 60 * 60_000;

/** Debian packages in one apt-get run; apt's lists and caches are not kept in the layer. */
const PACKAGES_SCRIPT = [
  'set -eu',
  'apt-get update -q',
  'apt-get install -y -q --no-install-recommends "$@"',
  'apt-get clean',
  'rm -rf /var/lib/apt/lists/*',
].join('\n');

/** Resolves what to build: an explicit recipe, a recipe file, or the built-in recipe of `name`. */
export async function resolveRecipe(name: string, opts: Pick<BuildTemplateOptions, 'recipe' | 'recipeDir' | 'file'>): Promise<Recipe> {
  if (opts.recipe !== undefined && opts.file !== undefined) throw badRequest('give a recipe or a recipe file, not both', 'recipe');
  if (opts.recipe !== undefined) return parseRecipe(opts.recipe, opts.recipeDir ?? null);
  if (opts.file !== undefined) return loadRecipeFile(opts.file);
  const builtin = builtinRecipePath(name);
  if (!builtin) throw badRequest(`no built-in recipe for template ${JSON.stringify(name)} (built-in: base, tiny): give a recipe file`, 'recipe');
  return loadRecipeFile(builtin);
}

/** The digest the built-in recipe `name` has now (what ensureTemplate compares with the installed template's). */
export async function builtinRecipeDigest(name: string): Promise<string> {
  return (await planRecipe(await resolveRecipe(name, {}))).digest;
}

/**
 * Builds template `name` from a recipe into the templates directory `dir`. Each step's layer is
 * looked up by its digest first and built only when missing; the template's manifest is
 * written last, by rename, so sandboxes see the old template or the new one, never a mix.
 * An unchanged recipe (same digest, layers present) is not rebuilt unless `force`.
 * Sandboxes running on a replaced template keep their layers (garbage collection skips
 * layers that are mounted).
 */
export async function buildTemplate(dir: string, name: string, opts: BuildTemplateOptions = {}): Promise<StoredTemplateInfo> {
  validateTemplateName(name, 'name');
  const recipe = await resolveRecipe(name, opts);
  const plan = await planRecipe(recipe);
  const layout = new TemplateLayout(dir);
  // Sandboxes pass the layer list to overlayfs in one mount option string, which the kernel caps at a page.
  const stack = plan.steps.reduce((n, st) => n + layout.layerRootfs(st.hex).length + 1, 0);
  if (stack > MAX_LAYER_STACK_CHARS) {
    throw badRequest(`recipe run: ${plan.steps.length} layers are too many to stack in one overlay mount here; combine run steps`, 'run');
  }
  await prepareStoreDirs(layout);
  const release = await acquireBuildLock(layout.tmpDir, `name-${name}`, opts.waitMs ?? 0);
  try {
    const store = new TemplateStore(layout.root);
    const current = store.manifest(name);
    if (!opts.force && current?.digest === plan.digest) {
      opts.log?.(`template ${name} is up to date (${plan.digest.slice(0, 19)})`);
      return store.info(name)!;
    }
    return await buildLocked(layout, name, plan, opts);
  } finally {
    await release();
  }
}

/**
 * Builds built-in template `name` when it is missing or its recipe's digest changed (an older
 * Airlock's template, or an edited recipe); otherwise returns it. Waits out a concurrent builder.
 */
export async function ensureTemplate(dir: string, name: string, opts: EnsureTemplateOptions = {}): Promise<StoredTemplateInfo> {
  validateTemplateName(name, 'name');
  const store = new TemplateStore(dir);
  const digest = await builtinRecipeDigest(name);
  const present = store.info(name);
  if (present && present.digest === digest) return present;
  return buildTemplate(dir, name, { ...opts, waitMs: opts.waitMs ?? 20 * 60_000 });
}

async function buildLocked(layout: TemplateLayout, name: string, plan: RecipePlan, opts: BuildTemplateOptions): Promise<StoredTemplateInfo> {
  const log = openBuildLog(layout, name, 'build', opts.log ?? (() => {}));
  const started = Date.now();
  const releaseClaim = await claimLayers(layout, plan.steps.map((s) => s.hex));
  try {
    log.progress(`building template ${name} (${plan.digest.slice(0, 19)}), ${plan.steps.length} layers; log: ${log.path}`);
    for (const [i, step] of plan.steps.entries()) {
      const tag = `[${i + 1}/${plan.steps.length}] ${step.title}`;
      if (layerPresent(layout, step.hex)) {
        log.progress(`${tag}: reusing layer ${step.hex.slice(0, 12)}`);
        continue;
      }
      await buildLayer(layout, plan, i, tag, log, opts);
    }
    const layers = plan.steps.map((s) => s.hex).reverse();
    const sizeBytes = layers.reduce((sum, hex) => sum + (readLayerMeta(layout, hex)?.sizeBytes ?? 0), 0);
    await mkdir(layout.templateDir(name), { recursive: true, mode: 0o755 });
    writeManifest(layout.templateDir(name), {
      name,
      createdAt: new Date().toISOString(),
      sizeBytes,
      env: plan.env,
      workdir: plan.workdir,
      digest: plan.digest,
      layers,
      source: 'recipe',
    });
    log.progress(`template ${name} ready: ${plan.digest.slice(0, 19)}, ${(sizeBytes / 2 ** 20).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    log.progress(`build of ${name} failed: ${(e as Error).message}`);
    throw e;
  } finally {
    await releaseClaim();
    log.close();
  }
  await collectGarbage(layout, (l) => opts.log?.(l)).catch((e: Error) => opts.log?.(`garbage collection failed: ${e.message}`));
  const info = new TemplateStore(layout.root).info(name);
  if (!info) throw new AirlockError('internal', `template ${name} vanished right after its build`);
  return info;
}

/** One layer, under a per-digest lock so two builds sharing a step build it once. */
async function buildLayer(layout: TemplateLayout, plan: RecipePlan, index: number, tag: string, log: BuildLog, opts: BuildTemplateOptions): Promise<void> {
  const step = plan.steps[index]!;
  const release = await acquireBuildLock(layout.tmpDir, `layer-${step.hex}`, LAYER_WAIT_MS);
  try {
    if (layerPresent(layout, step.hex)) {
      log.progress(`${tag}: reusing layer ${step.hex.slice(0, 12)} (built meanwhile)`);
      return;
    }
    log.progress(`${tag}: building layer ${step.hex.slice(0, 12)}`);
    const started = Date.now();
    const work = await makeWorkDir(layout, 'build');
    try {
      const rootfs = await produceLayer(layout, plan, index, work, log, opts);
      await commitLayer(layout, step.hex, rootfs, { parent: step.parent, step: step.title });
    } finally {
      await removeTree(work);
    }
    log.progress(`${tag}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await release();
  }
}

/** Builds a step's files into `<work>/rootfs` and returns that path. */
async function produceLayer(layout: TemplateLayout, plan: RecipePlan, index: number, work: string, log: BuildLog, opts: BuildTemplateOptions): Promise<string> {
  const step = plan.steps[index]!;
  const rootfs = join(work, ROOTFS_DIR);
  const out = (line: string) => log.output(line);
  if (step.kind === 'debootstrap' || step.kind === 'busybox') {
    if (step.kind === 'busybox') {
      await populateTinyRootfs(rootfs);
    } else {
      await debootstrapRootfs(rootfs, {
        suite: plan.recipe.suite as string, variant: plan.recipe.variant as string, mirror: opts.mirror ?? hostDebianMirror(),
      }, out);
      const devices = await removeDeviceNodes(rootfs);
      if (devices > 0) out(`removed ${devices} device nodes (runtimes provide /dev)`);
    }
    out(`shifting ownership by ${SANDBOX_ID_BASE}`);
    await shiftOwnership(rootfs, SANDBOX_ID_BASE, SANDBOX_ID_SIZE);
    return rootfs;
  }

  // Every other step works on an overlay of its parents and keeps only what it changed.
  const lowers = plan.steps.slice(0, index).reverse().map((s) => layout.layerRootfs(s.hex));
  const overlay = await mountBuildOverlay(work, lowers);
  try {
    await applyStep(step, plan, overlay.merged, work, out, opts);
  } finally {
    await overlay.close();
  }
  return overlay.upper;
}

async function applyStep(step: PlannedStep, plan: RecipePlan, merged: string, work: string, out: (line: string) => void, opts: BuildTemplateOptions): Promise<void> {
  const buildEnv = [...plan.env, 'DEBIAN_FRONTEND=noninteractive'];
  const timeoutMs = opts.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  switch (step.kind) {
    case 'packages':
      await runBuildStep({
        rootfs: merged, workDir: work, env: buildEnv, log: out, timeoutMs, runtime: opts.runtime,
        args: ['/bin/sh', '-c', PACKAGES_SCRIPT, 'airlock-packages', ...plan.recipe.packages],
      });
      return;
    case 'run':
      await runBuildStep({
        rootfs: merged, workDir: work, env: buildEnv, log: out, timeoutMs, runtime: opts.runtime,
        args: ['/bin/sh', '-c', step.descriptor['cmd'] as string],
      });
      return;
    case 'files':
      for (const f of plan.recipe.files) {
        out(`${f.src} -> ${f.dest} (${f.mode.toString(8).padStart(4, '0')})`);
        await copyIntoRoot(merged, f.hostPath, f.dest, f.mode, f.sha256);
      }
      return;
    case 'finalize':
      await writeSandboxEtc(merged, plan.workdir);
      // Every template has /work, the default working directory of a sandbox.
      if (plan.workdir !== DEFAULT_TEMPLATE_WORKDIR) await resolveDirInRoot(merged, DEFAULT_TEMPLATE_WORKDIR, true);
      return;
    default:
      throw new AirlockError('internal', `step ${step.kind} does not run on an overlay`);
  }
}

/**
 * Copies a recipe file to `dest` inside the template. The content is hashed as it is copied
 * and must match what the digest was computed over (the file may not change mid-build).
 */
async function copyIntoRoot(root: string, src: string, dest: string, mode: number, sha256: string): Promise<void> {
  const parts = components(dest);
  const name = parts.pop() as string;
  const dir = await resolveDirInRoot(root, parts.join('/'), true);
  const target = join(dir, name);
  await rm(target, { recursive: true, force: true });
  const hash = createHash('sha256');
  await pipeline(
    createReadStream(src),
    new Transform({ transform(chunk: Buffer, _enc, cb) { hash.update(chunk); cb(null, chunk); } }),
    createWriteStream(target, { flags: 'wx', mode: 0o600 }),
  );
  if (hash.digest('hex') !== sha256) {
    await rm(target, { force: true });
    throw badRequest(`recipe file ${basename(src)} changed during the build; build again`, 'files');
  }
  await lchown(target, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
  await chmod(target, mode);
}
