/**
 * Request and response schemas of the REST API. The same zod objects validate requests,
 * serialize responses and generate /openapi.json, so the document cannot drift from the code.
 * The engine validates again (it has other front ends); these bounds are the HTTP boundary's.
 */
import { z } from 'zod';
import { parseEgressRule } from '@airlock/engine';
import { volumeMountInfo, volumeMountInput } from './volume-schemas.js';
import { sandboxSecretsInput } from './secret-schemas.js';

const MAX_PATH_BYTES = 4096;
const MAX_ARG_BYTES = 128 * 1024;

const byteLength = (s: string) => Buffer.byteLength(s, 'utf8');
const noNul = (s: string) => !s.includes('\0');

/** A string bounded in UTF-8 bytes (what the kernel and the agent count), without NUL. */
const boundedString = (maxBytes: number) =>
  z.string()
    .refine(noNul, 'must not contain NUL')
    .refine((s) => byteLength(s) <= maxBytes, `must be at most ${maxBytes} bytes`);

export const absolutePath = z.string()
  .min(1)
  .refine((p) => p.startsWith('/'), 'must be an absolute path')
  .refine(noNul, 'must not contain NUL')
  .refine((p) => byteLength(p) <= MAX_PATH_BYTES, `must be at most ${MAX_PATH_BYTES} bytes`)
  .describe('absolute path inside the sandbox');

export const sandboxId = z.string().regex(/^[a-z0-9]{1,64}$/, 'must be a sandbox id').describe('sandbox id');

const envKey = z.string().max(256).regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a shell-style variable name');
export const envMap = z.record(envKey, boundedString(MAX_ARG_BYTES)).describe('environment variables');

const runtimeName = z.enum(['container', 'gvisor', 'microvm']);
const sandboxState = z.enum(['creating', 'running', 'paused', 'stopped', 'killed', 'expired', 'failed']);
const egressRule = z.string().min(1).max(260).superRefine((v, ctx) => {
  try { parseEgressRule(v); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message }); }
}).describe('host name, *.suffix, IPv4 or IPv4 CIDR, each optionally with :PORT or :PORT-PORT');

export const networkPolicyInput = z.strictObject({
  allow: z.array(egressRule).max(256).optional().describe('egress allowlist; empty = no network at all'),
  deny: z.array(egressRule).max(256).optional().describe('always wins over allow'),
  bandwidthMbps: z.number().min(0.1).max(100_000).optional().describe('per-direction cap of the sandbox link'),
});

export const resourcesInput = z.strictObject({
  cpus: z.number().min(0.01).max(64).optional(),
  memoryMiB: z.number().int().min(16).max(262_144).optional(),
  diskMiB: z.number().int().min(16).max(1_048_576).optional(),
  pids: z.number().int().min(8).max(65_536).optional(),
});

const mountInput = z.strictObject({
  source: absolutePath.describe('host path'),
  target: absolutePath,
  readOnly: z.boolean().optional().describe('default true'),
});

export const createSandboxBody = z.strictObject({
  template: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a template name').optional(),
  runtime: runtimeName.optional(),
  resources: resourcesInput.optional(),
  timeoutSeconds: z.number().int().min(1).max(86_400).optional().describe('sandbox lifetime'),
  network: networkPolicyInput.optional(),
  mounts: z.array(mountInput).max(32).optional(),
  volumes: z.array(volumeMountInput).max(16).optional(),
  env: envMap.optional(),
  workdir: absolutePath.optional(),
  outputPath: absolutePath.optional().describe('where GET …/outputs collects from; default /work/out'),
  metadata: z.record(z.string().min(1).max(128), z.string().max(1024)).optional(),
  secrets: sandboxSecretsInput.optional(),
});

export const setTimeoutBody = z.strictObject({
  timeoutSeconds: z.number().int().min(1).max(86_400),
});

export const execBody = z.strictObject({
  cmd: z.array(boundedString(MAX_ARG_BYTES)).min(1).max(4096)
    .refine((c) => (c[0] ?? '').length > 0, 'the program name must not be empty')
    .describe('program and arguments, no shell involved'),
  cwd: absolutePath.optional(),
  env: envMap.optional(),
  stdin: z.string().optional().describe('UTF-8 text fed to stdin, then EOF'),
  timeoutSeconds: z.number().min(0).max(86_400).optional().describe('0 or absent: bounded by the sandbox lifetime'),
  background: z.boolean().optional(),
});

export const idParams = z.object({ id: sandboxId });
export const processParams = z.object({
  id: sandboxId,
  pid: z.coerce.number().int().min(1).max(2_147_483_647),
});

/** Query values arrive as strings; "1"/"true" and "0"/"false" are the booleans curl users type. */
const queryBool = z.enum(['1', '0', 'true', 'false']).transform((v) => v === '1' || v === 'true');

export const listSandboxesQuery = z.looseObject({
  state: sandboxState.optional(),
}).describe('also metadata.KEY=VALUE filters');

export const filePathQuery = z.strictObject({ path: absolutePath });
export const fileWriteQuery = z.strictObject({
  path: absolutePath,
  mode: z.string().regex(/^0?[0-7]{1,4}$/, 'must be an octal mode like 0644').optional(),
});
export const fileDeleteQuery = z.strictObject({ path: absolutePath, recursive: queryBool.optional() });

