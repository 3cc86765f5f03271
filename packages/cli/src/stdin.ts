/** Forwarding the CLI's stdin to a sandboxed command. */
import { isatty } from 'node:tty';

/**
 * Reads stdin to EOF unless it is a terminal (the command would otherwise wait for Ctrl-D);
 * /dev/null reads as empty at once. Returns undefined when there is nothing to forward.
 *
 * No fstat here on purpose: in Node 20, an fstat of a pipe on fd 0 before the engine is imported
 * makes Node resolve @airlock/engine under its node_modules symlink instead of its real path,
 * and the engine then looks for the agent binary in the wrong place.
 */
export async function readStdinIfPiped(): Promise<Buffer | undefined> {
  if (isatty(0)) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  const all = Buffer.concat(chunks);
  return all.length > 0 ? all : undefined;
}
