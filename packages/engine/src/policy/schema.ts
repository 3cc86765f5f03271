/**
 * The policy document (policy as code): what a tenant's sandboxes may be. One zod schema checks
 * documents from YAML, JSON and the REST API alike; every object is strict, so a misspelt field
 * is an error naming its path instead of a silently ignored rule.
 */
import { isAbsolute } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { z } from 'zod';
import { badRequest } from '../errors.js';
import { DETECTOR_NAMES } from '../detectors/rules.js';
import { egressRuleSchema } from '../network/egress-policy.js';
import { MAX_TIMEOUT_SECONDS } from '../sandbox/spec.js';
import { RUNTIME_ORDER, type RuntimeName } from '../types.js';

const runtimeName = z.enum(RUNTIME_ORDER as unknown as [RuntimeName, ...RuntimeName[]]);
const templateName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a template name');
const hostPrefix = z.string().min(1).max(4096).refine((p) => isAbsolute(p) && !p.includes('\0') && !p.split('/').includes('..'), 'must be an absolute host path without ..');
const seconds = z.number().int().min(1).max(MAX_TIMEOUT_SECONDS);
const approvalAction = z.enum(['deny', 'ask']);
const count = (max: number) => z.number().int().min(0).max(max);

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '';
  } catch {
    return false;
  }
}

export const quotasSchema = z.object({
  /** Live (creating, running, paused) sandboxes at once. */
  maxSandboxes: count(100_000).optional(),
  /** Sum of the live sandboxes' cpus. */
  maxVcpus: z.number().min(0).max(100_000).optional(),
  /** Sum of the live sandboxes' memoryMiB. */
  maxMemoryMiB: count(1 << 30).optional(),
  /** Sum of the live sandboxes' diskMiB. */
  maxDiskMiB: count(1 << 30).optional(),
  /** Ceiling of one sandbox's lifetime (at create and on POST …/timeout). */
  maxLifetimeSeconds: seconds.optional(),
  /** Sandboxes created in any rolling 60 s. */
  createsPerMinute: count(100_000).optional(),
}).strict();

