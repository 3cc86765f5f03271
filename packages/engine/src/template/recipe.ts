import { createHash } from 'node:crypto';
import { createReadStream, realpathSync } from 'node:fs';
import { lstat, readFile, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { badRequest } from '../errors.js';
import { components } from './fs-in-root.js';
import { DEFAULT_TEMPLATE_WORKDIR } from './template-manifest.js';

/**
 * A template recipe (YAML or JSON):
 *
 *   bootstrap: debootstrap        # or busybox: the host's static busybox, no Debian
 *   suite: bookworm               # debootstrap only
 *   variant: minbase              # debootstrap only
 *   packages: [python3, git]      # Debian packages, installed with apt-get in one layer
 *   files:                        # copied from the recipe's directory, in one layer
 *     - {src: app/main.py, dest: /opt/app/main.py, mode: "0644"}
 *   run: ["pip install x"]        # each a layer, run by /bin/sh -c inside the template
 *   env: {K: V}                   # for run steps and every sandbox process
 *   workdir: /work
 *
 * Parsed as YAML 1.1, so `mode: 0755` is octal as people mean it.
 */

const MAX_RECIPE_BYTES = 1024 * 1024;
const MAX_RUN_STEPS = 32;

const PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]*(?:[=/][A-Za-z0-9.+~:_-]+)?$/;
const SUITE_RE = /^[a-z][a-z0-9-]{1,31}$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

const noNul = (s: string) => !s.includes('\0');
const absPath = z.string().min(1).max(4096)
  .refine((p) => p.startsWith('/'), 'must be an absolute path')
  .refine(noNul, 'must not contain NUL')
  .refine((p) => !p.split('/').includes('..'), "must not contain '..'");

const fileMode = z.union([
  z.number().int().min(0).max(0o7777),
  z.string().regex(/^(0o?)?[0-7]{1,4}$/, 'must be an octal mode such as "0644"').transform((s) => parseInt(s.replace(/^0o/, ''), 8)),
]);

const fileSchema = z.strictObject({
  src: z.string().min(1).max(4096)
    .refine((p) => !isAbsolute(p), 'must be relative to the recipe\'s directory')
    .refine((p) => !p.split(/[/\\]/).includes('..'), "must not contain '..'")
    .refine(noNul, 'must not contain NUL'),
  dest: absPath.refine((p) => components(p).length > 0 && !p.endsWith('/'), 'must name a file'),
  mode: fileMode.default(0o644),
});

export const recipeSchema = z.strictObject({
  description: z.string().max(1000).optional(),
  bootstrap: z.enum(['debootstrap', 'busybox']).default('debootstrap'),
  suite: z.string().regex(SUITE_RE, 'must be a Debian suite name such as bookworm').optional(),
  variant: z.enum(['minbase', 'buildd', 'default']).optional(),
  packages: z.array(z.string().regex(PACKAGE_RE, 'must be a Debian package name')).max(2000).default([]),
  files: z.array(fileSchema).max(1000).default([]),
  run: z.array(z.string().min(1).max(64 * 1024).refine(noNul, 'must not contain NUL')).max(MAX_RUN_STEPS).default([]),
  env: z.record(z.string().regex(ENV_KEY_RE, 'must be a shell-style variable name').max(256), z.any()).default({}),
  workdir: absPath.default(DEFAULT_TEMPLATE_WORKDIR),
});

export interface RecipeFile {
  src: string;
  dest: string;
  mode: number;
  /** Host path, resolved inside the recipe directory. */
  hostPath: string;
  sha256: string;
}

/** A validated recipe with every default filled in: the form its digest is computed over. */
export interface Recipe {
  bootstrap: 'debootstrap' | 'busybox';
  suite: string | null;
  variant: string | null;
  packages: string[];
  files: RecipeFile[];
  run: string[];
  env: Record<string, string>;
  workdir: string;
}

export const DEFAULT_SUITE = 'bookworm';
export const DEFAULT_VARIANT = 'minbase';

/**
 * Validates a recipe (text in YAML or JSON, or an already parsed object). `recipeDir` is where
 * `files[].src` are found; without it a recipe may not copy files. Every error is a
 * bad_request naming the field ("packages.2: must be a Debian package name").
 */
