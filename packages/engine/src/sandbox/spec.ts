import { z } from 'zod';
import { badRequest } from '../errors.js';
import { egressRuleSchema } from '../network/egress-policy.js';
import type { SandboxSpec, SandboxSpecInput } from '../types.js';

export const DEFAULT_RESOURCES = { cpus: 1, memoryMiB: 512, diskMiB: 1024, pids: 256 } as const;
export const DEFAULT_TIMEOUT_SECONDS = 300;
/** Where an agent's results are collected from unless the spec says otherwise. */
export const DEFAULT_OUTPUT_PATH = '/work/out';
export const MAX_TIMEOUT_SECONDS = 86_400;

const envKey = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a shell-style variable name').max(256);
const noNul = (max: number) => z.string().max(max).refine((s) => !s.includes('\0'), 'must not contain NUL');
export const absolutePath = noNul(4096).refine((p) => p.startsWith('/'), 'must be an absolute path');

export const resourcesSchema = z.object({
  cpus: z.number().min(0.01).max(64).optional(),
  memoryMiB: z.number().int().min(16).max(262_144).optional(),
  diskMiB: z.number().int().min(16).max(1_048_576).optional(),
  pids: z.number().int().min(8).max(65_536).optional(),
}).strict();

/** Egress policy: the grammar of network/egress-policy.ts; a PATCH takes the same shape. */
export const networkPolicySchema = z.object({
  allow: z.array(egressRuleSchema).max(256).optional(),
  deny: z.array(egressRuleSchema).max(256).optional(),
  /** Per-direction cap on the sandbox's link, megabits per second. */
  bandwidthMbps: z.number().min(0.1).max(100_000).optional(),
}).strict();

export const mountSchema = z.object({
  source: absolutePath,
  target: absolutePath,
  readOnly: z.boolean().optional(),
}).strict();

/** Volume names: what `airlock volume create NAME` accepts; unique per tenant. */
export const volumeNameSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a volume name (lowercase letters, digits, . _ -; up to 63)');

export const volumeMountSchema = z.object({
  name: volumeNameSchema,
  target: absolutePath,
  readOnly: z.boolean().optional(),
}).strict();

export const sandboxSpecInputSchema = z.object({
  template: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a template name').optional(),
  runtime: z.enum(['container', 'gvisor', 'microvm']).optional(),
  resources: resourcesSchema.optional(),
  timeoutSeconds: z.number().int().min(1).max(MAX_TIMEOUT_SECONDS).optional(),
  network: networkPolicySchema.optional(),
  mounts: z.array(mountSchema).max(32).optional(),
  volumes: z.array(volumeMountSchema).max(16).optional(),
  env: z.record(envKey, noNul(128 * 1024)).optional(),
  workdir: absolutePath.optional(),
  outputPath: absolutePath.optional(),
  metadata: z.record(z.string().min(1).max(128), z.string().max(1024)).optional(),
  secrets: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be a secret name')).max(32).optional(),
}).strict();

/** Zod's first issue as "field.path: message", the form every 400 uses. */
export function firstIssue(err: z.ZodError): { field: string; message: string } {
  const issue = err.issues[0];
  const field = issue ? issue.path.map(String).join('.') : '';
  return { field, message: issue ? `${field || 'body'}: ${issue.message}` : 'invalid input' };
}

export function parseSpec(input: unknown): SandboxSpec {
  const r = sandboxSpecInputSchema.safeParse(input ?? {});
  if (!r.success) {
    const { field, message } = firstIssue(r.error);
    throw badRequest(message, field);
  }
  const i: SandboxSpecInput = r.data as SandboxSpecInput;
  const env = i.env ?? {};
  if (Object.keys(env).length > 512) throw badRequest('env: at most 512 variables', 'env');
  const metadata = i.metadata ?? {};
  if (Object.keys(metadata).length > 64) throw badRequest('metadata: at most 64 entries', 'metadata');
  return {
    template: i.template ?? 'base',
    runtime: i.runtime ?? 'container',
    resources: { ...DEFAULT_RESOURCES, ...stripUndefined(i.resources ?? {}) },
    timeoutSeconds: i.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS,
    network: {
      allow: i.network?.allow ?? [], deny: i.network?.deny ?? [],
      ...(i.network?.bandwidthMbps !== undefined ? { bandwidthMbps: i.network.bandwidthMbps } : {}),
    },
    mounts: (i.mounts ?? []).map((m) => ({ source: m.source, target: m.target, readOnly: m.readOnly ?? true })),
    volumes: (i.volumes ?? []).map((v) => ({ name: v.name, target: v.target, readOnly: v.readOnly ?? true })),
    env,
    workdir: i.workdir ?? '/work',
    outputPath: i.outputPath ?? DEFAULT_OUTPUT_PATH,
    metadata,
    ...(i.secrets?.length ? { secrets: [...new Set(i.secrets)] } : {}),
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
