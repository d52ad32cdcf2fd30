import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { ObjectStoreError, type ByteSpan, type ObjectBody, type ObjectInfo, type ObjectStore } from './object-store.js';
import { withRetries, type RetryPolicy } from './retry.js';

export interface S3Location {
  bucket: string;
  /** Key prefix inside the bucket, '' or ending in '/'. */
  prefix: string;
}

export interface S3ObjectStoreOptions extends S3Location {
  /** Built by the caller (endpoint, region, path style, credentials from the AWS chain): see objectStoreFromConfig. */
  client: S3Client;
  /** Bounds a small request (HEAD, DELETE) whole; for a transfer, the longest silence on its socket. */
  timeoutMs: number;
  retry: RetryPolicy;
  /** Files this large or larger go up in parts (S3 takes at most 5 GiB in one PUT; parts retry cheaper). */
  multipartBytes?: number;
  /** Size of each part but the last (S3's minimum is 5 MiB). */
  partBytes?: number;
}

/** Past this a single PUT risks too much on one connection; S3's own limit is 5 GiB. */
const MULTIPART_BYTES = 64 * 1024 * 1024;
const PART_BYTES = 16 * 1024 * 1024;

/** Socket-level failures: the server is down, restarting, or cannot be reached. */
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'UND_ERR_SOCKET']);

/**
 * An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, s3rver in tests). The SDK's own retries are
 * off (maxAttempts 1 on the client) and ours apply instead, because an upload's body is a file stream
 * that must be reopened for every try.
 */
export class S3ObjectStore implements ObjectStore {
  readonly description: string;

  constructor(private readonly opts: S3ObjectStoreOptions) {
    this.description = `s3://${opts.bucket}/${opts.prefix}`;
  }

  async putFile(key: string, file: string): Promise<void> {
    await this.retried(`upload ${key}`, async () => {
      // Opened here, not lazily by the stream: a stream still opening when a fast failure ends the
      // try would report a file removed meanwhile (a cleaned-up staging folder) as an 'error' event
      // nobody listens to, an uncaught exception; an open that fails now is this try's error.
      const handle = await fs.promises.open(file, 'r');
      let bytes: number;
      try {
        bytes = (await handle.stat()).size;
      } catch (err) {
        await handle.close();
        throw err;
      }
      const body = handle.createReadStream();
      const params = { Bucket: this.opts.bucket, Key: this.key(key), Body: body };
      try {
        if (bytes >= (this.opts.multipartBytes ?? MULTIPART_BYTES)) {
          // CreateMultipartUpload, the parts two at a time, CompleteMultipartUpload; aborted on failure.
          const upload = new Upload({ client: this.opts.client, params, partSize: this.opts.partBytes ?? PART_BYTES, queueSize: 2, leavePartsOnError: false });
          await upload.done();
        } else {
          await this.opts.client.send(new PutObjectCommand({ ...params, ContentLength: bytes }));
        }
      } finally {
        body.destroy();
      }
    });
  }

  async head(key: string): Promise<ObjectInfo | null> {
    return this.retried(`look up ${key}`, async () => {
      try {
        const r = await this.opts.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }), { abortSignal: AbortSignal.timeout(this.opts.timeoutMs) });
        return { bytes: r.ContentLength ?? 0, etag: r.ETag ?? '' };
      } catch (err) {
        if (isNotFound(err)) return null;
        throw err;
      }
    });
  }

  async get(key: string, span?: ByteSpan): Promise<ObjectBody | null> {
    return this.retried(`download ${key}`, async () => {
      try {
        const r = await this.opts.client.send(
          new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Range: span ? `bytes=${span.start}-${span.end}` : undefined }),
        );
        const total = span ? totalOfContentRange(r.ContentRange) : undefined;
        return { body: r.Body as Readable, bytes: total ?? r.ContentLength ?? 0, etag: r.ETag ?? '' };
      } catch (err) {
        if (isNotFound(err)) return null;
        throw err;
      }
    });
  }

  async delete(key: string): Promise<void> {
    await this.retried(`delete ${key}`, async () => {
      await this.opts.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }), { abortSignal: AbortSignal.timeout(this.opts.timeoutMs) });
    });
  }

  private key(key: string): string {
    return `${this.opts.prefix}${key}`;
  }

  private retried<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    return withRetries(this.opts.retry, attempt, (err) => this.classify(what, err));
  }

  private classify(what: string, err: unknown): ObjectStoreError {
    const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const status = e.$metadata?.httpStatusCode;
    const retryable =
      (e.code !== undefined && NETWORK_CODES.has(e.code)) ||
      e.name === 'TimeoutError' ||
      e.name === 'AbortError' ||
      (status !== undefined && (status >= 500 || status === 429)) ||
      // Happy-eyeballs connects fail with one error per address tried.
      (err instanceof AggregateError && err.errors.some((x: { code?: string }) => x.code !== undefined && NETWORK_CODES.has(x.code)));
    const detail = status !== undefined ? `${e.name ?? 'error'} (HTTP ${status})` : (e.code ?? e.name ?? 'error');
    return new ObjectStoreError(`object store ${this.description}: could not ${what}: ${detail}${e.message ? `: ${e.message}` : ''}`, retryable, { cause: err });
  }
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'NoSuchKey' || e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404;
}

/** `bytes 0-9/1234` → 1234. */
function totalOfContentRange(header: string | undefined): number | undefined {
  const m = header ? /\/(\d+)$/.exec(header) : null;
  return m ? Number(m[1]) : undefined;
}
