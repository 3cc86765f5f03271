import { readdirSync, statSync } from 'node:fs';
import type { TemplateInfo } from '../engine-api.js';
import { badRequest, notFound } from '../errors.js';
import { TemplateLayout } from './layout.js';
import { readManifest, type TemplateManifest } from './template-manifest.js';

export const TEMPLATE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** What a runtime needs to start a sandbox from a template. */
export interface ResolvedTemplate {
  name: string;
  /** The topmost layer's directory (ownership shifted to SANDBOX_ID_BASE). */
  rootfs: string;
  /** The read-only layers a sandbox stacks under its writable layer, topmost first (absolute paths). */
  layers: string[];
  env: string[];
  workdir: string;
  digest: string | null;
  /** From an imported image's config; empty/absent otherwise. */
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

/** A listing entry as the store knows it; the engine adds how many live sandboxes use it. */
export type StoredTemplateInfo = Omit<TemplateInfo, 'inUse'>;

export function isValidTemplateName(name: string): boolean {
  return TEMPLATE_NAME_RE.test(name);
}

/** Throws bad_request for a name that could never be a template (it is also a path component). */
export function validateTemplateName(name: string, field = 'template'): string {
  if (typeof name !== 'string' || !isValidTemplateName(name)) {
    throw badRequest(`invalid template name ${JSON.stringify(name)}: want ${TEMPLATE_NAME_RE.source}`, field);
  }
  return name;
}

/**
 * Read-only view of the templates directory (layout.ts describes it). A manifest is written
 * last, by rename, after every layer it names is in place, so anything visible here is
 * complete. Reads are synchronous and cheap: one manifest read and a stat per layer.
 */
export class TemplateStore {
  readonly dir: string;
  readonly layout: TemplateLayout;

  constructor(dir: string) {
    this.layout = new TemplateLayout(dir);
    this.dir = this.layout.root;
  }

  list(): StoredTemplateInfo[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    const infos: StoredTemplateInfo[] = [];
    for (const name of names.sort()) {
      const info = this.info(name);
      if (info) infos.push(info);
    }
    return infos;
  }

  /** The listing entry of one template, null when it is missing or the name is invalid. */
  info(name: string): StoredTemplateInfo | null {
    if (!isValidTemplateName(name)) return null;
    const m = this.load(name);
    return m ? {
      name, path: m.layerPaths[0]!, sizeBytes: m.sizeBytes, createdAt: m.createdAt, digest: m.digest ?? null, layers: m.layerPaths.length,
    } : null;
  }

  /** The manifest as stored (layer digests, not paths); null when missing or incomplete. */
  manifest(name: string): TemplateManifest | null {
    if (!isValidTemplateName(name)) return null;
    return this.load(name);
  }

  /** null when no such template exists; bad_request for an invalid name. */
  get(name: string): ResolvedTemplate | null {
    validateTemplateName(name);
    const loaded = this.load(name);
    if (!loaded) return null;
    const t: ResolvedTemplate = {
      name, rootfs: loaded.layerPaths[0]!, layers: loaded.layerPaths, env: loaded.env, workdir: loaded.workdir, digest: loaded.digest ?? null,
    };
    if (loaded.user !== undefined) t.user = loaded.user;
    if (loaded.entrypoint !== undefined) t.entrypoint = loaded.entrypoint;
    if (loaded.cmd !== undefined) t.cmd = loaded.cmd;
    return t;
  }

  /** Like get, but a missing template is a not_found error. */
  require(name: string): ResolvedTemplate {
    const t = this.get(name);
    if (!t) throw notFound('template', name);
    return t;
  }

  /** false for missing templates and for names that are not valid template names. */
  has(name: string): boolean {
    return isValidTemplateName(name) && this.load(name) !== null;
  }

  private load(name: string): (TemplateManifest & { layerPaths: string[] }) | null {
    const manifest = readManifest(this.layout.templateDir(name));
    if (!manifest || manifest.name !== name) return null;
    const layerPaths = manifest.layers
      ? manifest.layers.map((hex) => this.layout.layerRootfs(hex))
      : [this.layout.legacyRootfs(name)];
    for (const p of layerPaths) if (!isDir(p)) return null;
    return { ...manifest, layerPaths };
  }
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
