/** `airlock approvals`: the command tree (implementations in commands/approvals.ts, loaded on use). */
import { Command, Option } from 'commander';

type Opts = Record<string, unknown>;
type Run = (p: Promise<number>) => Promise<void>;

const STATES = ['pending', 'approved', 'denied', 'expired'];
const NOTE = `
Where a policy says ask (approvals.egressOutsideAllowlist, readWriteMount, lifetimeAbove), the
action waits here until someone decides; unanswered, it is denied after approvals.timeoutSeconds
(default 120). Admin keys approve; a tenant key may list and deny its own tenant's requests.
These talk to the daemon at AIRLOCK_URL with AIRLOCK_API_KEY (the local daemon and its
admin.key when unset), or with --data-dir to the engine in this process.`;

export function registerApprovalCommands(program: Command, addDataDir: (c: Command) => Command, set: Run): void {
  const impl = () => import('./commands/approvals.js');
  const approvals = program.command('approvals').description('approve or deny what a policy marked ask (egress, rw mounts, long lifetimes)').addHelpText('after', NOTE);
  addDataDir(
    approvals
      .command('ls')
      .description('list approval requests, newest first')
      .addOption(new Option('--state <state>', 'only requests in this state').choices(STATES))
      .option('--sandbox <id>', 'only this sandbox\'s requests')
      .option('--tenant <name>', 'only this tenant\'s (admin)')
      .option('--json', 'print JSON'),
  ).addHelpText('after', '\nExample:\n  $ airlock approvals ls --state pending')
    .action((opts: Opts) => set(impl().then((m) => m.approvalsListCommand(opts as never))));
  for (const verdict of ['approve', 'deny'] as const) {
    addDataDir(
      approvals
        .command(verdict)
        .description(verdict === 'approve' ? 'approve requests: each waiting action goes ahead (admin)' : 'deny requests: each waiting action is refused')
        .argument('<id...>', 'approval ids (12 hex digits)')
        .option('--reason <text>', 'recorded with the decision and in the audit log')
        .option('--json', 'print the decided request as JSON'),
    ).action((ids: string[], opts: Opts) => set(impl().then((m) => m.approvalDecideCommand(verdict, ids, opts as never))));
  }
}
