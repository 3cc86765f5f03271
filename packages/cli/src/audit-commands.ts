/** `airlock audit`: the tamper-evident event log (docs/audit.md). */
import type { Command } from 'commander';
import { UsageError } from './flags.js';

type Opts = Record<string, unknown>;
type Run = (p: Promise<number>) => Promise<void>;

function parseSeq(v: string): number {
  if (!/^[0-9]{1,15}$/.test(v)) throw new UsageError('--after: must be an event seq (a whole number)');
  return Number(v);
}

export function registerAuditCommands(program: Command, addDataDir: (c: Command) => Command, set: Run): void {
  const audit = () => import('./commands/audit.js');
  const cmd = program.command('audit').description('the hash-chained, signed event log: verify it, follow it, export evidence');
  addDataDir(
    cmd.command('verify')
      .description('recompute the hash chain and check the signed checkpoints; exit 1 naming the first broken seq')
      .option('--bundle <file>', 'check an evidence bundle from `audit export` instead, offline')
      .option('--public-key <file>', 'the audit public key (PEM) to check signatures with, instead of the bundle\'s or the data dir\'s')
      .option('--json', 'print the result as JSON'),
  ).addHelpText('after', `
Against the daemon (AIRLOCK_URL with an admin key) or, with --data-dir, on a data dir read-only.
Examples:
  $ airlock audit verify --data-dir /var/lib/airlock
  $ airlock audit verify --bundle evidence.tar.gz --public-key airlock-audit.pub`)
    .action((opts: Opts) => set(audit().then((m) => m.auditVerifyCommand(opts))));
  addDataDir(
    cmd.command('tail')
      .description('follow events as they happen; resumes after a dropped connection without loss or repeats')
      .option('--sandbox <id>', 'only this sandbox\'s')
      .option('--type <type>', 'only this event type (e.g. exec.exited)')
      .option('--tenant <name>', 'only this tenant\'s (admin keys)')
      .option('--after <seq>', 'replay events after this seq first (default: new events only)', parseSeq)
      .option('--json', 'one JSON event per line'),
  ).action((opts: Opts) => set(audit().then((m) => m.auditTailCommand(opts))));
  addDataDir(
    cmd.command('export')
      .description('write an evidence bundle (tar.gz) of a sandbox\'s story, or of every event since a time')
      .option('--sandbox <id>', 'the sandbox')
      .option('--since <time>', 'ISO 8601 time: every event at or after it')
      .option('-o, --output <file>', 'where to write it (default airlock-audit-<id>.tar.gz)'),
  ).addHelpText('after', '\nExample:\n  $ airlock audit export --sandbox k3v9x2m4p7qa -o evidence.tar.gz && airlock audit verify --bundle evidence.tar.gz')
    .action((opts: Opts) => set(audit().then((m) => m.auditExportCommand(opts))));
}
