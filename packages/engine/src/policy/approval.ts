/**
 * Where a policy says `ask`. Evaluation is synchronous and pure, waiting for a person is not:
 * so an `ask` that no grant covers throws ApprovalNeeded, and the engine (approvals/
 * approval-service.ts, `admit`) records the request, waits for the decision and, once it is
 * approved, runs the same admission again with the approved asks granted. Anything that runs
 * an admission outside that loop still refuses with 422 approval_required, as before the flow.
 */
import { AirlockError } from '../errors.js';
import type { RuleResult } from './evaluate.js';

/**
 * What a grant covers: one rule with exactly this detail (the detail names the hosts, the mount
 * source or the lifetime), so an approval never covers more than the person saw.
 */
export function grantKey(r: Pick<RuleResult, 'rule' | 'detail'>): string {
  return `${r.rule}\u0000${r.detail}`;
}

export class ApprovalNeeded extends AirlockError {
  constructor(readonly tenant: string, readonly sandbox: string | null, readonly action: string, readonly asks: RuleResult[]) {
    const first = asks[0]!;
    super('approval_required', `approval required by policy (${asks.map((a) => a.rule).join(', ')}): ${first.detail}`, first.field);
  }
}

/** Throws ApprovalNeeded for the asks no grant covers; returns when every ask is granted. */
export function requireApproval(tenant: string, sandbox: string | null, action: string, asks: RuleResult[], granted?: ReadonlySet<string>): void {
  const open = asks.filter((a) => !granted?.has(grantKey(a)));
  if (open.length) throw new ApprovalNeeded(tenant, sandbox, action, open);
}
