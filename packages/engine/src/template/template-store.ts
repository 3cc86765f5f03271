import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { TemplateInfo } from '../engine-api.js';
import { badRequest, notFound } from '../errors.js';
import { readManifest, ROOTFS_DIR } from './template-manifest.js';

export const TEMPLATE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** What a runtime needs to start a sandbox from a template. */
export interface ResolvedTemplate {
  name: string;
  /** Absolute path of the read-only root filesystem (ownership shifted to SANDBOX_ID_BASE). */
  rootfs: string;
  /** The read-only layers a sandbox stacks under its writable layer, topmost first. */
  layers: string[];
  env: string[];
  workdir: string;
}

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
 * Read-only view of `<dir>/<name>/{rootfs,template.json}`. Builds happen in hidden
 * `.<name>.build-*` directories and are renamed into place, so anything visible here is
 * complete. Reads are synchronous and cheap: one manifest read per call.
 */
export class TemplateStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = resolve(dir);
  }

  list(): TemplateInfo[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    const infos: TemplateInfo[] = [];
    for (const name of names.sort()) {
      const info = this.info(name);
      if (info) infos.push(info);
    }
    return infos;
  }

  /** The listing entry of one template, null when it is missing or the name is invalid. */
  info(name: string): TemplateInfo | null {
    if (!isValidTemplateName(name)) return null;
    const m = this.load(name);
    return m ? { name, path: m.rootfs, sizeBytes: m.sizeBytes, createdAt: m.createdAt } : null;
  }

  /** null when no such template exists; bad_request for an invalid name. */
  get(name: string): ResolvedTemplate | null {
    validateTemplateName(name);
    const loaded = this.load(name);
    if (!loaded) return null;
    return { name, rootfs: loaded.rootfs, layers: [loaded.rootfs], env: loaded.env, workdir: loaded.workdir };
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

  private load(name: string) {
    const templateDir = join(this.dir, name);
    const manifest = readManifest(templateDir);
    if (!manifest || manifest.name !== name) return null;
    const rootfs = join(templateDir, ROOTFS_DIR);
    try {
      if (!statSync(rootfs).isDirectory()) return null;
    } catch {
      return null;
    }
    return { ...manifest, rootfs };
  }
}
