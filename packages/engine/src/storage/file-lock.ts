import { closeSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { AirlockError } from '../errors.js';
import { processAlive, processStartTime } from '../util/proc.js';

/**
 * A lock between processes sharing a data dir (airlockd and embedded CLI runs): a file made with
 * O_EXCL holding "pid start-time". A lock whose holder is gone (crash, kill -9) is taken over.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const me = `${process.pid} ${processStartTime(process.pid) ?? ''}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try { writeSync(fd, me); } finally { closeSync(fd); }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (holderGone(path)) {
      try { unlinkSync(path); } catch { /* another waiter removed it first */ }
      continue;
    }
    if (Date.now() > deadline) throw new AirlockError('unavailable', `storage is busy (lock ${path} held by another Airlock process)`);
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    return await fn();
  } finally {
    try { unlinkSync(path); } catch { /* already gone */ }
  }
}

function holderGone(path: string): boolean {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return false; // released meanwhile: just retry
  }
  const [pidText, start] = text.trim().split(' ');
  const pid = Number(pidText);
  // A holder writes its pid right after creating the file; an empty file that stays empty is a crash.
  if (!pidText) return ageMs(path) > 5000;
  if (!Number.isInteger(pid) || pid < 1) return true;
  return !processAlive(pid, start || null);
}

function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}
