/** `airlock secret`: tenants' secrets, which sandboxes use without ever seeing (docs/secrets.md). */
import type { Command } from 'commander';
import { UsageError } from './flags.js';

type Opts = Record<string, unknown>;
type Run = (p: Promise<number>) => Promise<void>;

const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** A secret's name: also the env variable that holds its placeholder. */
export function parseSecretName(value: string, flag = 'NAME'): string {
  if (!SECRET_NAME.test(value)) throw new UsageError(`${flag}: '${value}' must be an environment variable name (letters, digits, _; up to 64)`);
  return value;
}

/** Commander collector for repeatable `--secret NAME`. */
export function collectSecret(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), parseSecretName(value, '--secret')];
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

const NOTE = `
A tenant key (AIRLOCK_API_KEY) acts on its own tenant; an admin key, or --data-dir, on
--tenant (default "default"). Values are encrypted at rest and no command prints one.`;

export function registerSecretCommands(program: Command, addDataDir: (c: Command) => Command, set: Run): void {
  const secrets = () => import('./commands/secrets.js');
  const secret = program.command('secret').description('secrets sandboxes use without seeing them: the egress proxy swaps a placeholder for the value').addHelpText('after', NOTE);
  addDataDir(
    secret
      .command('set')
      .description('create or replace a secret; the value comes from stdin (one trailing newline dropped) or --value')
      .argument('<name>', 'its name, also the env variable sandboxes see its placeholder in', (v: string) => parseSecretName(v))
      .option('--host <host>', 'a host the value may be sent to, over TLS (repeatable; at least one)', collect)
      .option('--header <template>', 'add this header to requests to the hosts, e.g. \'Authorization: Bearer {value}\'')
      .option('--value <value>', 'the value (visible in the process list: prefer stdin)')
      .option('--tenant <name>', 'the tenant it belongs to (admin only; default: the key\'s tenant, or "default")')
      .option('--json', 'print the secret (never its value) as JSON'),
  )
    .addHelpText('after', `
Example:
  $ printf %s "$OPENAI_API_KEY" | airlock secret set OPENAI_API_KEY --host api.openai.com --header 'Authorization: Bearer {value}'
  $ airlock run --secret OPENAI_API_KEY -- sh -c 'curl -s https://api.openai.com/v1/models'`)
    .action((name: string, opts: Opts) => set(secrets().then((m) => m.secretSetCommand(name, opts as never))));
  addDataDir(secret.command('ls').description('list secrets: names, hosts, header templates (never values)')
    .option('--tenant <name>', 'one tenant\'s (admin only; default: every tenant for an admin)').option('--json', 'print JSON'))
    .action((opts: Opts) => set(secrets().then((m) => m.secretListCommand(opts))));
  addDataDir(secret.command('rm').description('delete secrets; sandboxes holding their placeholders can no longer use them')
    .argument('<name...>', 'secret names').option('--tenant <name>', 'the tenant (admin only)'))
    .action((names: string[], opts: Opts) => set(secrets().then((m) => m.secretRemoveCommand(names, opts))));
}
