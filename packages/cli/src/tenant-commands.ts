/** `airlock tenant`, `airlock key` and `airlock policy`: multi-tenancy, admin side (docs/tenants.md). */
import { Command, Option } from 'commander';
import { parsePositiveInt } from './flags.js';

type Opts = Record<string, unknown>;
type Run = (p: Promise<number>) => Promise<void>;

const ADMIN_NOTE = `
These talk to the daemon at AIRLOCK_URL with an admin key in AIRLOCK_API_KEY (the local
daemon and its admin.key when unset), or with --data-dir to the engine in this process.`;

const SCOPES = ['tenant', 'read', 'exec', 'admin'];

export function registerTenantCommands(program: Command, addDataDir: (c: Command) => Command, set: Run): void {
  const tenants = () => import('./commands/tenants.js');
  const policy = () => import('./commands/policy.js');

  const tenant = program.command('tenant').description('tenants: who owns sandboxes, volumes, keys and a policy (admin)').addHelpText('after', ADMIN_NOTE);
  addDataDir(tenant.command('create').description('create a tenant and print its name').argument('<name>', 'lowercase letters, digits, . _ -').option('--json', 'print JSON'))
    .addHelpText('after', '\nExample:\n  $ airlock tenant create team-a && airlock key create --tenant team-a | tail -n1')
    .action((name: string, opts: Opts) => set(tenants().then((m) => m.tenantCreateCommand(name, opts))));
  addDataDir(tenant.command('ls').description('list tenants with their live sandboxes and active keys').option('--json', 'print JSON'))
    .action((opts: Opts) => set(tenants().then((m) => m.tenantListCommand(opts))));
  addDataDir(tenant.command('rm').description('remove tenants and revoke their keys (refused while one has live sandboxes or volumes)').argument('<name...>', 'tenant names'))
    .action((names: string[], opts: Opts) => set(tenants().then((m) => m.tenantRemoveCommand(names, opts))));

  const key = program.command('key').description('API keys: hashed at rest, shown once, scoped (admin)').addHelpText('after', ADMIN_NOTE);
  addDataDir(
    key
      .command('create')
      .description('create an API key; the key itself is the last line printed (shown this once)')
      .option('--tenant <name>', 'the tenant it acts for (required unless --scope admin)')
      .addOption(new Option('--scope <scope>', 'tenant: everything in the tenant; read: reads only; exec: get, exec and files of one --sandbox; admin: everything').choices(SCOPES).default('tenant'))
      .option('--sandbox <id>', 'the one sandbox an exec key may use')
      .option('--json', 'print the key record (with the key) as JSON'),
  )
    .addHelpText('after', `
Examples:
  $ airlock key create --tenant team-a | tail -n1
  $ airlock key create --tenant team-a --scope read
  $ airlock key create --tenant team-a --scope exec --sandbox k3v9x2m4p7qa`)
    .action((opts: Opts) => set(tenants().then((m) => m.keyCreateCommand(opts as never))));
  addDataDir(key.command('ls').description('list keys (never the keys themselves)').option('--tenant <name>', 'only this tenant\'s').option('--all', 'include revoked keys').option('--json', 'print JSON'))
    .action((opts: Opts) => set(tenants().then((m) => m.keyListCommand(opts))));
  addDataDir(key.command('revoke').description('revoke keys by id; takes effect at once').argument('<id...>', 'key ids (the 12 hex digits after alk_)'))
    .action((ids: string[], opts: Opts) => set(tenants().then((m) => m.keyRevokeCommand(ids, opts))));

  const pol = program.command('policy').description('policy as code: what a tenant\'s sandboxes may be (YAML or JSON, versioned)').addHelpText('after', `${ADMIN_NOTE}
--tenant default (the default) names the server default, which every tenant's policy overlays.`);
  addDataDir(
    pol
      .command('get')
      .description('print a policy as YAML (the latest version unless --version)')
      .option('--tenant <name>', 'a tenant, or default for the server default', 'default')
      .option('--version <n>', 'an older version', (v: string) => parsePositiveInt(v, '--version'))
      .option('--effective', 'what applies to the tenant: the server default overlaid by its own')
      .option('--json', 'print the version record as JSON'),
  ).action((opts: Opts) => set(policy().then((m) => m.policyGetCommand(opts))));
  addDataDir(
    pol
      .command('set')
      .description('store FILE (YAML or JSON; - for stdin) as the tenant\'s next policy version')
      .argument('<file>', 'the policy document')
      .option('--tenant <name>', 'a tenant, or default for the server default', 'default')
      .option('--json', 'print the stored version as JSON'),
  )
    .addHelpText('after', `
Example policy (docs/tenants.md lists every field):
  runtimes: { minimum: gvisor }
  resources: { maxMemoryMiB: 1024, maxCpus: 2 }
  network: { allowCeiling: ["*.pypi.org", "pypi.org"] }
  quotas: { maxSandboxes: 10, createsPerMinute: 30 }

  $ airlock policy set --tenant team-a team-a.yaml`)
    .action((file: string, opts: Opts) => set(policy().then((m) => m.policySetCommand(file, opts))));
  addDataDir(
    pol
      .command('test')
      .description('judge a sandbox spec (JSON, as POST /v1/sandboxes takes it) against a policy, rule by rule; exit 1 unless allowed')
      .argument('<spec>', 'the spec file (- for stdin)')
      .option('--tenant <name>', 'whose policy (default: the server default)', 'default')
      .option('--policy <file>', 'judge against this draft instead of the stored policy')
      .option('--json', 'print the verdict as JSON'),
  )
    .addHelpText('after', '\nExample:\n  $ echo \'{"template":"base","resources":{"memoryMiB":4096}}\' | airlock policy test --tenant team-a -')
    .action((spec: string, opts: Opts) => set(policy().then((m) => m.policyTestCommand(spec, opts))));
}
