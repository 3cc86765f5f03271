/**
 * One mapping from anything thrown inside a request to the API's error body, so every route
 * answers errors the same way and nothing internal (stacks, SQL, host paths) leaks out.
 */
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';

export interface ErrorBody {
  /** A 429 quota refusal also names the quota, its limit and the use (docs/tenants.md). */
  error: { code: string; message: string; field?: string; quota?: string; limit?: number; used?: number };
}

export interface MappedError {
  status: number;
  body: ErrorBody;
  /** true when the cause is ours, not the client's: worth logging at error level. */
  internal: boolean;
}

/** Codes for statuses the engine never produces itself but HTTP plumbing does. */
const CODE_BY_STATUS: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'bad_request',
  409: 'conflict',
  413: 'too_large',
  415: 'unsupported_media_type',
  422: 'policy_denied',
  429: 'quota_exceeded',
  503: 'unavailable',
};

interface ZodLikeIssue {
  code?: string;
  path?: PropertyKey[];
  keys?: string[];
  message?: string;
}

/** "resources.memoryMiB"-style path of a validation issue; unknown keys name the key itself. */
export function issueField(issue: ZodLikeIssue): string {
  const path = (issue.path ?? []).map(String);
  if (issue.code === 'unrecognized_keys' && issue.keys && issue.keys[0] !== undefined) path.push(issue.keys[0]);
  return path.join('.');
}

/** Errors the HTTP layer raises itself (auth, query parsing), mapped like the engine's. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly field?: string) {
    super(message);
    this.name = 'HttpError';
  }
}

function isAirlockErrorLike(e: unknown): e is { status: number; code: string; message: string; field?: string } {
  if (typeof e !== 'object' || e === null) return false;
  const o = e as Record<string, unknown>;
  return (o.name === 'AirlockError' || o.constructor?.name === 'AirlockError')
    && typeof o.status === 'number' && typeof o.code === 'string' && typeof o.message === 'string';
}

function body(code: string, message: string, field?: string): ErrorBody {
  return { error: field ? { code, message, field } : { code, message } };
}

export function mapError(err: unknown): MappedError {
  // Request validation by the zod validator compiler: name the first failing field.
  if (hasZodFastifySchemaValidationErrors(err)) {
    const first = err.validation[0]!;
    const params = first.params as ZodLikeIssue;
    const path = first.instancePath.split('/').filter(Boolean);
    const field = issueField({ code: first.keyword, path, keys: params.keys });
    const where = (err as { validationContext?: string }).validationContext;
    const label = field || where || 'body';
    return { status: 400, body: body('bad_request', `${label}: ${first.message}`, field || undefined), internal: false };
  }

  if (err instanceof HttpError) {
    return { status: err.status, body: body(err.code, err.message, err.field), internal: err.status >= 500 };
  }

  if (isAirlockErrorLike(err)) {
    const internal = err.status >= 500;
    // An engine 500 may carry host detail in its message; say only that it failed.
    const message = err.code === 'internal' ? 'internal error' : err.message;
    const mapped = body(err.code, message, err.field);
    const details = (err as { details?: Record<string, unknown> }).details;
    if (details && typeof details.quota === 'string') {
      Object.assign(mapped.error, { quota: details.quota, limit: Number(details.limit), used: Number(details.used) });
    }
    return { status: err.status, body: mapped, internal };
  }

  // Fastify's own errors (JSON parse, body limit, media type, …) carry a 4xx statusCode.
  const statusCode = typeof err === 'object' && err !== null ? (err as { statusCode?: unknown }).statusCode : undefined;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    const code = CODE_BY_STATUS[statusCode] ?? 'bad_request';
    return { status: statusCode, body: body(code, clientMessage(err, statusCode)), internal: false };
  }
  if (statusCode === 503) {
    return { status: 503, body: body('unavailable', 'service unavailable'), internal: false };
  }

  return { status: 500, body: body('internal', 'internal error'), internal: true };
}

function clientMessage(err: unknown, status: number): string {
  const code = (err as { code?: unknown }).code;
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE' || status === 413) return 'request body is too large';
  if (code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError) return 'body is not valid JSON';
  if (code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return 'body is empty but content-type is application/json';
  const message = (err as { message?: unknown }).message;
  return typeof message === 'string' && message.length > 0 && message.length < 500 ? message : 'bad request';
}
