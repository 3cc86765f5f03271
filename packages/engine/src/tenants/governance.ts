/**
 * Tenancy and policy for the engine: tenants, scoped keys, versioned policy documents, quotas,
 * and the checks the engine runs at create and on every live change. The engine calls in here
 * with small hooks; everything about who may do what, and how much, lives in this module.
 */
import type { EventLog } from '../audit/event-log.js';
import type { Caller } from '../engine-api.js';
import { AirlockError, badRequest, conflict, forbidden, notFound } from '../errors.js';
import { requireApproval } from '../policy/approval.js';
import {
  applyPolicyDefaults, egressRule, evaluatePolicy, lifetimeRules, quotaRules, withDefaultDeny,
  type PolicyContext, type RuleResult, type TenantUsage,
} from '../policy/evaluate.js';
import { mergePolicies } from '../policy/merge.js';
import { PolicyRepository, SERVER_DEFAULT, type PolicyRecord } from '../policy/policy-repo.js';
import { validatePolicy, type PolicyDocument } from '../policy/schema.js';
import type { PolicyTestInput, PolicyTestResult, PolicyVersionInfo } from '../policy/types.js';
import { PolicyDeniedError } from '../storage/mount-policy.js';
import { parseSpec } from '../sandbox/spec.js';
import type { Db } from '../store/db.js';
import { KEY_SCOPES, type ApiKeyRow, type KeyRepository, type KeyScope } from '../store/key-repo.js';
import type { NetworkPolicy, RuntimeName, SandboxSpec, SandboxSpecInput } from '../types.js';
import { SANDBOX_ID_RE } from '../util/ids.js';
import { isAdmin, scopeOf } from './access.js';
import { AuthDenials, type AuthDenial } from './auth-denials.js';
import type { ApiKeyInfo, CreatedApiKey, CreateKeyInput, TenantInfo } from './types.js';

/** Where admin callers' sandboxes live; its policy is the server default. */
export const DEFAULT_TENANT = 'default';
/** Events about no tenant in particular (failed auth with an unknown key, admin keys). */
export const SYSTEM_TENANT = 'system';
const TENANT_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const RESERVED = new Set([SYSTEM_TENANT, '*']);
const LIVE_STATES = "('creating','running','paused')";
/** Recorded output per stream when the policy is silent (docs/records.md). */
const DEFAULT_OUTPUT_CAP = 64 * 1024;

export interface GovernanceDeps {
  db: Db;
  events: EventLog;
  keys: KeyRepository;
  /** The engine's write transaction (events flushed after commit). */
  tx: (fn: () => void) => void;
  /** The operator's tier floor for a tenant (EngineOptions.runtimePolicy). */
  operatorFloor: (tenant: string) => RuntimeName;
  /** The tier the operator's policy gives a spec (its default when none is asked for). */
  operatorChoice: (tenant: string, requested: RuntimeName | undefined) => RuntimeName;
  /** Installed tiers, weakest first. */
  available: () => RuntimeName[];
}

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());

function keyInfo(k: ApiKeyRow): ApiKeyInfo {
  return { id: k.id, tenant: k.tenant, scope: k.scope, sandbox: k.sandbox, createdAt: iso(k.createdAt)!, revokedAt: iso(k.revokedAt), createdBy: k.createdBy };
}

/** How long an effective policy is reused before the store is read again (see effective()). */
const EFFECTIVE_TTL_MS = 1000;

export class Governance {
  private readonly policies: PolicyRepository;
  readonly authDenials: AuthDenials;

  constructor(private readonly d: GovernanceDeps) {
    this.policies = new PolicyRepository(d.db);
    this.authDenials = new AuthDenials(d.events);
  }

  close(): void {
    this.authDenials.flush();
  }

  // ---- tenants ---------------------------------------------------------------------------

  createTenant(caller: Caller, name: string): TenantInfo {
    if (typeof name !== 'string' || !TENANT_NAME_RE.test(name)) throw badRequest('name: must be a tenant name (lowercase letters, digits, . _ -; up to 63)', 'name');
    if (RESERVED.has(name)) throw badRequest(`name: ${name} is reserved`, 'name');
    this.d.tx(() => {
      const row = this.tenantRow(name);
      if (row && row.deleted_at === null) throw conflict(`tenant ${name} already exists`);
      // A removed tenant's name may be used again; its policy history stays (and applies again).
      if (row) this.d.db.prepare('UPDATE tenants SET created_at = ?, deleted_at = NULL WHERE name = ?').run(Date.now(), name);
      else this.d.db.prepare('INSERT INTO tenants (name, created_at) VALUES (?, ?)').run(name, Date.now());
      this.d.events.append({ tenant: name, sandbox: null, type: 'tenant.created', data: { by: caller.keyId ?? null } });
    });
    return this.tenantInfo(name);
  }

