/** `airlock volume create | ls | get | rm`: named volumes with their own quota, outliving sandboxes. */
import type { BackendOptions } from '../backend.js';
import { EXIT, formatTable, printJson, shortTime } from '../output.js';
import { withBackend } from '../with-backend.js';

export async function volumeCreateCommand(name: string, flags: BackendOptions & { size: number; json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const v = await b.createVolume({ name, sizeMiB: flags.size });
    if (flags.json) printJson(v);
    else process.stdout.write(`${v.name}\n`);
    return EXIT.ok;
  });
}

export async function volumeListCommand(flags: BackendOptions & { json?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    const list = await b.listVolumes();
    if (flags.json) printJson(list);
    else {
      process.stdout.write(formatTable(
        ['NAME', 'SIZE', 'USED', 'ATTACHED', 'CREATED'],
        list.map((v) => [
          v.name, `${v.sizeMiB} MiB`, v.usedMiB === null ? '-' : `${v.usedMiB} MiB`,
          v.attachments.map((a) => `${a.sandbox}:${a.readOnly ? 'ro' : 'rw'}`).join(',') || '-',
          shortTime(v.createdAt),
        ]),
      ));
    }
    return EXIT.ok;
  });
}

export async function volumeGetCommand(name: string, flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    printJson(await b.getVolume(name));
    return EXIT.ok;
  });
}

export async function volumeRemoveCommand(names: string[], flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    for (const name of names) await b.deleteVolume(name);
    return EXIT.ok;
  });
}
