import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { conflict, notFound } from '../errors.js';
import { acquireBuildLock } from './build-lock.js';
import { TemplateLayout } from './layout.js';
import { collectGarbage, prepareStoreDirs, removeTree, type GcResult } from './layer-store.js';
import { TemplateStore, validateTemplateName } from './template-store.js';

export interface RemoveTemplateOptions {
  /** Live sandboxes using the template, as the caller's store knows them: above 0 refuses. */
  inUse?: number;
  log?: (line: string) => void;
}

/**
 * Removes template `name` (its manifest directory first, in one rename, so it stops resolving
 * at once), then garbage-collects the layers nothing else uses. Refused (conflict) while
 * `inUse` > 0 or while the name is being built. Layers still mounted by a sandbox of another
 * data dir sharing these templates are kept until a later collection.
 */
export async function removeTemplate(dir: string, name: string, opts: RemoveTemplateOptions = {}): Promise<GcResult> {
  validateTemplateName(name, 'name');
  if ((opts.inUse ?? 0) > 0) {
    throw conflict(`template ${name} is used by ${opts.inUse} live sandbox${opts.inUse === 1 ? '' : 'es'}; kill them first`);
  }
  const layout = new TemplateLayout(dir);
  const store = new TemplateStore(layout.root);
  const manifest = store.manifest(name);
  if (!manifest) throw notFound('template', name);
  if (!manifest.layers && isMounted(layout.legacyRootfs(name))) {
    // An old-layout template has no layers for garbage collection to keep: its directory is the mounted lower.
    throw conflict(`template ${name} is mounted by a running sandbox; kill it first`);
  }
  await prepareStoreDirs(layout);
  const release = await acquireBuildLock(layout.tmpDir, `name-${name}`, 0);
  try {
    const trash = join(layout.tmpDir, `trash-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(layout.templateDir(name), trash);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound('template', name);
      throw e;
    }
    opts.log?.(`removed template ${name}`);
    await removeTree(trash);
  } finally {
    await release();
  }
  return collectGarbage(layout, opts.log);
}

function isMounted(path: string): boolean {
  try {
    const info = readFileSync('/proc/self/mountinfo', 'utf8');
    return info.includes(`${path}/`) || info.includes(`${path},`) || info.includes(`${path}:`);
  } catch {
    return false;
  }
}
