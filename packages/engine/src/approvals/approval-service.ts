/**
 * Approvals: where a policy says `ask`, the action waits for a person. A request is a row
 * (approvals table) and an approval.requested event written together, then an optional signed
 * webhook; the waiting action resumes when someone approves or denies it (API, CLI, in this or
 * any process sharing the store) or is denied when nobody answers in time. Nothing is allocated
 * while a request waits: the engine asks before it admits anything, and admits again (policy
 * and quotas as they are then) once approved.
 */
import type { EventLog } from '../audit/event-log.js';
import type { Caller } from '../engine-api.js';
import { AirlockError, badRequest, conflict, notFound } from '../errors.js';
import { ApprovalNeeded, grantKey } from '../policy/approval.js';
import type { RuleResult } from '../policy/evaluate.js';
import type { PolicyDocument } from '../policy/schema.js';
import type { Db } from '../store/db.js';
import { isAdmin } from '../tenants/access.js';
import { APPROVAL_ID_RE, ApprovalRepository, type NewApproval } from './approval-repo.js';
import {
  APPROVAL_STATES, type ApprovalAction, type ApprovalDecisionInput, type ApprovalFilter, type ApprovalInfo, type ApprovalKind,
  type ApprovalOptions, type ApprovalSubject,
} from './types.js';
import { deliverWebhook } from './webhook.js';

export const DEFAULT_APPROVAL_TIMEOUT_SECONDS = 120;
export const DEFAULT_MAX_PENDING_PER_SANDBOX = 8;
export const DEFAULT_MAX_PENDING_PER_TENANT = 64;
/** How often a waiter looks for decisions made by another process, and for overdue requests. */
const POLL_MS = 250;
/** Admission rounds: a policy changed while waiting may ask again, once. */
const MAX_ROUNDS = 2;
const REASON_MAX = 1000;

/** The rule that asked → the kind of approval it needs. */
const KIND_OF_RULE: Record<string, ApprovalKind> = {
  'network.allowCeiling': 'egress',
  'approvals.readWriteMount': 'mount_rw',
  'approvals.lifetimeAbove': 'lifetime',
};

export interface ApprovalServiceDeps {
  db: Db;
  events: EventLog;
  /** The engine's write transaction (events published after commit). */
  tx: (fn: () => void) => void;
  options: ApprovalOptions;
  /** The approvals section of the tenant's effective policy. */
  policyOf: (tenant: string) => PolicyDocument['approvals'];
  log: (level: 'info' | 'warn' | 'error', msg: string, data?: Record<string, unknown>) => void;
}

export interface AdmitContext {
  tenant: string;
  sandbox: string | null;
  action: ApprovalAction;
  /** Key id of the caller whose request waits. */
  requestedBy: string | null;
  /** The facts behind the asks (hosts, mounts, lifetime), for the person deciding. */
  describe: (asks: RuleResult[]) => Omit<ApprovalSubject, 'rules'>;
  /** Aborted when the requester went away (its HTTP client hung up): the request is withdrawn. */
  signal?: AbortSignal;
}

/** A sandbox's own egress to a name not on its allowlist (DNS question or proxied connection). */
export interface EgressAsk {
  tenant: string;
  sandbox: string;
  host: string;
  port: number | null;
  /** Runs once when approved (adds the host to the sandbox's allowlist); false if it could not. */
  apply: () => Promise<boolean>;
}

export type EgressAnswer = { approved: true; id: string } | { approved: false; id: string | null; reason: string };

interface Waiter {
  promise: Promise<ApprovalInfo>;
  resolve: (info: ApprovalInfo) => void;
}

