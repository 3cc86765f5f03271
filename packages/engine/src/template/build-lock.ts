import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { conflict } from '../errors.js';

const POLL_MS = 500;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function holderPid(lockPath: string): Promise<number | null> {
  try {
    const pid = Number.parseInt(await readFile(lockPath, 'utf8'), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/**
 * One builder per template name across processes: `<dir>/.<name>.lock` holds the
 * builder's pid. The file is written under a private name and hard-linked into place,
 * so a lock is never seen empty. A lock whose pid is gone (killed build) is taken over.
 * Waits up to `waitMs` for a live holder, then throws conflict. Returns the release function.
 */
export async function acquireBuildLock(dir: string, name: string, waitMs: number): Promise<() => Promise<void>> {
  const lockPath = join(dir, `.${name}.lock`);
  // Unique per call: two builds in one process must not share (and delete) each other's file.
  const mine = join(dir, `.${name}.lock.${process.pid}.${randomUUID()}`);
  await writeFile(mine, String(process.pid), { mode: 0o600 });
  const deadline = Date.now() + waitMs;
  try {
    for (;;) {
      try {
        await link(mine, lockPath);
        return () => rm(lockPath, { force: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const holder = await holderPid(lockPath);
      if (holder === null || !isAlive(holder)) {
        await rm(lockPath, { force: true });
        continue;
      }
      if (Date.now() >= deadline) throw conflict(`template ${name} is being built by pid ${holder}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } finally {
    await rm(mine, { force: true });
  }
}
