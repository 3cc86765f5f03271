/**
 * Evaluation of a sandbox spec against an effective policy: every rule, each with a verdict and
 * a sentence, so `airlock policy test` can explain the whole outcome and create can refuse with
 * the first rule at fault. Pure apart from resolving host mount sources (realpath).
 */
import { realpathSync } from 'node:fs';
import { posix } from 'node:path';
import { RUNTIME_ORDER, type RuntimeName, type SandboxSpec, type SandboxSpecInput } from '../types.js';
import { outsideCeiling } from './egress-cover.js';
import { strongerRuntime } from './merge.js';
import type { PolicyDocument, Quotas } from './schema.js';

export type Verdict = 'pass' | 'deny' | 'ask';

export interface RuleResult {
  /** The policy field that decided: "resources.maxMemoryMiB", "quotas.maxSandboxes". */
  rule: string;
  verdict: Verdict;
  detail: string;
  /** The spec field at fault (for the 422's field). */
  field?: string;
  /** Quota rules: the limit and what is (or would be) in use. */
  limit?: number;
  used?: number;
}

/** What the tenant holds now, for quota rules. */
export interface TenantUsage {
  sandboxes: number;
  vcpus: number;
  memoryMiB: number;
  diskMiB: number;
  createdLastMinute: number;
}

export interface PolicyContext {
  /** The operator's tier floor for this tenant (EngineOptions.runtimePolicy). */
  operatorFloor: RuntimeName;
  /** Tiers installed here, weakest first. */
  available: readonly RuntimeName[];
}

const rank = (r: RuntimeName): number => RUNTIME_ORDER.indexOf(r);
const pass = (rule: string, detail: string): RuleResult => ({ rule, verdict: 'pass', detail });
const NOT_SET = 'not limited by the policy';

/**
 * Fills in what the caller left out so that it fits the policy: the tier (policy default,
 * raised to both floors), the allowlist (network.defaultAllow), the lifetime and resources
 * (clamped to the ceilings). The policy's defaultDeny is always added. What the caller did
 * ask for is left as asked: evaluation then judges it.
 */
export function applyPolicyDefaults(policy: PolicyDocument, input: SandboxSpecInput, spec: SandboxSpec, ctx: PolicyContext): void {
  if (input.runtime === undefined) {
    const floor = strongerRuntime(policy.runtimes?.minimum ?? 'container', ctx.operatorFloor);
    const wanted = strongerRuntime(policy.runtimes?.default ?? spec.runtime, floor);
    const allowed = policy.runtimes?.allowed;
    const fits = (r: RuntimeName) => rank(r) >= rank(wanted) && (!allowed || allowed.includes(r));
    spec.runtime = ctx.available.find(fits) ?? ctx.available.find((r) => rank(r) >= rank(floor) && (!allowed || allowed.includes(r))) ?? wanted;
  }
  const net = policy.network;
  if (input.network?.allow === undefined && net?.defaultAllow) spec.network.allow = [...net.defaultAllow];
  spec.network.deny = withDefaultDeny(policy, spec.network.deny);
  if (input.timeoutSeconds === undefined) {
    spec.timeoutSeconds = Math.min(spec.timeoutSeconds, policy.lifetime?.maxSeconds ?? Infinity, policy.quotas?.maxLifetimeSeconds ?? Infinity);
  }
  const res = policy.resources;
  const asked = input.resources ?? {};
  if (res) {
    if (asked.cpus === undefined && res.maxCpus !== undefined) spec.resources.cpus = Math.min(spec.resources.cpus, res.maxCpus);
    if (asked.memoryMiB === undefined && res.maxMemoryMiB !== undefined) spec.resources.memoryMiB = Math.min(spec.resources.memoryMiB, res.maxMemoryMiB);
    if (asked.diskMiB === undefined && res.maxDiskMiB !== undefined) spec.resources.diskMiB = Math.min(spec.resources.diskMiB, res.maxDiskMiB);
    if (asked.pids === undefined && res.maxPids !== undefined) spec.resources.pids = Math.min(spec.resources.pids, res.maxPids);
  }
}

/** The deny list with the policy's defaultDeny entries added (once each). */
export function withDefaultDeny(policy: PolicyDocument, deny: readonly string[]): string[] {
  const out = [...deny];
  for (const d of policy.network?.defaultDeny ?? []) if (!out.includes(d)) out.push(d);
  return out;
}

/** Every rule of the policy against a spec whose defaults are filled in. */
export function evaluatePolicy(policy: PolicyDocument, spec: SandboxSpec, ctx: PolicyContext): RuleResult[] {
  return [
    ...runtimeRules(policy, spec, ctx),
    ...resourceRules(policy, spec),
    templateRule(policy, spec),
    egressRule(policy, spec.network.allow),
    ...mountRules(policy, spec),
    ...lifetimeRules(policy, spec.timeoutSeconds),
  ];
}

