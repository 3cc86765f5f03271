/**
 * gVisor syscall traces as evidence (docs/records.md#syscall-traces): with the tenant policy's
 * `evidence.syscallTrace`, runsc runs the sandbox with `--strace` and its debug log in the
 * sandbox's own writable-layer file system (`layer/airlock-strace/`, beside but outside the
 * overlay's upper dir, so the sandbox cannot read or forge it). That file system is the
 * sandbox's disk quota, so a syscall flood fills the sandbox's own disk, never the host's. At the
 * sandbox's end the logs, capped, become one blob named by an `evidence.strace` event.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync } from 'node:fs';
import { join } from 'node:path';

export const STRACE_DIR = 'airlock-strace';
/** Bytes of trace kept per sandbox (the start of it: how the session began is the evidence). */
export const STRACE_CAP_BYTES = 8 * 1024 * 1024;

/** runsc's global flags for a traced sandbox, `sandboxDir` = <data-dir>/sandboxes/<id>. */
export function straceFlags(sandboxDir: string, syscalls?: readonly string[]): string[] {
  const flags = ['--strace', `--debug-log=${join(sandboxDir, 'layer', STRACE_DIR)}/`, '--debug-command=boot'];
  if (syscalls?.length) flags.push(`--strace-syscalls=${syscalls.join(',')}`);
  return flags;
}

/** The trace logs' bytes, capped; null when the sandbox was not traced. */
export function collectStrace(sandboxDir: string, cap = STRACE_CAP_BYTES): { data: Buffer; total: number } | null {
  const dir = join(sandboxDir, 'layer', STRACE_DIR);
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return null;
  }
  const parts: Buffer[] = [];
  let kept = 0;
  let total = 0;
  for (const name of names) {
    let fd: number;
    try {
      fd = openSync(join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch {
      continue;
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) continue;
      total += st.size;
      const want = Math.min(st.size, cap - kept);
      if (want <= 0) continue;
      const buf = Buffer.alloc(want);
      const n = readSync(fd, buf, 0, want, 0);
      parts.push(buf.subarray(0, n));
      kept += n;
    } finally {
      closeSync(fd);
    }
  }
  return { data: Buffer.concat(parts, kept), total };
}
