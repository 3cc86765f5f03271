import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIGEST_HEX_RE, MANIFEST_FILE } from './layout.js';

export { MANIFEST_FILE, ROOTFS_DIR } from './layout.js';

/** `<templatesDir>/<name>/template.json`: what a runtime needs besides the layers' files. */
export interface TemplateManifest {
  name: string;
  createdAt: string;
  /** Bytes on disk of all its layers (a layer shared with another template counts in both). */
  sizeBytes: number;
  /** `K=V` entries every process in the sandbox starts with. */
  env: string[];
  workdir: string;
  /** `sha256:<hex>` of the recipe (build) or of the image's layers and config (import). */
  digest?: string;
  /** Layer digests (hex), topmost first. Absent in the old one-directory layout. */
  layers?: string[];
  /** From an imported image's config: kept for callers, not applied by the runtime. */
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
  source?: 'recipe' | 'import';
}

export const DEFAULT_TEMPLATE_ENV: readonly string[] = [
  'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'LANG=C.UTF-8',
  'HOME=/root',
];
export const DEFAULT_TEMPLATE_WORKDIR = '/work';

/** Reads and validates a manifest; null when missing or malformed (the template is then not listed). */
export function readManifest(templateDir: string): TemplateManifest | null {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(templateDir, MANIFEST_FILE), 'utf8'));
  } catch {
    return null;
  }
  return isManifest(raw) ? raw : null;
}

/** Written under a private name and renamed into place: a reader sees the old or the new manifest, never half of one. */
export function writeManifest(templateDir: string, manifest: TemplateManifest): void {
  const tmp = join(templateDir, `.${MANIFEST_FILE}.${process.pid}.tmp`);
  writeFileSync(tmp, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o644 });
  renameSync(tmp, join(templateDir, MANIFEST_FILE));
}

const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((e) => typeof e === 'string');

function isManifest(v: unknown): v is TemplateManifest {
  if (typeof v !== 'object' || v === null) return false;
  const m = v as Record<string, unknown>;
  return typeof m.name === 'string'
    && typeof m.createdAt === 'string'
    && typeof m.sizeBytes === 'number' && Number.isFinite(m.sizeBytes)
    && isStringArray(m.env) && m.env.every((e) => e.includes('='))
    && typeof m.workdir === 'string' && m.workdir.startsWith('/')
    && (m.digest === undefined || typeof m.digest === 'string')
    && (m.layers === undefined || (isStringArray(m.layers) && m.layers.length > 0 && m.layers.every((l) => DIGEST_HEX_RE.test(l))))
    && (m.user === undefined || typeof m.user === 'string')
    && (m.entrypoint === undefined || isStringArray(m.entrypoint))
    && (m.cmd === undefined || isStringArray(m.cmd));
}
