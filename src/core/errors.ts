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
  database_unavailable: { status: 503, type: 'server_error' },
  /** The bucket (CARRYON_OBJECT_STORE_URL) could not be reached on a path that needs it: an upload, a graph to fetch, a shard download. */
  object_store_unavailable: { status: 503, type: 'server_error' },
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

/** Seconds a client is told to wait (Retry-After) while the metadata database is unreachable. */
const DATABASE_RETRY_AFTER_S = '5';

/** The one answer to a request that needed the metadata database while it was unreachable (503, never 401). */
export function databaseUnavailableError(): ApiError {
  return new ApiError('database_unavailable', 'The metadata database is unreachable; retry shortly.', { headers: { 'retry-after': DATABASE_RETRY_AFTER_S } });
}

/** Seconds a client is told to wait while the object store is unreachable (its retries already took a few). */
const OBJECT_STORE_RETRY_AFTER_S = '5';

/**
 * The one answer to a request that needed the object store while it was unreachable or erring (503).
 * `cause` (which names the bucket and the failure) goes to the server's log, not to the client.
 */
export function objectStoreUnavailableError(cause: Error): ApiError {
  const err = new ApiError('object_store_unavailable', 'The object store (carry-on graphs, harvest shards) is unreachable; retry shortly.', {
    headers: { 'retry-after': OBJECT_STORE_RETRY_AFTER_S },
  });
  err.cause = cause;
  return err;
}

/** Socket-level failures: the server is down, restarting, or cannot be reached. */
const UNREACHABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);
/** SQLSTATEs of a server going away or not taking connections: admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections. */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);
/** node-postgres reports a dropped or never-made connection with these messages and no code. */
const UNREACHABLE_MESSAGE = /Connection terminated|timeout exceeded when trying to connect|not queryable|Connection refused/i;

/**
 * The metadata database cannot be reached (PostgreSQL down, restarting, or cut off): an operating
 * state with its own answer (503 database_unavailable), not a server bug and not a bad request.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (UNREACHABLE_ERRNOS.has(code) || UNAVAILABLE_SQLSTATES.has(code) || /^08[0-9A-Z]{3}$/.test(code))) return true;
  // Node's happy-eyeballs connect fails with an AggregateError of one error per address tried.
  if (err instanceof AggregateError) return err.errors.some(isDatabaseUnavailable);
  return code === undefined && UNREACHABLE_MESSAGE.test(err.message);
}

export function isApiError(err: unknown): err is ApiError {
  return err instanceof ApiError;
}
