import { z } from 'zod';
import { badRequest } from '../errors.js';
import type { ExecRequest } from '../types.js';
import { absolutePath, firstIssue, MAX_TIMEOUT_SECONDS } from './spec.js';

const arg = z.string().max(128 * 1024).refine((s) => !s.includes('\0'), 'must not contain NUL');

export const execRequestSchema = z.object({
  cmd: z.array(arg).min(1, 'must name a command').max(4096),
  cwd: absolutePath.optional(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a shell-style variable name').max(256), arg).optional(),
  stdin: z.union([z.string(), z.instanceof(Uint8Array)]).optional(),
  timeoutSeconds: z.number().min(0).max(MAX_TIMEOUT_SECONDS).optional(),
  background: z.boolean().optional(),
  user: z.object({ uid: z.number().int().min(0).max(65_535), gid: z.number().int().min(0).max(65_535) }).optional(),
});

export const MAX_STDIN_BYTES = 16 * 1024 * 1024;

export function parseExec(req: unknown): ExecRequest {
  const r = execRequestSchema.safeParse(req);
  if (!r.success) {
    const { field, message } = firstIssue(r.error);
    throw badRequest(message, field);
  }
  const e = r.data as ExecRequest;
  if (e.cmd[0] === '') throw badRequest('cmd.0: must not be empty', 'cmd.0');
  const stdinLen = typeof e.stdin === 'string' ? Buffer.byteLength(e.stdin) : e.stdin?.byteLength ?? 0;
  if (stdinLen > MAX_STDIN_BYTES) throw badRequest('stdin: at most 16 MiB', 'stdin');
  return e;
}
