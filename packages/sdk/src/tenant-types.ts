/** Shapes of the tenant, key and policy routes (docs/tenants.md). */
import type { CreateSandboxBody } from './types.js';

export type KeyScope = 'admin' | 'tenant' | 'read' | 'exec';

export interface TenantInfo {
  name: string;
  createdAt: string;
  liveSandboxes: number;
  activeKeys: number;
}

export interface ApiKeyInfo {
  id: string;
  tenant: string | null;
  scope: KeyScope;
  sandbox: string | null;
  createdAt: string;
  revokedAt: string | null;
  createdBy: string | null;
}

/** `key` is shown this once. */
export interface CreatedApiKey extends ApiKeyInfo {
  key: string;
}

export interface CreateKeyBody {
  tenant?: string | null;
  scope?: KeyScope;
  sandbox?: string;
}

/** A policy document (see docs/tenants.md for every field); the server validates it. */
export type PolicyDocument = Record<string, unknown>;

export interface PolicyVersionInfo {
  tenant: string;
  version: number;
  document: PolicyDocument;
  createdAt: string | null;
  createdBy: string | null;
  effective: PolicyDocument;
}

export interface PolicyRuleResult {
  rule: string;
  verdict: 'pass' | 'deny' | 'ask';
  detail: string;
  field?: string;
  limit?: number;
  used?: number;
}

export interface PolicyTestBody {
  tenant?: string;
  spec?: CreateSandboxBody;
  policy?: PolicyDocument;
}

export interface PolicyTestResult {
  tenant: string;
  allowed: boolean;
  approvalRequired: boolean;
  rules: PolicyRuleResult[];
  versions: { default: number | null; tenant: number | null };
}
