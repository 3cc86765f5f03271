/** Forwarding the CLI's stdin to a sandboxed command. */
import { fstatSync } from 'node:fs';
import { isatty } from 'node:tty';

/**
 * Whether stdin carries data to forward: a pipe, socket or regular file. A terminal is left alone
 * (the command would otherwise wait for Ctrl-D) and so is /dev/null or a closed fd (nothing to read).
 */
export function stdinHasData(): boolean {
  if (isatty(0)) return false;
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isSocket() || st.isFile();
  } catch {
    return false;
  }
}

/** Reads stdin to EOF when it carries data, else returns undefined (the command gets an empty stdin). */
export async function readStdinIfPiped(): Promise<Buffer | undefined> {
  if (!stdinHasData()) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
