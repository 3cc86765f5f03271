/** `airlock tenant create | ls | rm` and `airlock key create | ls | revoke` (admin). */
import { withAdminBackend, type ApiKeyInfo } from '../admin-backend.js';
import type { BackendOptions } from '../backend.js';
import { EXIT, formatTable, printJson, shortTime } from '../output.js';

type Flags = BackendOptions & { json?: boolean };

export async function tenantCreateCommand(name: string, flags: Flags): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    const t = await b.createTenant(name);
    if (flags.json) printJson(t);
    else process.stdout.write(`${t.name}\n`);
    return EXIT.ok;
  });
}

export async function tenantListCommand(flags: Flags): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    const list = await b.listTenants();
    if (flags.json) printJson(list);
    else {
      process.stdout.write(formatTable(['NAME', 'LIVE SANDBOXES', 'KEYS', 'CREATED'],
        list.map((t) => [t.name, String(t.liveSandboxes), String(t.activeKeys), shortTime(t.createdAt)])));
    }
    return EXIT.ok;
  });
}

export async function tenantRemoveCommand(names: string[], flags: BackendOptions): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    for (const name of names) await b.deleteTenant(name);
    return EXIT.ok;
  });
}

export async function keyCreateCommand(flags: Flags & { tenant?: string; scope?: 'admin' | 'tenant' | 'read' | 'exec'; sandbox?: string }): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    const k = await b.createKey({
      ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}),
      ...(flags.scope !== undefined ? { scope: flags.scope } : {}),
      ...(flags.sandbox !== undefined ? { sandbox: flags.sandbox } : {}),
    });
    if (flags.json) {
      printJson(k);
      return EXIT.ok;
    }
    const whose = k.tenant === null ? 'admin key' : `${k.scope} key for tenant ${k.tenant}${k.sandbox ? `, sandbox ${k.sandbox}` : ''}`;
    // The key goes last, alone on its line: `airlock key create … | tail -n1`.
    process.stdout.write(`created ${whose} (id ${k.id})\nstore it now: it is shown this once\n${k.key}\n`);
    return EXIT.ok;
  });
}

export async function keyListCommand(flags: Flags & { tenant?: string; all?: boolean }): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    const keys = (await b.listKeys(flags.tenant !== undefined ? { tenant: flags.tenant } : {}))
      .filter((k: ApiKeyInfo) => flags.all || k.revokedAt === null);
    if (flags.json) printJson(keys);
    else {
      process.stdout.write(formatTable(['ID', 'TENANT', 'SCOPE', 'SANDBOX', 'CREATED', 'REVOKED'],
        keys.map((k) => [k.id, k.tenant ?? '-', k.scope, k.sandbox ?? '-', shortTime(k.createdAt), shortTime(k.revokedAt)])));
    }
    return EXIT.ok;
  });
}

export async function keyRevokeCommand(ids: string[], flags: BackendOptions): Promise<number> {
  return withAdminBackend(flags, async (b) => {
    for (const id of ids) await b.revokeKey(id);
    return EXIT.ok;
  });
}
