import type { Readable } from 'node:stream';

/** What a stored object is: its size and its ETag (quoted, as S3 sends it), for Range and If-None-Match. */
export interface ObjectInfo {
  bytes: number;
  etag: string;
}

/** Inclusive byte offsets, as HTTP's Range header counts them. */
export interface ByteSpan {
  start: number;
  end: number;
}

/** `bytes` is the whole object's size, also when only a span was asked for. */
export interface ObjectBody extends ObjectInfo {
  /** The bytes asked for (the span, or the whole object). */
  body: Readable;
}

/**
 * Where blobs (carry-on graphs, later harvest shards) live when replicas share them: a bucket of an
 * S3-compatible server, or a folder (a shared mount, or tests). Keys are relative to the store's
 * own prefix. `get`/`head` answer null for a missing object; every other failure is an
 * ObjectStoreError, after the implementation's bounded retries.
 */
export interface ObjectStore {
  /** Names the store in messages and logs (`s3://bucket/prefix`, never a credential). */
  readonly description: string;
  /** Uploads a local file under `key`, replacing any object there. */
  putFile(key: string, file: string): Promise<void>;
  head(key: string): Promise<ObjectInfo | null>;
  get(key: string, span?: ByteSpan): Promise<ObjectBody | null>;
  /** Removes `key`; a missing object is not an error. */
  delete(key: string): Promise<void>;
}

/**
 * The store could not answer: unreachable, timing out, refusing our credentials, or erring. Callers
 * on a request path turn it into a 503 (objectStoreUnavailableError); nothing else should leak it.
 */
export class ObjectStoreError extends Error {
  constructor(
    message: string,
    /** A network failure, a timeout or a 5xx: trying again later may succeed. */
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ObjectStoreError';
  }
}

export function isObjectStoreError(err: unknown): err is ObjectStoreError {
  return err instanceof ObjectStoreError;
}