  listTenants(): TenantInfo[] {
    const rows = this.d.db.prepare('SELECT name FROM tenants WHERE deleted_at IS NULL ORDER BY name').all() as Array<{ name: string }>;
    return rows.map((r) => this.tenantInfo(r.name));
  }

  /** 409 while the tenant has live sandboxes or volumes; revokes its keys. */
  deleteTenant(caller: Caller, name: string): void {
    if (name === DEFAULT_TENANT) throw conflict('the default tenant cannot be removed (admin callers\' sandboxes live there)');
    this.d.tx(() => {
      this.requireTenant(name);
      const live = this.liveCount(name);
      const vols = (this.d.db.prepare('SELECT COUNT(*) AS n FROM volumes WHERE tenant = ?').get(name) as { n: number }).n;
      if (live > 0 || vols > 0) {
        throw conflict(`tenant ${name} still has ${live} live sandbox${live === 1 ? '' : 'es'} and ${vols} volume${vols === 1 ? '' : 's'}; kill and delete them first`);
      }
      this.d.db.prepare('UPDATE tenants SET deleted_at = ? WHERE name = ?').run(Date.now(), name);
      const revoked = this.d.keys.revokeTenant(name);
      this.d.events.append({ tenant: name, sandbox: null, type: 'tenant.deleted', data: { by: caller.keyId ?? null, keysRevoked: revoked } });
    });
  }

  // ---- keys ------------------------------------------------------------------------------

  createKey(caller: Caller, input: CreateKeyInput): CreatedApiKey {
    const scope: KeyScope = input?.scope ?? 'tenant';
    if (!KEY_SCOPES.includes(scope)) throw badRequest(`scope: must be one of ${KEY_SCOPES.join(', ')}`, 'scope');
    const tenant = input.tenant ?? null;
    if (scope === 'admin' && tenant !== null) throw badRequest('tenant: admin keys belong to no tenant', 'tenant');
    if (scope !== 'admin' && tenant === null) throw badRequest(`tenant: a ${scope} key needs a tenant`, 'tenant');
    if (scope !== 'exec' && input.sandbox !== undefined) throw badRequest('sandbox: only exec keys are bound to a sandbox', 'sandbox');
    if (scope === 'exec' && input.sandbox === undefined) throw badRequest('sandbox: an exec key needs the sandbox it may use', 'sandbox');
    let issued: { id: string; key: string } | null = null;
    this.d.tx(() => {
      if (tenant !== null) this.requireTenant(tenant);
      if (input.sandbox !== undefined) {
        const owner = typeof input.sandbox === 'string' && SANDBOX_ID_RE.test(input.sandbox)
          ? this.d.db.prepare('SELECT tenant FROM sandboxes WHERE id = ?').get(input.sandbox) as { tenant: string } | undefined
          : undefined;
        if (!owner || owner.tenant !== tenant) throw notFound('sandbox', String(input.sandbox));
      }
      issued = this.d.keys.issue(scope, tenant, { sandbox: input.sandbox ?? null, createdBy: caller.keyId ?? null });
      this.d.events.append({ tenant: tenant ?? SYSTEM_TENANT, sandbox: input.sandbox ?? null, type: 'key.created', data: { keyId: issued.id, scope, by: caller.keyId ?? null } });
    });
    const { id, key } = issued!;
    return { ...keyInfo(this.d.keys.get(id)!), key };
  }

  listKeys(filter: { tenant?: string } = {}): ApiKeyInfo[] {
    return this.d.keys.list(filter.tenant).map(keyInfo);
  }

  /** Takes effect at once, in every process sharing the store. 404 for an unknown id. */
  revokeKey(caller: Caller, id: string): void {
    const k = typeof id === 'string' && /^[0-9a-f]{12}$/.test(id) ? this.d.keys.get(id) : null;
    if (!k) throw notFound('key', String(id));
    if (k.revokedAt !== null) return;
    this.d.tx(() => {
      this.d.keys.revoke(id);
      this.d.events.append({ tenant: k.tenant ?? SYSTEM_TENANT, sandbox: null, type: 'key.revoked', data: { keyId: id, by: caller.keyId ?? null } });
    });
  }

