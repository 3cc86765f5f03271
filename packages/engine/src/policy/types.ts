/** Public shapes of policies (REST and SDK mirror these). */
import type { SandboxSpecInput } from '../types.js';
import type { RuleResult } from './evaluate.js';
import type { PolicyDocument } from './schema.js';

export type { PolicyDocument, RuleResult };

export interface PolicyVersionInfo {
  /** The tenant, or `default` for the server default. */
  tenant: string;
  /** 0 when none was ever set (document {}). */
  version: number;
  document: PolicyDocument;
  createdAt: string | null;
  /** Key id of the admin who set it. */
  createdBy: string | null;
  /** What applies to the tenant: the server default overlaid by this document. */
  effective: PolicyDocument;
}

export interface PolicyTestInput {
  /** Default: the caller's tenant (an admin's: `default`). */
  tenant?: string;
  spec?: SandboxSpecInput;
  /** A draft to judge instead of the tenant's stored document (still overlaid on the server default). */
  policy?: unknown;
}

export interface PolicyTestResult {
  tenant: string;
  /** No rule denies and none asks for approval. */
  allowed: boolean;
  /** No rule denies, but at least one asks. */
  approvalRequired: boolean;
  /** Every rule, in order, with its verdict. */
  rules: RuleResult[];
  /** The versions judged against (null: none set, or a draft). */
  versions: { default: number | null; tenant: number | null };
}
