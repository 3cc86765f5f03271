/** Schemas of the tenant, key and policy routes (docs/tenants.md). */
import { z } from 'zod';
import { policyDocumentSchema } from '@airlock/engine';
import { createSandboxBody, sandboxId } from './schemas.js';

export const tenantName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a tenant name (lowercase letters, digits, . _ -; up to 63)');

export const createTenantBody = z.strictObject({ name: tenantName });
export const tenantParams = z.object({ name: tenantName });

export const tenantInfo = z.object({
  name: z.string(),
  createdAt: z.string(),
  liveSandboxes: z.number().describe('creating, running or paused now'),
  activeKeys: z.number().describe('keys not revoked'),
});
export const tenantList = z.object({ tenants: z.array(tenantInfo) });

const keyScope = z.enum(['admin', 'tenant', 'read', 'exec'])
  .describe('admin: everything; tenant: everything in its tenant; read: reads in its tenant; exec: get, exec and files of one sandbox');

export const createKeyBody = z.strictObject({
  tenant: tenantName.nullable().optional().describe('required unless scope is admin'),
  scope: keyScope.optional().describe('default tenant'),
  sandbox: sandboxId.optional().describe('the one sandbox of an exec key'),
});
export const keyParams = z.object({ id: z.string().regex(/^[0-9a-f]{12}$/, 'must be a key id (12 hex digits)') });
export const keysQuery = z.strictObject({ tenant: tenantName.optional() });

export const keyInfo = z.object({
  id: z.string(),
  tenant: z.string().nullable(),
  scope: keyScope,
  sandbox: z.string().nullable(),
  createdAt: z.string(),
  revokedAt: z.string().nullable(),
  createdBy: z.string().nullable().describe('id of the admin key that created it'),
});
export const createdKey = keyInfo.extend({ key: z.string().describe('the key itself: shown this once, stored only as a hash') });
export const keyList = z.object({ keys: z.array(keyInfo) });

export const policyParams = z.object({
  tenant: tenantName.describe('a tenant, or default for the server default'),
});
export const policyQuery = z.strictObject({
  version: z.coerce.number().int().min(1).optional().describe('an older version (default: the latest)'),
});

const policyDocument = policyDocumentSchema.describe('policy document (docs/tenants.md)');

export const policyVersion = z.object({
  tenant: z.string(),
  version: z.number().describe('0: none set yet'),
  document: policyDocument,
  createdAt: z.string().nullable(),
  createdBy: z.string().nullable(),
  effective: policyDocument.describe('what applies: the server default overlaid by this tenant\'s document'),
});

export const policyTestBody = z.strictObject({
  tenant: tenantName.optional().describe('default: the caller\'s tenant (an admin\'s: default)'),
  spec: createSandboxBody.optional().describe('the sandbox spec to judge, as POST /v1/sandboxes takes it'),
  policy: policyDocument.optional().describe('a draft to judge instead of the stored document'),
});

export const policyTestResult = z.object({
  tenant: z.string(),
  allowed: z.boolean(),
  approvalRequired: z.boolean().describe('no rule denies, but one asks for approval'),
  rules: z.array(z.object({
    rule: z.string(),
    verdict: z.enum(['pass', 'deny', 'ask']),
    detail: z.string(),
    field: z.string().optional(),
    limit: z.number().optional(),
    used: z.number().optional(),
  })),
  versions: z.object({ default: z.number().nullable(), tenant: z.number().nullable() }),
});
