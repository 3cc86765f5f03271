/**
 * Tenants' secrets, encrypted at rest (AES-256-GCM, key file outside the database). A value
 * goes in through set() and comes out only through reveal(), which the secret broker calls
 * while rewriting a request to one of the secret's hosts: no listing, event or error carries it.
 */
import { z } from 'zod';
import { badRequest, notFound } from '../errors.js';
import { validHostName } from '../network/egress-proxy.js';
import { firstIssue } from '../sandbox/spec.js';
import type { Db } from '../store/db.js';
import { loadOrCreateSecretKey, seal, unseal } from './secret-key.js';

/** What the API shows of a secret: never its value. */
export interface SecretInfo {
  tenant: string;
  name: string;
  hosts: string[];
  /** `Name: template with {value}`, or null (placeholders only). */
  header: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface SetSecretInput {
  value: string;
  hosts: string[];
  header?: string | null;
}

export const MAX_SECRET_BYTES = 8 * 1024;
export const MIN_SECRET_BYTES = 8;
export const MAX_SECRET_HOSTS = 16;
/** The prefix of every placeholder (placeholders.ts); a value holding it could pass for one. */
export const PLACEHOLDER_PREFIX = 'airlock-secret-';

/** A secret's name is the environment variable that holds its placeholder. */
export const secretNameSchema = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be an environment variable name (letters, digits, _; up to 64)');

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Fields a header template may not set: they frame or route the request. */
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-connection', 'expect', 'accept-encoding']);

const hostSchema = z.string().max(253).transform((h, ctx) => {
  const name = validHostName(h);
  if (name === null || /^\d+\.\d+\.\d+\.\d+$/.test(name)) {
    ctx.addIssue({ code: 'custom', message: `${h} is not a host name (IP addresses cannot be secret hosts: TLS names the host)` });
    return z.NEVER;
  }
  return name;
});

const headerSchema = z.string().max(1024).refine((h) => parseHeaderTemplate(h) !== null,
  'must read "Name: text with {value}" (one {value}, printable ASCII, not a framing field like Host or Content-Length)');

export const setSecretSchema = z.object({
  value: z.string().min(MIN_SECRET_BYTES, `must be at least ${MIN_SECRET_BYTES} characters (shorter ones would be scrubbed out of unrelated text)`)
    .max(MAX_SECRET_BYTES, `must be at most ${MAX_SECRET_BYTES} bytes`)
    .regex(/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/, 'must be printable ASCII without line breaks, NUL or surrounding spaces')
    .refine((v) => !v.includes(PLACEHOLDER_PREFIX) && !PLACEHOLDER_PREFIX.includes(v), `must not contain ${PLACEHOLDER_PREFIX}`),
  hosts: z.array(hostSchema).min(1, 'name at least one host').max(MAX_SECRET_HOSTS),
  header: headerSchema.nullable().optional(),
}).strict();

/** `Authorization: Bearer {value}` → its name and the text around {value}; null when malformed. */
export function parseHeaderTemplate(text: string): { name: string; before: string; after: string } | null {
  const m = /^([^:]+):[ \t]*(.*?)[ \t]*$/.exec(text);
  if (!m || !TOKEN.test(m[1]!) || RESERVED_HEADERS.has(m[1]!.toLowerCase())) return null;
  const value = m[2]!;
  if (!/^[\x20-\x7e]*$/.test(value)) return null;
  const parts = value.split('{value}');
  if (parts.length !== 2) return null;
  return { name: m[1]!, before: parts[0]!, after: parts[1]! };
}

interface SecretRow {
  tenant: string;
  name: string;
  hosts: string;
  header: string | null;
  ciphertext: Buffer;
  iv: Buffer;
  tag: Buffer;
  created_at: number;
  updated_at: number;
}

const aad = (tenant: string, name: string) => `airlock-secret\0${tenant}\0${name}`;

function info(r: SecretRow): SecretInfo {
  return {
    tenant: r.tenant, name: r.name, hosts: JSON.parse(r.hosts) as string[], header: r.header,
    createdAt: new Date(r.created_at).toISOString(), updatedAt: new Date(r.updated_at).toISOString(),
  };
}

export class SecretStore {
  private key: Buffer | null = null;