export const policyDocumentSchema = z.object({
  /** Free text for people; ignored by evaluation. */
  description: z.string().max(2000).optional(),
  runtimes: z.object({
    /** Tiers sandboxes may use (default: any the operator allows). */
    allowed: z.array(runtimeName).min(1).optional(),
    /** Floor: the stronger of this and the operator's applies. */
    minimum: runtimeName.optional(),
    /** Tier of a spec that names none, raised to the floors. */
    default: runtimeName.optional(),
  }).strict().optional(),
  resources: z.object({
    maxCpus: z.number().min(0.01).max(64).optional(),
    maxMemoryMiB: z.number().int().min(16).max(262_144).optional(),
    maxDiskMiB: z.number().int().min(16).max(1_048_576).optional(),
    maxPids: z.number().int().min(8).max(65_536).optional(),
  }).strict().optional(),
  templates: z.object({
    allowed: z.array(templateName).max(1000),
  }).strict().optional(),
  network: z.object({
    /** The allowlist of a spec that gives none. */
    defaultAllow: z.array(egressRuleSchema).max(256).optional(),
    /** Always added to every sandbox's deny list (at create and on every live change). */
    defaultDeny: z.array(egressRuleSchema).max(256).optional(),
    /** Everything a sandbox may ever be allowed: each allow entry must be covered by one of these. [] = no network. */
    allowCeiling: z.array(egressRuleSchema).max(1000).optional(),
    /** true: no ceiling (lifts a ceiling the server default sets). */
    allowAny: z.boolean().optional(),
  }).strict().refine((n) => !(n.allowAny === true && n.allowCeiling !== undefined), {
    message: 'give allowCeiling or allowAny: true, not both', path: ['allowAny'],
  }).optional(),
  mounts: z.object({
    /** Host paths under which bind sources must lie (after links are resolved). [] = no host mounts. */
    allowedHostPrefixes: z.array(hostPrefix).max(256).optional(),
    /** false: host mounts must be read-only. */
    allowReadWrite: z.boolean().optional(),
  }).strict().optional(),
  lifetime: z.object({
    maxSeconds: seconds,
  }).strict().optional(),
  exec: z.object({
    /** Record each command's output (capped) in the blob store, named by its exec record (default true). */
    recordOutput: z.boolean(),
    /** Bytes kept per stream when recorded (default 65536). */
    outputCapBytes: z.number().int().min(0).max(1024 * 1024).optional(),
  }).strict().optional(),
  /** Evidence kept beyond the audit log (docs/records.md). */
  evidence: z.object({
    /** gvisor sandboxes: trace syscalls (runsc --strace), kept as an evidence.strace blob at the end. */
    syscallTrace: z.boolean().optional(),
    /** container sandboxes: a file.changes event after each exec and at the end (default true). */
    fileChanges: z.boolean().optional(),
    /** Only these syscalls (default: all). */
    syscalls: z.array(z.string().regex(/^[a-z0-9_]{1,32}$/, 'must be a syscall name')).min(1).max(400).optional(),
  }).strict().optional(),
  /** Which alert.* detectors run for this tenant's sandboxes (docs/records.md#detectors); all by default. */
  detectors: z.object({
    /** Only these run (default: all). */
    enabled: z.array(z.enum(DETECTOR_NAMES)).max(DETECTOR_NAMES.length).optional(),
    /** These never run (wins over enabled). */
    disabled: z.array(z.enum(DETECTOR_NAMES)).max(DETECTOR_NAMES.length).optional(),
    /** repeated_denials fires at `count` denials within `windowSeconds` (default 5 in 60). */
    repeatedDenials: z.object({
      count: z.number().int().min(1).max(10_000),
      windowSeconds: z.number().int().min(1).max(86_400),
    }).strict().optional(),
  }).strict().optional(),
  /** What needs a person's approval ('ask') or is refused outright ('deny'). */
  approvals: z.object({
    egressOutsideAllowlist: approvalAction.optional(),
    readWriteMount: approvalAction.optional(),
    lifetimeAbove: z.object({ seconds, action: approvalAction }).strict().optional(),
    /** How long a request waits for a decision before it is denied (default: the server's, 120 s). */
    timeoutSeconds: z.number().int().min(1).max(86_400).optional(),
    /** Where approval.requested is POSTed (signed with the server's secret); replaces the server's URL. */
    webhookUrl: z.string().max(2048).refine(isHttpUrl, 'must be an http:// or https:// URL').optional(),
  }).strict().optional(),
  quotas: quotasSchema.optional(),
}).strict();

export type PolicyDocument = z.infer<typeof policyDocumentSchema>;
export type Quotas = z.infer<typeof quotasSchema>;

/** "network.allowCeiling.2: …" for the first problem; the 400's field is that path. */
function explain(err: z.ZodError): { field: string; message: string } {
  const issue = err.issues[0];
  if (!issue) return { field: '', message: 'invalid policy' };
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys' && issue.keys[0] !== undefined) path.push(issue.keys[0]);
  const field = path.join('.');
  const message = issue.code === 'unrecognized_keys' ? `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')}` : issue.message;
  return { field, message: `${field ? `policy.${field}` : 'policy'}: ${message}` };
}

/** Validates a document already parsed into a value; 400 naming the path of the first problem. */
export function validatePolicy(value: unknown): PolicyDocument {
  const r = policyDocumentSchema.safeParse(value ?? {});
  if (!r.success) {
    const { field, message } = explain(r.error);
    throw badRequest(message, field ? `policy.${field}` : 'policy');
  }
  return r.data;
}

/** A policy file's text, YAML or JSON (JSON is YAML), validated. */
export function parsePolicyText(text: string): PolicyDocument {
  let value: unknown;
  try {
    value = parseYaml(text, { maxAliasCount: 100 });
  } catch (e) {
    throw badRequest(`policy: not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`, 'policy');
  }
  return validatePolicy(value === null ? {} : value);
}

/** A document as YAML text, ready to edit and `airlock policy set` again. */
export function policyToYaml(doc: PolicyDocument): string {
  return Object.keys(doc).length === 0 ? '{}\n' : stringifyYaml(doc);
}
