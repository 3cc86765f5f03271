/** Shapes of the approval routes (docs/approvals.md). */

export type ApprovalKind = 'egress' | 'mount_rw' | 'lifetime';
export type ApprovalState = 'pending' | 'approved' | 'denied' | 'expired';
export type ApprovalAction = 'create' | 'timeout' | 'network' | 'egress';

export interface ApprovalSubject {
  /** Every policy rule that asked, with the sentence that explains it. */
  rules: Array<{ rule: string; detail: string }>;
  hosts?: string[];
  port?: number;
  mounts?: Array<{ source: string; target: string }>;
  lifetimeSeconds?: number;
}

export interface ApprovalInfo {
  id: string;
  tenant: string;
  /** null for a create (the sandbox does not exist yet). */
  sandbox: string | null;
  kind: ApprovalKind;
  action: ApprovalAction;
  subject: ApprovalSubject;
  state: ApprovalState;
  requestedAt: string;
  requestedBy: string | null;
  expiresAt: string;
  decidedAt: string | null;
  decidedBy: string | null;
  reason: string | null;
}