function runtimeRules(policy: PolicyDocument, spec: SandboxSpec, ctx: PolicyContext): RuleResult[] {
  const out: RuleResult[] = [];
  const allowed = policy.runtimes?.allowed;
  if (!allowed) out.push(pass('runtimes.allowed', NOT_SET));
  else if (allowed.includes(spec.runtime)) out.push(pass('runtimes.allowed', `${spec.runtime} is one of ${allowed.join(', ')}`));
  else out.push({ rule: 'runtimes.allowed', verdict: 'deny', field: 'runtime', detail: `runtime ${spec.runtime} is not allowed (allowed: ${allowed.join(', ')})` });
  const own = policy.runtimes?.minimum;
  const floor = strongerRuntime(own ?? 'container', ctx.operatorFloor);
  const why = `the policy's minimum is ${own ?? 'unset'}, the operator's ${ctx.operatorFloor}`;
  if (rank(spec.runtime) >= rank(floor)) out.push(pass('runtimes.minimum', `${spec.runtime} meets ${floor} (${why})`));
  else out.push({ rule: 'runtimes.minimum', verdict: 'deny', field: 'runtime', detail: `runtime ${spec.runtime} is below the minimum ${floor} (${why})` });
  return out;
}

function resourceRules(policy: PolicyDocument, spec: SandboxSpec): RuleResult[] {
  const res = policy.resources ?? {};
  const rows: Array<[keyof typeof res, keyof SandboxSpec['resources'], string]> = [
    ['maxCpus', 'cpus', 'cpus'], ['maxMemoryMiB', 'memoryMiB', 'MiB of memory'], ['maxDiskMiB', 'diskMiB', 'MiB of disk'], ['maxPids', 'pids', 'pids'],
  ];
  return rows.map(([limitKey, specKey, unit]) => {
    const rule = `resources.${limitKey}`;
    const limit = res[limitKey];
    const want = spec.resources[specKey];
    if (limit === undefined) return pass(rule, NOT_SET);
    if (want <= limit) return pass(rule, `${want} ${unit} ≤ ${limit}`);
    return { rule, verdict: 'deny', field: `resources.${specKey}`, detail: `${want} ${unit} asked, at most ${limit} allowed` };
  });
}

function templateRule(policy: PolicyDocument, spec: SandboxSpec): RuleResult {
  const allowed = policy.templates?.allowed;
  if (!allowed) return pass('templates.allowed', NOT_SET);
  if (allowed.includes(spec.template)) return pass('templates.allowed', `template ${spec.template} is allowed`);
  return { rule: 'templates.allowed', verdict: 'deny', field: 'template', detail: `template ${spec.template} is not allowed (allowed: ${allowed.join(', ') || 'none'})` };
}

/** Allowlist entries against network.allowCeiling; outside it, approvals.egressOutsideAllowlist decides (default deny). */
export function egressRule(policy: PolicyDocument, allow: readonly string[]): RuleResult {
  const rule = 'network.allowCeiling';
  const ceiling = policy.network?.allowAny ? undefined : policy.network?.allowCeiling;
  if (ceiling === undefined) return pass(rule, policy.network?.allowAny ? 'allowAny: any destination may be allowed' : NOT_SET);
  const outside = outsideCeiling(allow, ceiling);
  if (outside.length === 0) return pass(rule, allow.length ? `every allow entry is inside the ceiling` : 'no network asked for');
  const action = policy.approvals?.egressOutsideAllowlist ?? 'deny';
  const where = ceiling.length ? `the ceiling is ${ceiling.join(', ')}` : 'this policy allows no network';
  return {
    rule, verdict: action, field: 'network.allow',
    detail: `${outside.join(', ')} ${outside.length > 1 ? 'are' : 'is'} outside the egress ceiling (${where})${action === 'ask' ? '; approvals.egressOutsideAllowlist: ask' : ''}`,
  };
}

function resolveHost(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return posix.normalize(p).replace(/\/+$/, '') || '/';
  }
}

const within = (a: string, b: string) => b === '/' || a === b || a.startsWith(b + '/');