export class ApprovalService {
  private readonly repo: ApprovalRepository;
  private readonly waiters = new Map<string, Waiter>();
  /** sandbox + host → the one answer every DNS retry and connection for it shares. */
  private readonly egressAsks = new Map<string, Promise<EgressAnswer>>();
  private readonly abort = new AbortController();
  private readonly webhooks = new Set<Promise<unknown>>();
  private poll: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly d: ApprovalServiceDeps) {
    this.repo = new ApprovalRepository(d.db);
  }

  // ---- asking --------------------------------------------------------------------------------

  /**
   * Runs `admit` (a policy admission that throws ApprovalNeeded where the policy asks); while it
   * asks, records the request, waits for the decision and, once approved, runs it again with
   * those asks granted. Denied or unanswered: 422 approval_denied, and nothing was admitted.
   */
  async admit<T>(ctx: AdmitContext, admit: (granted: ReadonlySet<string>) => T | Promise<T>): Promise<T> {
    const granted = new Set<string>();
    for (let round = 1; ; round++) {
      try {
        return await admit(granted);
      } catch (e) {
        if (!(e instanceof ApprovalNeeded) || round > MAX_ROUNDS) throw e;
        const kind = KIND_OF_RULE[e.asks[0]!.rule];
        if (!kind) throw e;
        const info = this.open({
          tenant: ctx.tenant, sandbox: ctx.sandbox, kind, action: ctx.action, dedupe: null, requestedBy: ctx.requestedBy,
          subject: { rules: e.asks.map((a) => ({ rule: a.rule, detail: a.detail })), ...ctx.describe(e.asks) },
        });
        // A requester that went away withdraws its request: nobody would be there to use an
        // approval, and an approved create would leave a sandbox nobody holds.
        const withdraw = () => {
          const cur = this.repo.get(info.id);
          if (cur?.state === 'pending') this.end(cur, 'expired', 'withdrawn: the requester went away');
          this.sweep();
        };
        if (ctx.signal?.aborted) withdraw();
        else ctx.signal?.addEventListener('abort', withdraw, { once: true });
        let decided: ApprovalInfo;
        try {
          decided = await this.wait(info.id);
        } finally {
          ctx.signal?.removeEventListener('abort', withdraw);
        }
        if (decided.state !== 'approved') throw denial(decided, e.field);
        if (ctx.signal?.aborted) throw denial({ ...decided, state: 'expired', reason: 'withdrawn: the requester went away' }, e.field);
        for (const a of e.asks) granted.add(grantKey(a));
      }
    }
  }

  /**
   * Egress from inside a sandbox: one pending request per sandbox and host however many
   * queries and connections ask (DNS clients retry every few seconds), at most
   * maxPendingPerSandbox per sandbox. Resolves once decided and, when approved, applied.
   */
  askEgress(a: EgressAsk): Promise<EgressAnswer> {
    const key = `${a.sandbox}\n${a.host}`;
    const known = this.egressAsks.get(key);
    if (known) return known;
    const dedupe = `egress:${a.host}`;
    let info = this.repo.pendingFor(a.sandbox, dedupe);
    if (!info) {
      const max = this.d.options.maxPendingPerSandbox ?? DEFAULT_MAX_PENDING_PER_SANDBOX;
      if (this.closed) return Promise.resolve({ approved: false, id: null, reason: 'engine-closed' });
      if (this.repo.countPending({ sandbox: a.sandbox }) >= max) return Promise.resolve({ approved: false, id: null, reason: 'pending-limit' });
      try {
        info = this.open({
          tenant: a.tenant, sandbox: a.sandbox, kind: 'egress', action: 'egress', dedupe, requestedBy: null,
          subject: {
            rules: [{ rule: 'approvals.egressOutsideAllowlist', detail: `${a.host} is not on the sandbox's allowlist; approvals.egressOutsideAllowlist is ask` }],
            hosts: [a.host], ...(a.port !== null ? { port: a.port } : {}),
          },
        });
      } catch (e) {
        const reason = e instanceof AirlockError && e.code === 'quota_exceeded' ? 'pending-limit' : 'error';
        return Promise.resolve({ approved: false, id: null, reason });
      }
    }
    const id = info.id;
    const answer = this.wait(id).then(async (decided): Promise<EgressAnswer> => {
      if (decided.state !== 'approved') return { approved: false, id, reason: decided.state };
      const applied = await a.apply().catch((e: Error) => {
        this.d.log('warn', 'an approved egress host could not be added', { approval: id, error: e.message });
        return false;
      });
      return applied ? { approved: true, id } : { approved: false, id, reason: 'not-applied' };
    }).finally(() => this.egressAsks.delete(key));
    this.egressAsks.set(key, answer);
    return answer;
  }

  /** Records a pending request and its approval.requested event together; then the webhook, if any. */
  private open(req: Omit<NewApproval, 'expiresAt'>): ApprovalInfo {
    if (this.closed) throw new AirlockError('unavailable', 'the engine is closing');
    const policy = this.d.policyOf(req.tenant);
    const seconds = policy?.timeoutSeconds ?? this.d.options.timeoutSeconds ?? DEFAULT_APPROVAL_TIMEOUT_SECONDS;
    const max = this.d.options.maxPendingPerTenant ?? DEFAULT_MAX_PENDING_PER_TENANT;
    let info!: ApprovalInfo;
    this.d.tx(() => {
      const used = this.repo.countPending({ tenant: req.tenant });
      if (used >= max) {
        throw new AirlockError('quota_exceeded', `tenant ${req.tenant} already has ${used} approvals pending (at most ${max}); decide those first`, undefined,
          { quota: 'pendingApprovals', limit: max, used });
      }
      const now = Date.now();
      info = this.repo.insert({ ...req, expiresAt: now + seconds * 1000 }, now);
      this.d.events.append({
        tenant: req.tenant, sandbox: req.sandbox, type: 'approval.requested',
        data: { id: info.id, kind: info.kind, action: info.action, subject: { ...info.subject }, expiresAt: info.expiresAt, requestedBy: info.requestedBy },
      });
    });
    const url = policy?.webhookUrl ?? this.d.options.webhookUrl;
    if (url) this.sendWebhook(url, info);
    return info;
  }

  private sendWebhook(url: string, info: ApprovalInfo): void {
    const body = JSON.stringify({
      id: info.id, tenant: info.tenant, sandbox: info.sandbox, kind: info.kind, action: info.action, subject: info.subject,
      requestedAt: info.requestedAt, expiresAt: info.expiresAt,
    });
    const sent = deliverWebhook({ url, body, secret: this.d.options.webhookSecret ?? null, id: info.id }, this.abort.signal).then((error) => {
      if (error === null || this.closed) return;
      this.d.log('warn', 'approval webhook failed', { approval: info.id, error });
      this.d.events.append({ tenant: info.tenant, sandbox: info.sandbox, type: 'approval.webhook_failed', data: { id: info.id, error } });
    }).catch(() => {});
    this.webhooks.add(sent);
    void sent.finally(() => this.webhooks.delete(sent));
  }

  /** Resolves with the request once it is no longer pending (decided here, elsewhere, or expired). */
  private wait(id: string): Promise<ApprovalInfo> {
    const known = this.waiters.get(id);
    if (known) return known.promise;
    let resolve!: (info: ApprovalInfo) => void;
    const promise = new Promise<ApprovalInfo>((r) => { resolve = r; });
    this.waiters.set(id, { promise, resolve });
    this.startPolling();
    this.sweep();
    return promise;
  }

  private startPolling(): void {
    if (this.poll || this.closed) return;
    this.poll = setInterval(() => this.sweep(), POLL_MS);
    this.poll.unref();
  }

  /** Expires what is overdue and settles the waiters whose requests were decided. */
  private sweep(): void {
    try {
      this.expireOverdue();
      const states = this.repo.states([...this.waiters.keys()]);
      for (const [id, w] of [...this.waiters]) {
        const state = states.get(id);
        if (state === 'pending') continue;
        this.waiters.delete(id);
        w.resolve(this.repo.get(id) ?? gone(id));
      }
    } catch (e) {
      this.d.log('error', 'approval sweep failed', { error: (e as Error).message });
    }
    if (this.waiters.size === 0 && this.poll) {
      clearInterval(this.poll);
      this.poll = null;
    }
  }

  /** Unanswered requests past their deadline are denied: state expired, an approval.expired event each. */
  expireOverdue(now = Date.now()): void {
    for (const a of this.repo.overdue(now)) {
      const reason = `no decision within ${Math.round((Date.parse(a.expiresAt) - Date.parse(a.requestedAt)) / 1000)} s`;
      this.end(a, 'expired', reason);
    }
  }

  /** A sandbox ended: its pending requests have nothing left to approve. */
  sandboxEnded(sandbox: string): void {
    for (const a of this.repo.pendingOfSandbox(sandbox)) this.end(a, 'expired', 'the sandbox ended');
    this.sweep();
  }

  private end(a: ApprovalInfo, state: 'expired', reason: string): void {
    this.d.tx(() => {
      if (!this.repo.decide(a.id, state, null, reason)) return; // decided meanwhile
      this.d.events.append({ tenant: a.tenant, sandbox: a.sandbox, type: 'approval.expired', data: { id: a.id, kind: a.kind, action: a.action, reason } });
    });
  }

  // ---- deciding and reading ------------------------------------------------------------------

  decide(caller: Caller, id: string, verdict: 'approved' | 'denied', input: ApprovalDecisionInput = {}): ApprovalInfo {
    const reason = input?.reason ?? null;
    if (reason !== null && (typeof reason !== 'string' || reason.length > REASON_MAX)) throw badRequest(`reason: must be text of at most ${REASON_MAX} characters`, 'reason');
    const a = this.visible(caller, id);
    this.expireOverdue();
    const by = caller.keyId ?? null;
    this.d.tx(() => {
      if (!this.repo.decide(a.id, verdict, by, reason)) {
        const now = this.repo.get(a.id)!;
        throw conflict(`approval ${a.id} is already ${now.state}${now.reason ? ` (${now.reason})` : ''}`);
      }
      this.d.events.append({
        tenant: a.tenant, sandbox: a.sandbox, type: verdict === 'approved' ? 'approval.approved' : 'approval.denied',
        data: { id: a.id, kind: a.kind, action: a.action, by, reason },
      });
    });
    this.sweep(); // a waiter in this process resumes now, not at the next poll
    return this.repo.get(a.id)!;
  }

  get(caller: Caller, id: string): ApprovalInfo {
    this.expireOverdue();
    return this.visible(caller, id);
  }

  list(caller: Caller, filter: ApprovalFilter = {}): ApprovalInfo[] {
    const f = filter ?? {};
    if (f.state !== undefined && !APPROVAL_STATES.includes(f.state)) throw badRequest(`state: must be one of ${APPROVAL_STATES.join(', ')}`, 'state');
    if (f.limit !== undefined && !(Number.isInteger(f.limit) && f.limit >= 1 && f.limit <= 1000)) throw badRequest('limit: must be an integer from 1 to 1000', 'limit');
    let tenant: string | undefined;
    if (isAdmin(caller)) tenant = f.tenant;
    else {
      if (f.tenant !== undefined && f.tenant !== caller.tenant) throw notFound('tenant', String(f.tenant));
      tenant = caller.tenant ?? undefined;
    }
    this.expireOverdue();
    return this.repo.list({ ...f, tenant });
  }

  /** Another tenant's request is not found, as its sandboxes are. */
  private visible(caller: Caller, id: string): ApprovalInfo {
    const a = typeof id === 'string' && APPROVAL_ID_RE.test(id) ? this.repo.get(id) : null;
    if (!a || (!isAdmin(caller) && a.tenant !== caller.tenant)) throw notFound('approval', String(id));
    return a;
  }

  /**
   * Stops waiting: requests this process waits for are expired (their actions are refused now,
   * so a later approval must not look as if it did something), webhooks in flight are dropped.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const id of this.waiters.keys()) {
      const a = this.repo.get(id);
      if (a?.state === 'pending') this.end(a, 'expired', 'the engine stopped before a decision');
    }
    this.sweep();
    this.closed = true;
    this.abort.abort();
    await Promise.allSettled([...this.webhooks]);
  }
}

/** 422 approval_denied for a request denied, or expired unanswered. */
export function denial(a: ApprovalInfo, field?: string): AirlockError {
  const what = a.state === 'expired' ? `expired unanswered (${a.reason ?? 'no decision in time'})` : `denied${a.decidedBy ? ` by key ${a.decidedBy}` : ''}${a.reason ? `: ${a.reason}` : ''}`;
  return new AirlockError('approval_denied', `approval ${a.id} ${what}`, field, { approval: a.id, state: a.state });
}

function gone(id: string): ApprovalInfo {
  const now = new Date().toISOString();
  return {
    id, tenant: '', sandbox: null, kind: 'egress', action: 'egress', subject: { rules: [] }, state: 'expired', requestedAt: now, requestedBy: null,
    expiresAt: now, decidedAt: now, decidedBy: null, reason: 'the request is gone',
  };
}
