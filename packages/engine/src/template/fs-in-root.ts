import { lchown, lstat, mkdir, readlink, rm, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { SANDBOX_ID_BASE } from '../constants.js';
import { badRequest } from '../errors.js';

/**
 * Host-side writes into a rootfs that is being built. The tree may hold links that make sense
 * only inside the sandbox (`/etc -> /usr/etc`, `/bin -> usr/bin`): the host must resolve them
 * the way the sandbox's kernel would, inside the root, never against the host's own `/`.
 * Only the builder writes into a build tree (no sandbox runs on it meanwhile), so resolving
 * component by component cannot race.
 */

const MAX_LINK_HOPS = 40;

/** Path components of `path` (absolute or relative to the root), empty and `.` dropped. */
export function components(path: string): string[] {
  return path.split('/').filter((c) => c !== '' && c !== '.');
}

/**
 * The host path of directory `path` inside `root`, following links as the sandbox would
 * (absolute targets from `root`, `..` stopping at `root`). Missing directories are created
 * (mode 0755, owned by the sandbox's root) when `create` is set; a component that exists
 * but is not a directory is an error.
 */
export async function resolveDirInRoot(root: string, path: string, create: boolean): Promise<string> {
  const todo = components(path);
  const at: string[] = [];
  let hops = 0;
  while (todo.length > 0) {
    const c = todo.shift() as string;
    if (c === '..') {
      at.pop();
      continue;
    }
    const host = join(root, ...at, c);
    let st;
    try {
      st = await lstat(host);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw e;
      await mkdir(host, { mode: 0o755 });
      await chmod(host, 0o755);
      await lchown(host, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
      at.push(c);
      continue;
    }
    if (st.isSymbolicLink()) {
      if (++hops > MAX_LINK_HOPS) throw badRequest(`${path}: too many levels of symbolic links in the template`);
      const target = await readlink(host);
      if (target.startsWith('/')) at.length = 0;
      todo.unshift(...components(target));
      continue;
    }
    if (!st.isDirectory()) throw badRequest(`${path}: /${[...at, c].join('/')} is not a directory in the template`);
    at.push(c);
  }
  return join(root, ...at);
}

/**
 * Writes a file at `path` inside `root` (its directory resolved in the root, the file itself
 * replaced, never written through), owned by the sandbox's root.
 */
export async function writeFileInRoot(root: string, path: string, content: string | Buffer, mode: number): Promise<void> {
  const parts = components(path);
  const name = parts.pop();
  if (!name || name === '..') throw badRequest(`${path}: not a file path`);
  const dir = await resolveDirInRoot(root, parts.join('/'), true);
  const host = join(dir, name);
  await rm(host, { recursive: true, force: true });
  // wx: O_CREAT|O_EXCL, so even a link that appeared meanwhile is not followed.
  await writeFile(host, content, { flag: 'wx', mode: 0o600 });
  await lchown(host, SANDBOX_ID_BASE, SANDBOX_ID_BASE);
  await chmod(host, mode);
}

/**
 * Where `target` points when a link at `linkPath` (both relative to the root) is followed
 * lexically: absolute targets from the root, relative ones from the link's directory.
 * null when it climbs above the root with `..`.
 */
export function lexicalLinkTarget(linkPath: string, target: string): string[] | null {
  const at = target.startsWith('/') ? [] : components(linkPath).slice(0, -1);
  for (const c of components(target)) {
    if (c !== '..') {
      at.push(c);
    } else if (at.pop() === undefined) {
      return null;
    }
  }
  return at;
}
