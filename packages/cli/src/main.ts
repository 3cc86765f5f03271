#!/usr/bin/env node
/**
 * `airlock` entry point. Exit statuses: 0 ok, 1 failure, 2 usage error; `airlock run` passes the
 * command's own status through (124 timeout, 137 killed/OOM, 130 interrupted, 125 Airlock failed).
 */
import { CommanderError } from 'commander';
import { buildProgram, type ActionResult } from './cli.js';
import { EXIT, exitAfterFlush, reportError } from './output.js';

// `airlock … | head` closes our stdout early: stop writing, don't crash with an EPIPE stack.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
  });
}

async function main(): Promise<number> {
  const result: ActionResult = { exitCode: EXIT.ok };
  try {
    await buildProgram(result).parseAsync(process.argv);
    return result.exitCode;
  } catch (e) {
    // Commander has already printed its message (help, version, or `airlock: unknown option …`).
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.ok : EXIT.usage;
    return reportError(e);
  }
}

main().then(exitAfterFlush, (e: unknown) => exitAfterFlush(reportError(e)));
