/** `airlock template ls`. */
import type { BackendOptions } from '../backend.js';
import { EXIT, formatTable, humanBytes, printJson, shortTime } from '../output.js';
import { withBackend } from '../with-backend.js';

export async function templateListCommand(flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const list = await b.listTemplates();
    if (flags.json) printJson(list);
    else process.stdout.write(formatTable(['NAME', 'SIZE', 'CREATED'], list.map((t) => [t.name, humanBytes(t.sizeBytes), shortTime(t.createdAt)])));
    return EXIT.ok;
  });
}