  // ---- auth ------------------------------------------------------------------------------

  /** A bearer key → its caller, or null (and a coalesced auth.denied event). */
  authenticate(key: string | null, from: { address?: string } = {}): Caller | null {
    const rec = key ? this.d.keys.verify(key) : null;
    if (rec) {
      const caller: Caller = { tenant: rec.scope === 'admin' ? null : rec.tenant, scope: rec.scope, keyId: rec.id };
      if (rec.sandbox) caller.sandbox = rec.sandbox;
      return caller;
    }
    const claimed = key ? this.d.keys.claimedTenant(key) : null;
    this.recordAuthDenied({
      reason: !key ? 'missing_key' : claimed ? 'invalid_or_revoked_key' : 'unknown_key',
      ...(from.address ? { address: from.address } : {}),
      ...(claimed ? { keyId: claimed.keyId } : {}),
    }, claimed?.tenant ?? null);
    return null;
  }

  recordAuthDenied(d: AuthDenial, tenant: string | null = null): void {
    this.authDenials.record(tenant ?? SYSTEM_TENANT, d);
  }

  // ---- policies --------------------------------------------------------------------------

  getPolicy(caller: Caller, tenant: string, version?: number): PolicyVersionInfo {
    this.mayReadPolicy(caller, tenant);
    const key = this.policyKey(tenant);
    if (key !== SERVER_DEFAULT) this.requireTenant(tenant);
    let rec: PolicyRecord | null;
    if (version !== undefined) {
      if (!Number.isInteger(version) || version < 1) throw badRequest('version: must be a positive integer', 'version');
      rec = this.policies.get(key, version);
      if (!rec) throw notFound('policy version', `${tenant}@${version}`);
    } else {
      rec = this.policies.latest(key);
    }
    return {
      tenant, version: rec?.version ?? 0, document: rec?.document ?? {}, createdAt: iso(rec?.createdAt ?? null), createdBy: rec?.createdBy ?? null,
      effective: this.effective(tenant),
    };
  }

  /** Validates and stores `document` as the next version; it applies to the next create and live change. */
  setPolicy(caller: Caller, tenant: string, document: unknown): PolicyVersionInfo {
    const doc = validatePolicy(document);
    const key = this.policyKey(tenant);
    let rec!: PolicyRecord;
    this.d.tx(() => {
      if (key !== SERVER_DEFAULT) this.requireTenant(tenant);
      rec = this.policies.append(key, doc, caller.keyId ?? null);
      this.effectiveCache.clear(); // the default's change reaches every tenant
      this.d.events.append({ tenant: key === SERVER_DEFAULT ? SYSTEM_TENANT : tenant, sandbox: null, type: 'policy.set', data: { tenant, version: rec.version, by: caller.keyId ?? null } });
    });
    return { tenant, version: rec.version, document: rec.document, createdAt: iso(rec.createdAt), createdBy: rec.createdBy, effective: this.effective(tenant) };
  }

  /** Every rule against a spec (defaults filled in as create would), without creating anything. */
  testPolicy(caller: Caller, input: PolicyTestInput): PolicyTestResult {
    const tenant = input?.tenant ?? caller.tenant ?? DEFAULT_TENANT;
    this.mayReadPolicy(caller, tenant);
    const key = this.policyKey(tenant);
    if (key !== SERVER_DEFAULT) this.requireTenant(tenant);
    const draft = input.policy !== undefined ? validatePolicy(input.policy) : null;
    const base = this.policies.latest(SERVER_DEFAULT);
    const own = key === SERVER_DEFAULT ? null : this.policies.latest(key);
    const policy = draft
      ? (key === SERVER_DEFAULT ? draft : mergePolicies(base?.document ?? null, draft))
      : mergePolicies(base?.document ?? null, own?.document ?? null);
    const specInput = input.spec ?? {};
    const spec = parseSpec(specInput);
    const ctx = this.context(tenant);
    try {
      spec.runtime = this.d.operatorChoice(tenant, specInput.runtime);
    } catch {
      spec.runtime = specInput.runtime ?? 'container'; // below the operator's floor: runtimes.minimum says so
    }
    applyPolicyDefaults(policy, specInput, spec, ctx);
    const rules = [
      ...evaluatePolicy(policy, spec, ctx),
      ...quotaRules(policy.quotas, spec, spec.timeoutSeconds, this.usage(tenant)),
    ];
    const denied = rules.some((r) => r.verdict === 'deny');
    const asks = rules.some((r) => r.verdict === 'ask');
    return {
      tenant, allowed: !denied && !asks, approvalRequired: !denied && asks, rules,
      versions: { default: draft && key === SERVER_DEFAULT ? null : base?.version ?? null, tenant: draft || key === SERVER_DEFAULT ? null : own?.version ?? null },
    };
  }

