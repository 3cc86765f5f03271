/** Public shapes of approvals (REST and SDK mirror these; docs/approvals.md). */

/** What is asked for: egress to hosts, a read-write host mount, or a lifetime above the policy's threshold. */
export type ApprovalKind = 'egress' | 'mount_rw' | 'lifetime';
export const APPROVAL_KINDS: readonly ApprovalKind[] = ['egress', 'mount_rw', 'lifetime'];

export type ApprovalState = 'pending' | 'approved' | 'denied' | 'expired';
export const APPROVAL_STATES: readonly ApprovalState[] = ['pending', 'approved', 'denied', 'expired'];

/**
 * What waits: a create, a POST …/timeout, a PATCH …/network, or the sandbox's own traffic
 * (`egress`: a DNS question or a proxied connection for a name not on its allowlist).
 */
export type ApprovalAction = 'create' | 'timeout' | 'network' | 'egress';

export interface ApprovalSubject {
  /** Every policy rule that asked, with the sentence that explains it. */
  rules: Array<{ rule: string; detail: string }>;
  /** egress: the host names (or allow entries) asked for. */
  hosts?: string[];
  /** egress from the sandbox: the port of the first connection that asked (absent for DNS). */
  port?: number;
  /** mount_rw: the read-write host mounts. */
  mounts?: Array<{ source: string; target: string }>;
  /** lifetime: the whole lifetime asked for, counted from creation. */
  lifetimeSeconds?: number;
}

export interface ApprovalInfo {
  /** 12 lowercase hex digits. */
  id: string;
  tenant: string;
  /** null for a create (the sandbox does not exist yet). */
  sandbox: string | null;
  /** The kind of the first rule that asked (subject.rules lists them all). */
  kind: ApprovalKind;
  action: ApprovalAction;
  subject: ApprovalSubject;
  state: ApprovalState;
  requestedAt: string;
  /** Key id of the caller whose request waits; null for the sandbox's own egress. */
  requestedBy: string | null;
  /** When an unanswered request is denied (state expired). */
  expiresAt: string;
  decidedAt: string | null;
  /** Key id of who approved or denied; null for expiry, or an operator using the engine in-process. */
  decidedBy: string | null;
  reason: string | null;
}

export interface ApprovalFilter {
  state?: ApprovalState;
  sandbox?: string;
  /** Admins only: one tenant's approvals. */
  tenant?: string;
  /** Newest first; default 100, at most 1000. */
  limit?: number;
}

export interface ApprovalDecisionInput {
  /** Free text recorded with the decision (at most 1000 characters). */
  reason?: string;
}

/** EngineOptions.approvals: the operator's settings; a policy's approvals.timeoutSeconds / webhookUrl override the first two. */
export interface ApprovalOptions {
  /** How long a request waits for a decision; default 120. */
  timeoutSeconds?: number;
  /** POSTs each approval.requested here (docs/approvals.md). */
  webhookUrl?: string;
  /** HMAC-SHA256 key for the X-Airlock-Signature header; without it the webhook is sent unsigned. */
  webhookSecret?: string | Buffer;
  /** Pending egress approvals one sandbox may have at once; more are denied at once. Default 8. */
  maxPendingPerSandbox?: number;
  /** Pending approvals one tenant may have at once (all kinds). Default 64. */
  maxPendingPerTenant?: number;
}
