import { createHash } from 'node:crypto';
import { canonicalJson } from '../audit/canonical-json.js';
import { BUSYBOX_PATH } from './tiny-rootfs.js';
import { sha256File, type Recipe } from './recipe.js';
import { DEFAULT_TEMPLATE_ENV } from './template-manifest.js';

/**
 * Bumped whenever what a step produces changes for the same input (the way debootstrap output
 * is trimmed, the files every template gets): every digest changes with it, so stale layers
 * are not reused and scripts/ensure-templates.mjs rebuilds the built-in templates.
 */
export const BUILDER_VERSION = 'airlock-template-2';

export type StepKind = 'debootstrap' | 'busybox' | 'packages' | 'files' | 'run' | 'finalize';

export interface PlannedStep {
  kind: StepKind;
  /** Digest (hex) of the layer this step produces: it chains the parent's digest. */
  hex: string;
  parent: string | null;
  /** One line for people. */
  title: string;
  /** What the digest is computed over, besides the parent and the builder version. */
  descriptor: Record<string, unknown>;
}

export interface RecipePlan {
  /** `sha256:<hex>` of the canonical recipe and the copied files' digests. */
  digest: string;
  /** Bottom layer first. */
  steps: PlannedStep[];
  /** `K=V`, the defaults overridden by the recipe's env. */
  env: string[];
  workdir: string;
  recipe: Recipe;
}

export const sha256Hex = (s: string) => createHash('sha256').update(s).digest('hex');

export function layerDigest(parent: string | null, descriptor: Record<string, unknown>): string {
  return sha256Hex(canonicalJson({ builder: BUILDER_VERSION, parent, step: descriptor }));
}

/** `K=V` defaults, each overridden by a later list's entry with the same key. */
export function mergeEnv(...lists: string[][]): string[] {
  const byKey = new Map<string, string>();
  for (const list of lists) for (const kv of list) byKey.set(kv.slice(0, kv.indexOf('=')), kv);
  return [...byKey.values()];
}

/**
 * The layers a recipe makes, bottom first: the bootstrap (debootstrap or busybox), then the
 * packages, the files, one layer per run command, and the finalize layer (hostname, hosts,
 * empty resolv.conf, working directory). A step absent from the recipe makes no layer. Equal
 * prefixes give equal digests, so a recipe that extends another reuses its layers.
 */
export async function planRecipe(recipe: Recipe): Promise<RecipePlan> {
  const env = mergeEnv([...DEFAULT_TEMPLATE_ENV], Object.entries(recipe.env).map(([k, v]) => `${k}=${v}`));
  const steps: PlannedStep[] = [];
  const add = (kind: StepKind, title: string, descriptor: Record<string, unknown>) => {
    const parent = steps.at(-1)?.hex ?? null;
    steps.push({ kind, hex: layerDigest(parent, { kind, ...descriptor }), parent, title, descriptor: { kind, ...descriptor } });
  };

  if (recipe.bootstrap === 'busybox') {
    add('busybox', 'busybox', { busybox: await sha256File(BUSYBOX_PATH) });
  } else {
    add('debootstrap', `debootstrap ${recipe.suite} ${recipe.variant}`, { suite: recipe.suite, variant: recipe.variant });
  }
  if (recipe.packages.length > 0) {
    add('packages', `apt-get install ${recipe.packages.length} packages`, { packages: recipe.packages });
  }
  if (recipe.files.length > 0) {
    add('files', `copy ${recipe.files.length} file${recipe.files.length === 1 ? '' : 's'}`, {
      files: recipe.files.map((f) => ({ dest: f.dest, mode: f.mode, sha256: f.sha256 })),
    });
  }
  for (const cmd of recipe.run) {
    // Run steps see the template's env, so it is part of what they produce.
    add('run', `run: ${oneLine(cmd)}`, { cmd, env });
  }
  add('finalize', `finalize (workdir ${recipe.workdir})`, { workdir: recipe.workdir });

  const canonical = {
    ...recipe,
    files: recipe.files.map((f) => ({ src: f.src, dest: f.dest, mode: f.mode, sha256: f.sha256 })),
  };
  const digest = `sha256:${sha256Hex(canonicalJson({ builder: BUILDER_VERSION, recipe: canonical, bootstrap: steps[0]!.descriptor }))}`;
  return { digest, steps, env, workdir: recipe.workdir, recipe };
}

function oneLine(cmd: string): string {
  const flat = cmd.replace(/\s+/g, ' ').trim();
  return flat.length > 72 ? `${flat.slice(0, 69)}...` : flat;
}