  /** The server default overlaid by the tenant's document. */
  effective(tenant: string): PolicyDocument {
    // Asked several times per exec and per event (detectors): kept briefly. A set in this process
    // clears it at once; one made by another process sharing the data dir applies within
    // EFFECTIVE_TTL_MS.
    const now = Date.now();
    const hit = this.effectiveCache.get(tenant);
    if (hit && hit.until > now) return hit.doc;
    const base = this.policies.latest(SERVER_DEFAULT)?.document ?? null;
    const doc = tenant === DEFAULT_TENANT ? base ?? {} : mergePolicies(base, this.policies.latest(tenant)?.document ?? null);
    if (this.effectiveCache.size > 10_000) this.effectiveCache.clear();
    this.effectiveCache.set(tenant, { doc, until: now + EFFECTIVE_TTL_MS });
    return doc;
  }

  private readonly effectiveCache = new Map<string, { doc: PolicyDocument; until: number }>();

  // ---- hooks the engine calls ------------------------------------------------------------

  /**
   * At create, before anything is allocated: fills in the policy's defaults and refuses
   * (422 policy_denied, or approval_required where the policy says ask) with a policy.denied
   * event naming the rule. `spec.runtime` holds the operator's choice on entry.
   */
  admitSpec(tenant: string, input: SandboxSpecInput, spec: SandboxSpec, granted?: ReadonlySet<string>): void {
    const policy = this.effective(tenant);
    applyPolicyDefaults(policy, input ?? {}, spec, this.context(tenant));
    this.enforce(tenant, null, 'create', evaluatePolicy(policy, spec, this.context(tenant)), granted);
  }

  /** Inside the transaction that records the sandbox: 429 naming the quota, the limit and the use. */
  checkQuotas(tenant: string, spec: SandboxSpec): void {
    const quotas = this.effective(tenant).quotas;
    if (!quotas) return;
    const over = quotaRules(quotas, spec, spec.timeoutSeconds, this.usage(tenant)).find((r) => r.verdict === 'deny');
    if (over) throw quotaError(over);
  }

  /** After a create's transaction failed: a quota refusal becomes a quota.exceeded event (the transaction took its own back). */
  noteRefusal(tenant: string, e: unknown): void {
    if (e instanceof AirlockError && e.code === 'quota_exceeded' && e.details?.quota) {
      this.d.events.append({ tenant, sandbox: null, type: 'quota.exceeded', data: { ...e.details } });
    }
  }

  /**
   * A live egress change: the ceiling applies to the entries it adds (those already allowed were
   * judged, or approved, when they were added), and the policy's defaultDeny stays in.
   */
  admitNetworkChange(tenant: string, sandbox: string, next: NetworkPolicy, current: readonly string[] = [], granted?: ReadonlySet<string>): NetworkPolicy {
    const policy = this.effective(tenant);
    this.enforce(tenant, sandbox, 'network', [egressRule(policy, next.allow.filter((a) => !current.includes(a)))], granted);
    return { ...next, deny: withDefaultDeny(policy, next.deny) };
  }

  /** POST …/timeout: the whole lifetime (from creation) against the ceilings. */
  admitTimeout(tenant: string, sandbox: string, lifetimeSeconds: number, granted?: ReadonlySet<string>): void {
    const policy = this.effective(tenant);
    this.enforce(tenant, sandbox, 'timeout', lifetimeRules(policy, lifetimeSeconds), granted);
    const max = policy.quotas?.maxLifetimeSeconds;
    if (max !== undefined && lifetimeSeconds > max) {
      const over = quotaRules({ maxLifetimeSeconds: max }, { resources: { cpus: 0, memoryMiB: 0, diskMiB: 0, pids: 0 } }, lifetimeSeconds, this.usage(tenant))
        .find((r) => r.verdict === 'deny')!;
      this.d.events.append({ tenant, sandbox, type: 'quota.exceeded', data: { quota: 'maxLifetimeSeconds', limit: max, used: lifetimeSeconds } });
      throw quotaError(over);
    }
  }