export const killProcessQuery = z.strictObject({
  signal: z.string().regex(/^(SIG)?[A-Za-z0-9]{2,8}$/, 'must be a signal name or number').optional()
    .describe('name (SIGTERM) or number; default SIGKILL'),
});

export const eventsQuery = z.strictObject({
  sandbox: sandboxId.optional(),
  type: z.string().min(1).max(64).optional(),
  tenant: z.string().min(1).max(64).optional().describe("an admin's filter; a tenant key sees only its own tenant"),
  after: z.coerce.number().int().min(0).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).optional(),
  follow: queryBool.optional().describe('1: Server-Sent Events, resumable with Last-Event-ID'),
});

// ---- responses: exactly these fields go out (unknown ones are stripped), so nothing internal
// the engine may carry leaks; clients must still tolerate fields added later. ----

export const errorBody = z.object({
  error: z.object({
    code: z.string(), message: z.string(), field: z.string().optional(),
    quota: z.string().optional().describe('429 quota_exceeded: which quota (maxSandboxes, maxVcpus, …)'),
    limit: z.number().optional().describe('429 quota_exceeded: the quota\'s limit'),
    used: z.number().optional().describe('429 quota_exceeded: what is in use (for maxLifetimeSeconds: the lifetime asked)'),
  }),
}).describe('Error: code (bad_request, unauthorized, forbidden, not_found, conflict, too_large, policy_denied, approval_required, quota_exceeded, rate_limited, …), message, field for 400s and 422s');

const resources = z.object({ cpus: z.number(), memoryMiB: z.number(), diskMiB: z.number(), pids: z.number() });

export const sandboxInfo = z.object({
  id: z.string(),
  tenant: z.string(),
  state: sandboxState,
  runtime: runtimeName,
  template: z.string(),
  resources,
  network: z.object({ allow: z.array(z.string()), deny: z.array(z.string()), bandwidthMbps: z.number().optional() }),
  mounts: z.array(z.object({ source: z.string(), target: z.string(), readOnly: z.boolean() })),
  volumes: z.array(volumeMountInfo),
  workdir: z.string(),
  outputPath: z.string(),
  metadata: z.record(z.string(), z.string()),
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  endedAt: z.string().nullable(),
  expiresAt: z.string(),
  reason: z.string().nullable(),
});

export const sandboxList = z.object({ sandboxes: z.array(sandboxInfo) });

const execReason = z.string().describe('exited | signaled | timeout | oom | killed | sandbox_ended | error');

export const execResult = z.object({
  exitCode: z.number(),
  stdout: z.string(),
  stderr: z.string(),
  durationMs: z.number(),
  reason: execReason,
  truncated: z.boolean().optional(),
});

export const execStarted = z.object({ pid: z.number(), execId: z.string() });

/** Documents the NDJSON stream; each line is one of these. */
export const execStreamLine = z.union([
  z.object({ type: z.enum(['stdout', 'stderr']), data: z.string() }),
  z.object({ type: z.literal('exit'), exitCode: z.number(), reason: execReason, durationMs: z.number(), truncated: z.boolean().optional() }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);

export const processList = z.object({
  processes: z.array(z.object({ pid: z.number(), execId: z.string().nullable(), cmdline: z.array(z.string()) })),
});

const fileType = z.enum(['file', 'dir', 'symlink', 'other']);

export const fileEntries = z.object({
  entries: z.array(z.object({ name: z.string(), type: fileType, size: z.number(), mode: z.number(), mtime: z.string() })),
});

export const fileStat = z.object({ path: z.string(), type: fileType, size: z.number(), mode: z.number(), mtime: z.string() });

export const templateInfo = z.object({
  name: z.string(),
  path: z.string().optional().describe('host path of the topmost layer; admin callers only'),
  sizeBytes: z.number().nullable(),
  createdAt: z.string(),
  digest: z.string().nullable().describe('sha256:<hex> of the recipe or image; null for an old-layout template'),
  layers: z.number().describe('read-only layers a sandbox stacks'),
  inUse: z.number().describe('live sandboxes started from it'),
});

export const templateList = z.object({ templates: z.array(templateInfo) });

export const templateNameParams = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be a template name').describe('template name'),
});

export const templateBuildBody = z.strictObject({
  builtin: z.literal(true).optional().describe('build the built-in recipe of this name (base, tiny)'),
  recipe: z.union([z.string(), z.record(z.string(), z.unknown())]).optional()
    .describe('the recipe: YAML or JSON text, or an object; recipes sent over HTTP cannot copy files'),
  force: z.boolean().optional().describe('rebuild even when the recipe is unchanged (layers are still reused)'),
}).refine((b) => (b.builtin === true) !== (b.recipe !== undefined), { message: 'give exactly one of builtin and recipe', path: ['recipe'] });

export const auditEvent = z.object({
  seq: z.number(),
  ts: z.string(),
  tenant: z.string(),
  sandbox: z.string().nullable(),
  type: z.string(),
  data: z.record(z.string(), z.unknown()),
  prev: z.string(),
  hash: z.string(),
});

export const eventList = z.object({ events: z.array(auditEvent) });

export const health = z.object({ ok: z.boolean(), version: z.string() });

export const noContent = z.undefined().describe('no content');

/** Error statuses every authenticated route may answer. */
export const errorResponses = {
  '4xx': errorBody,
  '5xx': errorBody,
} as const;
