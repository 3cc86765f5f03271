import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AirlockError } from '../errors.js';

/**
 * The Debian mirror this host already uses, read from its apt sources (one-line `*.list`
 * and deb822 `*.sources`): the first http(s) URI listed for the host's own codename.
 * AIRLOCK_DEBIAN_MIRROR overrides. scripts/setup-host.sh applies the same rule, so the
 * runsc download and the template build talk to the same mirror.
 */
export function hostDebianMirror(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.AIRLOCK_DEBIAN_MIRROR?.trim();
  if (override) return override;
  const codename = hostCodename();
  if (codename) {
    for (const file of aptSourceFiles()) {
      const text = readFileSync(file, 'utf8');
      const uris = file.endsWith('.sources') ? deb822Uris(text, codename) : oneLineUris(text, codename);
      const found = uris.find((u) => /^https?:\/\//.test(u));
      if (found) return found;
    }
  }
  throw new AirlockError('unavailable',
    'no Debian mirror found in /etc/apt/sources.list(.d); set AIRLOCK_DEBIAN_MIRROR');
}

function hostCodename(): string | null {
  try {
    const m = /^VERSION_CODENAME=("?)([^"\n]*)\1$/m.exec(readFileSync('/etc/os-release', 'utf8'));
    return m?.[2] || null;
  } catch {
    return null;
  }
}

function aptSourceFiles(): string[] {
  const files: string[] = [];
  if (existsSync('/etc/apt/sources.list')) files.push('/etc/apt/sources.list');
  const dir = '/etc/apt/sources.list.d';
  try {
    for (const name of readdirSync(dir).sort()) {
      if (name.endsWith('.list') || name.endsWith('.sources')) files.push(join(dir, name));
    }
  } catch {
    // no sources.list.d: only sources.list counts
  }
  return files;
}

/** `deb [options] URI SUITE COMPONENT...` lines whose suite is `codename`. */
export function oneLineUris(text: string, codename: string): string[] {
  const uris: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (m && m[2] === codename && m[1]) uris.push(m[1]);
  }
  return uris;
}

/** deb822 stanzas of type `deb`, not disabled, whose Suites include `codename`. */
export function deb822Uris(text: string, codename: string): string[] {
  const uris: string[] = [];
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    for (const raw of stanza.split('\n')) {
      if (/^\s*#/.test(raw)) continue;
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (m?.[1] && m[2] !== undefined) fields.set(m[1].toLowerCase(), m[2].trim());
    }
    const words = (key: string) => (fields.get(key) ?? '').split(/\s+/).filter(Boolean);
    if (!words('types').includes('deb')) continue;
    if ((fields.get('enabled') ?? '').toLowerCase() === 'no') continue;
    if (!words('suites').includes(codename)) continue;
    uris.push(...words('uris'));
  }
  return uris;
}
