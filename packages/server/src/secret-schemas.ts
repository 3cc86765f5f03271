/** REST schemas of tenants' secrets (routes/secrets.ts); no schema here has a field for a value going out. */
import { z } from 'zod';

export const secretName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be an environment variable name (letters, digits, _; up to 64)')
  .describe('the secret\'s name; sandboxes see its placeholder in the env variable of that name');

export const secretParams = z.object({ name: secretName });

export const secretTenantQuery = z.object({
  tenant: z.string().min(1).max(63).optional().describe('admin keys only: the tenant whose secrets (default: "default"; for GET, every tenant)'),
});

export const setSecretBody = z.strictObject({
  value: z.string().min(1).max(8 * 1024).describe('the value (8..8192 printable ASCII characters); stored encrypted, never returned'),
  hosts: z.array(z.string().min(1).max(253)).min(1).max(16).describe('host names the value may be sent to (over TLS); added to the allowlist of sandboxes using it'),
  header: z.string().max(1024).nullable().optional().describe('optional header template, e.g. "Authorization: Bearer {value}": added to requests to the hosts that lack it'),
});

export const secretInfo = z.object({
  tenant: z.string(),
  name: z.string(),
  hosts: z.array(z.string()),
  header: z.string().nullable(),
  createdAt: z.string(),
  updatedAt: z.string(),
});

export const secretList = z.object({ secrets: z.array(secretInfo) });

/** How a sandbox create body names secrets (also in schemas.ts createSandboxBody). */
export const sandboxSecretsInput = z.array(secretName).max(32)
  .describe('names of the tenant\'s secrets: the env gets a placeholder for each, swapped for the value at the egress proxy (docs/secrets.md)');
