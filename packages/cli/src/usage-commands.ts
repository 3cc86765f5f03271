/** `airlock usage` registration (docs/metering.md). */
import type { Command } from 'commander';

type Run = (p: Promise<number>) => Promise<void>;

export function registerUsageCommand(program: Command, addDataDir: (c: Command) => Command, set: Run): void {
  addDataDir(
    program
      .command('usage')
      .description('metered usage and cost: CPU-seconds, memory GiB-seconds, disk GiB-hours, network bytes, per sandbox and per day')
      .option('--sandbox <id>', 'one sandbox')
      .option('--tenant <name>', 'one tenant (admin keys; a tenant key sees its own anyway)')
      .option('--from <day>', 'first UTC day, YYYY-MM-DD')
      .option('--to <day>', 'last UTC day, YYYY-MM-DD')
      .option('--json', 'print JSON'),
  )
    .addHelpText('after', '\nExamples:\n  $ airlock usage --from 2026-11-01\n  $ airlock usage --tenant team-a --json')
    .action((opts: Record<string, unknown>) => set(import('./commands/usage.js').then((m) => m.usageCommand(opts as never))));
}
