/**
 * The one error module: every failure a client can see has a stable code here, and this table is the
 * only place that decides its HTTP status and OpenAI error `type`. Throw `ApiError`; the server's error
 * handler turns it into `{error: {message, type, param, code}}`.
 */
const ERROR_TABLE = {
  invalid_api_key: { status: 401, type: 'invalid_request_error' },
  permission_denied: { status: 403, type: 'invalid_request_error' },
  model_not_found: { status: 404, type: 'invalid_request_error' },
  /** A carry-on asked for on a base other than the one it was trained on (several bases served). */
  carry_on_base_mismatch: { status: 400, type: 'invalid_request_error' },
  not_found: { status: 404, type: 'invalid_request_error' },
  method_not_allowed: { status: 405, type: 'invalid_request_error' },
  conflict: { status: 409, type: 'invalid_request_error' },
  invalid_json: { status: 400, type: 'invalid_request_error' },
  invalid_value: { status: 400, type: 'invalid_request_error' },
  invalid_type: { status: 400, type: 'invalid_request_error' },
  missing_required_parameter: { status: 400, type: 'invalid_request_error' },
  unknown_parameter: { status: 400, type: 'invalid_request_error' },
  unsupported_parameter: { status: 400, type: 'invalid_request_error' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error' },
  request_too_large: { status: 413, type: 'invalid_request_error' },
  uri_too_long: { status: 414, type: 'invalid_request_error' },
  headers_too_large: { status: 431, type: 'invalid_request_error' },
  malformed_request: { status: 400, type: 'invalid_request_error' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  range_not_satisfiable: { status: 416, type: 'invalid_request_error' },
  server_overloaded: { status: 429, type: 'server_error' },
  rate_limit_exceeded: { status: 429, type: 'rate_limit_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  model_loading: { status: 503, type: 'server_error' },
  shutting_down: { status: 503, type: 'server_error' },
  internal_error: { status: 500, type: 'server_error' },
  insufficient_storage: { status: 507, type: 'server_error' },
} as const satisfies Record<string, { status: number; type: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly param: string | null;
  /** Extra response headers, e.g. Retry-After on 429/503. */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, opts: { param?: string | null; headers?: Record<string, string> } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.param = opts.param ?? null;
    this.headers = opts.headers ?? {};
  }

  get status(): number {
    return ERROR_TABLE[this.code].status;
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: ERROR_TABLE[this.code].type, param: this.param, code: this.code } };
  }
}

export function statusOf(code: ErrorCode): number {
  return ERROR_TABLE[code].status;
}

/** The one answer to a write that found the disk full (507). */
export function diskFullError(): ApiError {
  return new ApiError('insufficient_storage', "The server's disk is full; delete carry-ons, harvest shards or training jobs to free space, then retry.");
}

/** The disk is full (or over quota): an operating state with its own answer, not a server bug. */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL';
}

export function isApiError(err: unknown): err is ApiError {
  return err instanceof ApiError;
}
