import { closeSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { TemplateLayout } from './layout.js';

/** apt's and dpkg's per-package lines: kept in the log file, left out of the caller's progress. */
const CHATTY = /^(Get:\d+ |Selecting previously unselected|Preparing to unpack|Unpacking |Setting up |Processing triggers|\(Reading database)/;

/** Logs kept per template name; older ones are removed when a new build starts. */
const KEEP_LOGS = 5;

export interface BuildLog {
  /** A progress line: to the caller and the log file. */
  progress(line: string): void;
  /** Output of a step (debootstrap, apt-get, a run command): to the log file and, indented and without per-package chatter, the caller. */
  output(line: string): void;
  readonly path: string;
  close(): void;
}

/**
 * `_logs/<name>-<time>.log`: every line of a build or import with its time, kept after the
 * build (successful or not) so an operator can read why a step failed.
 */
export function openBuildLog(layout: TemplateLayout, name: string, kind: 'build' | 'import', sink: (line: string) => void): BuildLog {
  prune(layout, name);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const path = join(layout.logsDir, `${name}-${stamp}-${kind}.log`);
  let fd: number | null = openSync(path, 'a', 0o600);
  const write = (line: string) => {
    if (fd === null) return;
    try {
      writeSync(fd, `${new Date().toISOString()} ${line}\n`);
    } catch {
      // A full disk must not fail the build over its log.
    }
  };
  return {
    path,
    progress(line) {
      write(line);
      sink(line);
    },
    output(line) {
      write(`  | ${line}`);
      if (!CHATTY.test(line)) sink(`  | ${line}`);
    },
    close() {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}

function prune(layout: TemplateLayout, name: string): void {
  let logs: string[];
  try {
    logs = readdirSync(layout.logsDir).filter((f) => f.startsWith(`${name}-`) && /^\d{4}-/.test(f.slice(name.length + 1))).sort();
  } catch {
    return;
  }
  for (const old of logs.slice(0, Math.max(0, logs.length - (KEEP_LOGS - 1)))) rmSync(join(layout.logsDir, old), { force: true });
}
