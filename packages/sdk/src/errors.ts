/**
 * Every failure the SDK reports. `status` is the HTTP status, or 0 when no answer came
 * (code `unreachable` or `timeout`); `code` is the API's error code (`not_found`, `conflict`, …).
 */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** The input field at fault, for 400s ("resources.memoryMiB"). */
  readonly field?: string;
  /** For a 429 quota_exceeded: which quota, its limit and the current use. */
  readonly quota?: string;
  readonly limit?: number;
  readonly used?: number;

  constructor(status: number, code: string, message: string, field?: string, options?: { cause?: unknown; quota?: { quota: string; limit: number; used: number } }) {
    super(message, options);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    if (field !== undefined) this.field = field;
    if (options?.quota) {
      this.quota = options.quota.quota;
      this.limit = options.quota.limit;
      this.used = options.quota.used;
    }
  }
}

const CODE_BY_STATUS: Record<number, string> = {
  400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 409: 'conflict',
  413: 'too_large', 422: 'policy_denied', 429: 'quota_exceeded', 503: 'unavailable',
};

/** Builds the ApiError for an error response from its status and (possibly non-JSON) body text. */
export function errorFromResponse(status: number, bodyText: string): ApiError {
  try {
    const parsed = JSON.parse(bodyText) as { error?: { code?: unknown; message?: unknown; field?: unknown; quota?: unknown; limit?: unknown; used?: unknown } };
    const e = parsed?.error;
    if (e && typeof e.code === 'string' && typeof e.message === 'string') {
      const quota = typeof e.quota === 'string' && typeof e.limit === 'number' && typeof e.used === 'number' ? { quota: e.quota, limit: e.limit, used: e.used } : undefined;
      return new ApiError(status, e.code, e.message, typeof e.field === 'string' ? e.field : undefined, quota ? { quota } : undefined);
    }
  } catch { /* not our JSON: a proxy's page, say */ }
  const code = CODE_BY_STATUS[status] ?? (status >= 500 ? 'internal' : 'bad_request');
  const snippet = bodyText.trim().slice(0, 200);
  return new ApiError(status, code, snippet ? `HTTP ${status}: ${snippet}` : `HTTP ${status}`);
}
