/** `airlock template ls | build | import | rm`. */
import type { BackendOptions, TemplateInfo } from '../backend.js';
import { EXIT, formatTable, humanBytes, printJson, shortTime } from '../output.js';
import { withBackend } from '../with-backend.js';

type Flags = BackendOptions & { json?: boolean; relativizeLinks?: boolean };

const shortDigest = (d: string | null) => (d ? d.replace(/^sha256:/, '').slice(0, 12) : '-');

export async function templateListCommand(flags: Flags): Promise<number> {
  return withBackend(flags, async (b) => {
    const list = await b.listTemplates();
    if (flags.json) printJson(list);
    else {
      process.stdout.write(formatTable(['NAME', 'DIGEST', 'LAYERS', 'SIZE', 'IN USE', 'CREATED'], list.map((t) => [
        t.name, shortDigest(t.digest), String(t.layers ?? 1), humanBytes(t.sizeBytes), String(t.inUse ?? 0), shortTime(t.createdAt),
      ])));
    }
    return EXIT.ok;
  });
}

function printResult(t: TemplateInfo, flags: Flags, verb: string): void {
  if (flags.json) printJson(t);
  else process.stdout.write(`template ${t.name} ${verb}: ${t.digest ?? 'no digest'}, ${t.layers} layer${t.layers === 1 ? '' : 's'}, ${humanBytes(t.sizeBytes)}\n`);
}

export async function templateBuildCommand(name: string, flags: Flags & { file?: string; force?: boolean }): Promise<number> {
  return withBackend(flags, async (b) => {
    // Progress goes to stderr when stdout carries the JSON answer.
    const progress = flags.json ? process.stderr : process.stdout;
    const t = await b.buildTemplate(name, {
      ...(flags.file !== undefined ? { file: flags.file } : {}),
      ...(flags.force ? { force: true } : {}),
      onLog: (line) => progress.write(`${line}\n`),
    });
    printResult(t, flags, 'built');
    return EXIT.ok;
  });
}

export async function templateImportCommand(name: string, tarball: string, flags: Flags): Promise<number> {
  return withBackend(flags, async (b) => {
    const t = await b.importTemplate(name, tarball, { relativizeLinks: flags.relativizeLinks ?? false });
    printResult(t, flags, 'imported');
    return EXIT.ok;
  });
}

export async function templateRemoveCommand(name: string, flags: BackendOptions): Promise<number> {
  return withBackend(flags, async (b) => {
    await b.removeTemplate(name);
    process.stdout.write(`template ${name} removed\n`);
    return EXIT.ok;
  });
}
