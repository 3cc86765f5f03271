import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** `<templatesDir>/<name>/template.json`: what a runtime needs besides the rootfs. */
export interface TemplateManifest {
  name: string;
  createdAt: string;
  sizeBytes: number;
  /** `K=V` entries every process in the sandbox starts with. */
  env: string[];
  workdir: string;
  digest?: string;
}

export const MANIFEST_FILE = 'template.json';
export const ROOTFS_DIR = 'rootfs';

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

export function writeManifest(templateDir: string, manifest: TemplateManifest): void {
  writeFileSync(join(templateDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o644 });
}

function isManifest(v: unknown): v is TemplateManifest {
  if (typeof v !== 'object' || v === null) return false;
  const m = v as Record<string, unknown>;
  return typeof m.name === 'string'
    && typeof m.createdAt === 'string'
    && typeof m.sizeBytes === 'number' && Number.isFinite(m.sizeBytes)
    && Array.isArray(m.env) && m.env.every((e) => typeof e === 'string' && e.includes('='))
    && typeof m.workdir === 'string' && m.workdir.startsWith('/')
    && (m.digest === undefined || typeof m.digest === 'string');
}
