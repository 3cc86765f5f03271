/** The `airlock files` subcommands beyond put/get/ls: stat, mkdir, mv, watch, outputs. */
import type { Command } from 'commander';
import { parseFileMode } from './flags.js';

type Opts = Record<string, unknown>;
type Run = (p: Promise<number>) => Promise<void>;

export function registerFileCommands(files: Command, addDataDir: (c: Command) => Command, set: Run): void {
  const load = () => import('./commands/files.js');

  addDataDir(
    files
      .command('stat')
      .description('type, size, mode and mtime of a path inside the sandbox (a link is shown, not followed)')
      .argument('<id>', 'sandbox id')
      .argument('<path>', 'absolute path inside the sandbox')
      .option('--json', 'print JSON'),
  ).action((id: string, path: string, opts: Opts) => set(load().then((m) => m.statCommand(id, path, opts))));

  addDataDir(
    files
      .command('mkdir')
      .description('create a directory inside the sandbox')
      .argument('<id>', 'sandbox id')
      .argument('<path>', 'absolute path inside the sandbox')
      .option('-p, --parents', 'create missing parents; an existing directory is fine')
      .option('--mode <octal>', 'permission bits (default 0755)', (v: string) => parseFileMode(v)),
  ).action((id: string, path: string, opts: Opts) => set(load().then((m) => m.mkdirCommand(id, path, opts))));

  addDataDir(
    files
      .command('mv')
      .description('rename or move a path inside the sandbox (refuses to replace FROM\'s target unless --overwrite)')
      .argument('<id>', 'sandbox id')
      .argument('<from>', 'absolute path inside the sandbox')
      .argument('<to>', 'absolute path inside the sandbox')
      .option('--overwrite', 'replace TO if it exists'),
  ).action((id: string, from: string, to: string, opts: Opts) => set(load().then((m) => m.mvCommand(id, from, to, opts))));

  addDataDir(
    files
      .command('watch')
      .description('print changes under a directory inside the sandbox until Ctrl-C')
      .argument('<id>', 'sandbox id')
      .argument('<path>', 'a directory inside the sandbox')
      .option('-r, --recursive', 'also every directory below it, including ones created later')
      .option('--json', 'one JSON object a line: {type, path, isDir, from?}'),
  ).action((id: string, path: string, opts: Opts) => set(load().then((m) => m.watchCommand(id, path, opts))));

  addDataDir(
    files
      .command('outputs')
      .description('extract the sandbox\'s outputs (its output path, default /work/out) into LOCAL_DIR; without LOCAL_DIR, list them')
      .argument('<id>', 'sandbox id')
      .argument('[local_dir]', 'directory on this machine (created if missing)')
      .option('--list', 'list them (path, size, sha256) instead of extracting')
      .option('--json', 'print JSON'),
  ).action((id: string, dir: string | undefined, opts: Opts) => set(load().then((m) => m.outputsCommand(id, dir, opts))));
}