  /** Bytes of each output stream to keep in the blob store for an exec: exec.outputCapBytes, 0 when exec.recordOutput is false. */
  outputRecordCap(tenant: string): number {
    const exec = this.effective(tenant).exec;
    if (exec?.recordOutput === false) return 0;
    return exec?.outputCapBytes ?? DEFAULT_OUTPUT_CAP;
  }

  /** What the tenant holds now. */
  usage(tenant: string, now = Date.now()): TenantUsage {
    const live = this.d.db.prepare(`SELECT COUNT(*) AS n,
        COALESCE(SUM(json_extract(spec, '$.resources.cpus')), 0) AS cpus,
        COALESCE(SUM(json_extract(spec, '$.resources.memoryMiB')), 0) AS mem,
        COALESCE(SUM(json_extract(spec, '$.resources.diskMiB')), 0) AS disk
      FROM sandboxes WHERE tenant = ? AND state IN ${LIVE_STATES}`).get(tenant) as { n: number; cpus: number; mem: number; disk: number };
    const recent = this.d.db.prepare('SELECT COUNT(*) AS n FROM sandboxes WHERE tenant = ? AND created_at > ?').get(tenant, now - 60_000) as { n: number };
    return { sandboxes: live.n, vcpus: live.cpus, memoryMiB: live.mem, diskMiB: live.disk, createdLastMinute: recent.n };
  }

  // ---- internals -------------------------------------------------------------------------

  private enforce(tenant: string, sandbox: string | null, action: string, rules: RuleResult[], granted?: ReadonlySet<string>): void {
    const denies = rules.filter((r) => r.verdict === 'deny');
    if (denies.length) {
      const first = denies[0]!;
      this.d.events.append({
        tenant, sandbox, type: 'policy.denied',
        data: { what: 'policy', action, rule: first.rule, field: first.field ?? null, detail: first.detail, rules: denies.map((r) => r.rule) },
      });
      throw new PolicyDeniedError(`policy ${first.rule}: ${first.detail}`, { field: first.field ?? first.rule, rule: first.rule });
    }
    const asks = rules.filter((r) => r.verdict === 'ask');
    if (asks.length) requireApproval(tenant, sandbox, action, asks, granted);
  }

  private context(tenant: string): PolicyContext {
    return { operatorFloor: this.d.operatorFloor(tenant), available: this.d.available() };
  }

  /** `default` names the server default's document. */
  private policyKey(tenant: string): string {
    if (typeof tenant !== 'string' || !TENANT_NAME_RE.test(tenant)) throw badRequest('tenant: must be a tenant name, or default for the server default', 'tenant');
    return tenant === DEFAULT_TENANT ? SERVER_DEFAULT : tenant;
  }

  private mayReadPolicy(caller: Caller, tenant: string): void {
    if (isAdmin(caller)) return;
    // Another tenant's policy is "not found", as its sandboxes are.
    if (caller.tenant !== tenant || scopeOf(caller) === 'exec') {
      if (scopeOf(caller) === 'exec') throw forbidden('an exec key may not read policies');
      throw notFound('tenant', tenant);
    }
  }

  private tenantRow(name: string): { name: string; created_at: number; deleted_at: number | null } | undefined {
    return this.d.db.prepare('SELECT * FROM tenants WHERE name = ?').get(name) as { name: string; created_at: number; deleted_at: number | null } | undefined;
  }

  private requireTenant(name: string): void {
    const row = typeof name === 'string' ? this.tenantRow(name) : undefined;
    if (!row || row.deleted_at !== null) throw notFound('tenant', String(name));
  }

  private liveCount(tenant: string): number {
    return (this.d.db.prepare(`SELECT COUNT(*) AS n FROM sandboxes WHERE tenant = ? AND state IN ${LIVE_STATES}`).get(tenant) as { n: number }).n;
  }

  private tenantInfo(name: string): TenantInfo {
    const row = this.tenantRow(name)!;
    const keys = (this.d.db.prepare('SELECT COUNT(*) AS n FROM api_keys WHERE tenant = ? AND revoked_at IS NULL').get(name) as { n: number }).n;
    return { name, createdAt: new Date(row.created_at).toISOString(), liveSandboxes: this.liveCount(name), activeKeys: keys };
  }
}

/** 429 whose message and details name the quota, its limit and the current use. */
function quotaError(r: RuleResult): AirlockError {
  const quota = r.rule.replace(/^quotas\./, '');
  return new AirlockError('quota_exceeded', r.detail, r.field, { quota, limit: r.limit ?? 0, used: r.used ?? 0 });
}
