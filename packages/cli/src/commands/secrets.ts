/** `airlock secret set | ls | rm`: tenants' secrets, brokered into sandboxes as placeholders (docs/secrets.md). */
import { isatty } from 'node:tty';
import type { BackendOptions } from '../backend.js';
import { UsageError } from '../flags.js';
import { EXIT, formatTable, printJson, shortTime } from '../output.js';
import { withSecretBackend } from '../secret-backend.js';

export interface SecretSetFlags extends BackendOptions {
  host: string[];
  header?: string;
  value?: string;
  tenant?: string;
  json?: boolean;
}

/** The value from stdin (never a terminal: it would echo), less one trailing line break. */
async function valueFromStdin(): Promise<string> {
  if (isatty(0)) throw new UsageError('give the value on stdin (e.g. printf %s "$TOKEN" | airlock secret set NAME --host api.example.com) or with --value');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += b.length;
    if (size > 64 * 1024) throw new UsageError('the value on stdin is too large (secrets hold at most 8 KiB)');
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

export async function secretSetCommand(name: string, flags: SecretSetFlags): Promise<number> {
  if (!flags.host || flags.host.length === 0) throw new UsageError('--host: name at least one host the value may be sent to');
  const value = flags.value ?? await valueFromStdin();
  return withSecretBackend(flags, async (b) => {
    const s = await b.set(name, { value, hosts: flags.host, ...(flags.header !== undefined ? { header: flags.header } : {}) }, flags.tenant);
    if (flags.json) printJson(s);
    else process.stdout.write(`${s.name}\n`);
    return EXIT.ok;
  });
}

export async function secretListCommand(flags: BackendOptions & { tenant?: string; json?: boolean }): Promise<number> {
  return withSecretBackend(flags, async (b) => {
    const list = await b.list(flags.tenant);
    if (flags.json) printJson(list);
    else {
      process.stdout.write(formatTable(
        ['TENANT', 'NAME', 'HOSTS', 'HEADER', 'UPDATED'],
        list.map((s) => [s.tenant, s.name, s.hosts.join(','), s.header ?? '-', shortTime(s.updatedAt)]),
      ));
    }
    return EXIT.ok;
  });
}

export async function secretRemoveCommand(names: string[], flags: BackendOptions & { tenant?: string }): Promise<number> {
  return withSecretBackend(flags, async (b) => {
    for (const name of names) await b.remove(name, flags.tenant);
    return EXIT.ok;
  });
}