export async function parseRecipe(input: string | unknown, recipeDir: string | null): Promise<Recipe> {
  let raw: unknown = input;
  if (typeof input === 'string') {
    if (Buffer.byteLength(input) > MAX_RECIPE_BYTES) throw badRequest(`recipe: larger than ${MAX_RECIPE_BYTES} bytes`, 'recipe');
    try {
      raw = parseYaml(input, { version: '1.1', maxAliasCount: 100 });
    } catch (e) {
      throw badRequest(`recipe: not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`, 'recipe');
    }
  }
  if (raw === null || raw === undefined) raw = {};
  const r = recipeSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue ? issue.path.map(String).join('.') : '';
    throw badRequest(`recipe ${field || 'body'}: ${issue?.message ?? 'invalid'}`, field || 'recipe');
  }
  const v = r.data;
  if (v.bootstrap === 'busybox') {
    for (const k of ['suite', 'variant'] as const) {
      if (v[k] !== undefined) throw badRequest(`recipe ${k}: only for bootstrap: debootstrap`, k);
    }
    if (v.packages.length > 0) throw badRequest('recipe packages: Debian packages need bootstrap: debootstrap', 'packages');
  }
  const env: Record<string, string> = {};
  for (const [k, val] of Object.entries(v.env)) {
    if (typeof val === 'string' && noNul(val) && val.length <= 128 * 1024) env[k] = val;
    else if (typeof val === 'number' && Number.isFinite(val)) env[k] = String(val);
    else throw badRequest(`recipe env.${k}: must be a string (quote it: YAML reads yes/no/on/off as booleans)`, `env.${k}`);
  }
  if (v.files.length > 0 && !recipeDir) {
    throw badRequest('recipe files: copying files needs the recipe\'s directory; build from a recipe file on the Airlock host (airlock template build NAME --file recipe.yaml)', 'files');
  }
  const files: RecipeFile[] = [];
  for (const [i, f] of v.files.entries()) files.push(await resolveRecipeFile(recipeDir as string, f, `files.${i}.src`));
  return {
    bootstrap: v.bootstrap,
    suite: v.bootstrap === 'debootstrap' ? v.suite ?? DEFAULT_SUITE : null,
    variant: v.bootstrap === 'debootstrap' ? v.variant ?? DEFAULT_VARIANT : null,
    packages: [...new Set(v.packages)].sort(),
    files,
    run: v.run,
    env,
    workdir: v.workdir,
  };
}

/** Reads a recipe file; its directory is where its files come from. */
export async function loadRecipeFile(file: string): Promise<Recipe> {
  const path = resolve(file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw badRequest(`recipe file ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, 'file');
  }
  return parseRecipe(text, dirname(path));
}

/** A file to copy must be a regular file inside the recipe's directory, after resolving every link. */
async function resolveRecipeFile(recipeDir: string, f: { src: string; dest: string; mode: number }, field: string): Promise<RecipeFile> {
  const base = await realpath(recipeDir);
  let hostPath: string;
  try {
    hostPath = await realpath(join(base, f.src));
  } catch {
    throw badRequest(`recipe ${field}: ${f.src} does not exist in ${recipeDir}`, field);
  }
  if (hostPath !== base && !hostPath.startsWith(base + sep)) {
    throw badRequest(`recipe ${field}: ${f.src} leads outside the recipe's directory`, field);
  }
  const st = await lstat(hostPath);
  if (!st.isFile()) throw badRequest(`recipe ${field}: ${f.src} is not a regular file`, field);
  return { src: f.src, dest: f.dest, mode: f.mode, hostPath, sha256: await sha256File(hostPath) };
}

export function sha256File(path: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    createReadStream(path).on('data', (b) => h.update(b)).on('error', rej).on('end', () => res(h.digest('hex')));
  });
}

/** packages/engine/templates: the built-in recipes (base.yaml, tiny.yaml). */
export function builtinRecipesDir(): string {
  // dist/src/template/recipe.js → packages/engine; realpath: Node may load it through a workspace link.
  const here = dirname(realpathSync(fileURLToPath(import.meta.url)));
  return resolve(here, '../../../templates');
}

export const BUILTIN_RECIPES: readonly string[] = ['base', 'tiny'];

export function builtinRecipePath(name: string): string | null {
  return BUILTIN_RECIPES.includes(name) ? join(builtinRecipesDir(), `${name}.yaml`) : null;
}