function mountRules(policy: PolicyDocument, spec: SandboxSpec): RuleResult[] {
  const out: RuleResult[] = [];
  const prefixes = policy.mounts?.allowedHostPrefixes;
  if (!prefixes) out.push(pass('mounts.allowedHostPrefixes', NOT_SET));
  else {
    const resolved = prefixes.map(resolveHost);
    const bad = spec.mounts.findIndex((m) => !resolved.some((p) => within(resolveHost(m.source), p)));
    if (bad < 0) out.push(pass('mounts.allowedHostPrefixes', spec.mounts.length ? 'every mount source is under an allowed prefix' : 'no host mounts'));
    else {
      out.push({
        rule: 'mounts.allowedHostPrefixes', verdict: 'deny', field: `mounts.${bad}.source`,
        detail: `${spec.mounts[bad]!.source} is not under an allowed host path (${prefixes.join(', ') || 'none allowed'})`,
      });
    }
  }
  const rw = spec.mounts.findIndex((m) => !m.readOnly);
  const rwAllowed = policy.mounts?.allowReadWrite;
  if (rwAllowed === undefined) out.push(pass('mounts.allowReadWrite', NOT_SET));
  else if (rw < 0 || rwAllowed) out.push(pass('mounts.allowReadWrite', rw < 0 ? 'no read-write mounts' : 'read-write mounts allowed'));
  else out.push({ rule: 'mounts.allowReadWrite', verdict: 'deny', field: `mounts.${rw}.readOnly`, detail: `${spec.mounts[rw]!.source} is mounted read-write; this policy allows read-only host mounts only` });
  const ask = policy.approvals?.readWriteMount;
  if (ask === undefined) out.push(pass('approvals.readWriteMount', NOT_SET));
  else if (rw < 0) out.push(pass('approvals.readWriteMount', 'no read-write mounts'));
  else out.push({ rule: 'approvals.readWriteMount', verdict: ask, field: `mounts.${rw}.readOnly`, detail: `read-write mount of ${spec.mounts[rw]!.source}: approvals.readWriteMount is ${ask}` });
  return out;
}

/** lifetime.maxSeconds and approvals.lifetimeAbove for a lifetime of `seconds` (create, or POST …/timeout). */
export function lifetimeRules(policy: PolicyDocument, seconds: number): RuleResult[] {
  const out: RuleResult[] = [];
  const max = policy.lifetime?.maxSeconds;
  if (max === undefined) out.push(pass('lifetime.maxSeconds', NOT_SET));
  else if (seconds <= max) out.push(pass('lifetime.maxSeconds', `${seconds} s ≤ ${max} s`));
  else out.push({ rule: 'lifetime.maxSeconds', verdict: 'deny', field: 'timeoutSeconds', detail: `a lifetime of ${seconds} s asked, at most ${max} s allowed` });
  const above = policy.approvals?.lifetimeAbove;
  if (!above) out.push(pass('approvals.lifetimeAbove', NOT_SET));
  else if (seconds <= above.seconds) out.push(pass('approvals.lifetimeAbove', `${seconds} s ≤ ${above.seconds} s`));
  else out.push({ rule: 'approvals.lifetimeAbove', verdict: above.action, field: 'timeoutSeconds', detail: `a lifetime above ${above.seconds} s (${seconds} s asked): approvals.lifetimeAbove is ${above.action}` });
  return out;
}

/** Quota rules for one more sandbox of `spec` on top of `usage`; `lifetimeSeconds` the lifetime it would have. */
export function quotaRules(quotas: Quotas | undefined, spec: Pick<SandboxSpec, 'resources'>, lifetimeSeconds: number, usage: TenantUsage): RuleResult[] {
  const q = quotas ?? {};
  const rows: Array<[keyof Quotas, number, number, string]> = [
    ['maxSandboxes', usage.sandboxes, 1, 'live sandboxes'],
    ['maxVcpus', usage.vcpus, spec.resources.cpus, 'vCPUs'],
    ['maxMemoryMiB', usage.memoryMiB, spec.resources.memoryMiB, 'MiB of memory'],
    ['maxDiskMiB', usage.diskMiB, spec.resources.diskMiB, 'MiB of disk'],
    ['createsPerMinute', usage.createdLastMinute, 1, 'sandboxes created in the last 60 s'],
  ];
  const out: RuleResult[] = rows.map(([name, used, adds, unit]) => {
    const rule = `quotas.${name}`;
    const limit = q[name];
    if (limit === undefined) return pass(rule, NOT_SET);
    const after = round(used + adds);
    if (after <= limit) return { ...pass(rule, `${round(used)} ${unit} in use, ${after} with this one, limit ${limit}`), limit, used: round(used) };
    return { rule, verdict: 'deny', detail: `quota ${name} exceeded: ${round(used)} ${unit} in use, this sandbox would make ${after}, limit ${limit}`, limit, used: round(used) };
  });
  const maxLife = q.maxLifetimeSeconds;
  if (maxLife === undefined) out.push(pass('quotas.maxLifetimeSeconds', NOT_SET));
  else if (lifetimeSeconds <= maxLife) out.push({ ...pass('quotas.maxLifetimeSeconds', `${lifetimeSeconds} s ≤ ${maxLife} s`), limit: maxLife, used: lifetimeSeconds });
  else out.push({ rule: 'quotas.maxLifetimeSeconds', verdict: 'deny', field: 'timeoutSeconds', detail: `quota maxLifetimeSeconds exceeded: a lifetime of ${lifetimeSeconds} s asked, limit ${maxLife} s`, limit: maxLife, used: lifetimeSeconds });
  return out;
}

/** Sums of floats (0.1 + 0.2) printed and compared as people expect. */
const round = (n: number) => Math.round(n * 1000) / 1000;
