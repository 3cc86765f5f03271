import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AirlockError } from '../errors.js';
import { describeFailure, runProgram } from './run-program.js';

const DEBOOTSTRAP_TIMEOUT_MS = 30 * 60_000;

/** debootstrap's per-package chatter; phase lines and warnings still reach the log. */
const PER_PACKAGE_LINE = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [^ ]+(?: [^ ]+)?$/;

export interface DebootstrapOptions {
  suite: string;
  /** debootstrap's --variant; 'default' passes none. */
  variant: string;
  mirror: string;
}

/**
 * A Debian root filesystem from the host's own mirror (bookworm minbase: about 30 s).
 * Packages are installed by a later layer, so this one is shared by every recipe of the
 * same suite and variant. `rootfs` must not exist yet; debootstrap creates it.
 */
export async function debootstrapRootfs(rootfs: string, o: DebootstrapOptions, log: (line: string) => void): Promise<void> {
  const variant = o.variant === 'default' ? [] : [`--variant=${o.variant}`];
  log(`debootstrap ${variant.join(' ')} ${o.suite} from ${o.mirror}`);
  const r = await runProgram('debootstrap', [...variant, o.suite, rootfs, o.mirror], {
    timeoutMs: DEBOOTSTRAP_TIMEOUT_MS,
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' },
    onLine: (line) => {
      if (line && !PER_PACKAGE_LINE.test(line)) log(line);
    },
  });
  if (r.code !== 0) {
    // The build directory is removed on failure, so carry debootstrap's own log tail out.
    const tail = await logTail(join(rootfs, 'debootstrap/debootstrap.log'), 5);
    throw new AirlockError('unavailable', `${describeFailure('debootstrap', r)}${tail ? `; debootstrap.log ends: ${tail}` : ''}`);
  }
  await trimAptState(rootfs);
}

/** Package caches and index files are rebuilt by `apt-get update`; the template need not carry them. */
async function trimAptState(rootfs: string): Promise<void> {
  await removeEntries(join(rootfs, 'var/cache/apt/archives'), (n) => n.endsWith('.deb'));
  await removeEntries(join(rootfs, 'var/cache/apt'), (n) => n.endsWith('.bin'));
  await removeEntries(join(rootfs, 'var/lib/apt/lists'), (n) => n !== 'partial' && n !== 'lock');
}

async function removeEntries(dir: string, pick: (name: string) => boolean): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names.filter(pick)) await rm(join(dir, name), { recursive: true, force: true });
}

async function logTail(path: string, lines: number): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}