  /** `keyFile` is read (or created) on first use, so an engine that never stores a secret makes none. */
  constructor(private readonly db: Db, readonly keyFile: string) {}

  static checkName(name: unknown): string {
    const r = secretNameSchema.safeParse(name);
    if (!r.success) throw badRequest(`name: ${r.error.issues[0]?.message ?? 'invalid'}`, 'name');
    return r.data;
  }

  /** Creates or replaces the secret (a replaced value applies to the next request that uses it). */
  set(tenant: string, rawName: unknown, input: unknown): SecretInfo {
    const name = SecretStore.checkName(rawName);
    const r = setSecretSchema.safeParse(input ?? {});
    if (!r.success) {
      const { field, message } = firstIssue(r.error);
      throw badRequest(message, field);
    }
    const { value, hosts, header } = r.data;
    // The placeholder (airlock-secret-<NAME>-<hex>) must never contain the value.
    if (name.includes(value)) throw badRequest('value: must not appear in the secret\'s name', 'value');
    const sealed = seal(this.secretKey(), Buffer.from(value, 'latin1'), aad(tenant, name));
    const now = Date.now();
    this.db.prepare(`INSERT INTO secrets (tenant, name, hosts, header, ciphertext, iv, tag, created_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (tenant, name) DO UPDATE SET hosts = excluded.hosts, header = excluded.header,
          ciphertext = excluded.ciphertext, iv = excluded.iv, tag = excluded.tag, updated_at = excluded.updated_at`)
      .run(tenant, name, JSON.stringify([...new Set(hosts)]), header ?? null, sealed.ciphertext, sealed.iv, sealed.tag, now, now);
    return this.get(tenant, name)!;
  }

  get(tenant: string, name: string): SecretInfo | null {
    const row = this.db.prepare('SELECT * FROM secrets WHERE tenant = ? AND name = ?').get(tenant, name) as SecretRow | undefined;
    return row ? info(row) : null;
  }

  /** One tenant's secrets, or every tenant's (null). */
  list(tenant: string | null): SecretInfo[] {
    const rows = (tenant === null
      ? this.db.prepare('SELECT * FROM secrets ORDER BY tenant, name').all()
      : this.db.prepare('SELECT * FROM secrets WHERE tenant = ? ORDER BY name').all(tenant)) as SecretRow[];
    return rows.map(info);
  }

  /** Removes it; sandboxes holding its placeholder can no longer use it (the next request sends the placeholder). */
  delete(tenant: string, rawName: unknown): void {
    const name = SecretStore.checkName(rawName);
    const r = this.db.prepare('DELETE FROM secrets WHERE tenant = ? AND name = ?').run(tenant, name);
    if (r.changes === 0) throw notFound('secret', name);
  }

  /** The value, for the broker only; null when the secret is gone. Throws when the key file changed. */
  reveal(tenant: string, name: string): { info: SecretInfo; value: Buffer } | null {
    const row = this.db.prepare('SELECT * FROM secrets WHERE tenant = ? AND name = ?').get(tenant, name) as SecretRow | undefined;
    if (!row) return null;
    try {
      return { info: info(row), value: unseal(this.secretKey(), { ciphertext: row.ciphertext, iv: row.iv, tag: row.tag }, aad(tenant, name)) };
    } catch (e) {
      throw new Error(`secret ${name} of tenant ${tenant} cannot be decrypted with ${this.keyFile} (${(e as Error).message})`);
    }
  }

  private secretKey(): Buffer {
    if (this.key) return this.key;
    const stored = (this.db.prepare('SELECT COUNT(*) AS n FROM secrets').get() as { n: number }).n;
    this.key = loadOrCreateSecretKey(this.keyFile, stored === 0);
    return this.key;
  }
}
