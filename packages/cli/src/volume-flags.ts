/** `--volume NAME:PATH[:ro|rw]` (run, sandbox create) → a volume attachment; read-only unless `:rw`. */
import { isAbsolute } from 'node:path';
import { UsageError } from './flags.js';

export interface VolumeFlag {
  name: string;
  target: string;
  readOnly: boolean;
}

const VOLUME_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function parseVolumeName(value: string, what = 'NAME'): string {
  if (!VOLUME_NAME.test(value)) {
    throw new UsageError(`${what}: '${value}' is not a volume name (lowercase letters, digits, . _ -; up to 63; example: results)`);
  }
  return value;
}

export function parseVolume(value: string, flag = '--volume'): VolumeFlag {
  const parts = value.split(':');
  let mode: string | undefined;
  if (parts.length === 3) mode = parts.pop();
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new UsageError(`${flag}: '${value}' must be NAME:PATH[:ro|rw] (example: ${flag} results:/work/out:rw)`);
  }
  if (mode !== undefined && mode !== 'ro' && mode !== 'rw') {
    throw new UsageError(`${flag}: '${value}' ends in ':${mode}'; the mode is ro or rw`);
  }
  const name = parseVolumeName(parts[0], flag);
  if (!isAbsolute(parts[1])) throw new UsageError(`${flag}: '${parts[1]}' must be an absolute path inside the sandbox`);
  return { name, target: parts[1], readOnly: mode !== 'rw' };
}

export function collectVolume(value: string, previous: VolumeFlag[] | undefined): VolumeFlag[] {
  return [...(previous ?? []), parseVolume(value)];
}

/** `airlock serve --mount-allow PREFIX` (repeatable): an absolute host path. */
export function collectMountPrefix(value: string, previous: string[] | undefined): string[] {
  if (!isAbsolute(value)) throw new UsageError(`--mount-allow: '${value}' must be an absolute host path (example: --mount-allow /srv/data)`);
  return [...(previous ?? []), value];
}
