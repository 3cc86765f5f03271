/** One error type for every boundary: the server maps `status` and `code` straight to HTTP. */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'policy_denied'
  | 'approval_required'
  | 'approval_denied'
  | 'quota_exceeded'
  | 'unavailable'
  | 'internal';

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  policy_denied: 422,
  approval_required: 422,
  approval_denied: 422,
  quota_exceeded: 429,
  unavailable: 503,
  internal: 500,
};

export class AirlockError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** The input field at fault, for 400s ("resources.memoryMiB"). */
  readonly field: string | undefined;
  /** Machine-readable facts for the error body (a 429's quota, limit and used). */
  readonly details: Record<string, string | number> | undefined;

  constructor(code: ErrorCode, message: string, field?: string, details?: Record<string, string | number>) {
    super(message);
    this.name = 'AirlockError';
    this.code = code;
    this.status = STATUS[code];
    this.field = field;
    this.details = details;
  }
}

export const notFound = (what: string, id: string) => new AirlockError('not_found', `${what} ${id} not found`);
export const badRequest = (message: string, field?: string) => new AirlockError('bad_request', message, field);
export const conflict = (message: string) => new AirlockError('conflict', message);
export const forbidden = (message: string) => new AirlockError('forbidden', message);

export function isAirlockError(e: unknown): e is AirlockError {
  return e instanceof AirlockError;
}
