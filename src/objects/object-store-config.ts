import path from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import { LocalObjectStore } from './local-object-store.js';
import type { ObjectStore } from './object-store.js';
import { S3ObjectStore, type S3Location } from './s3-object-store.js';

/** The CARRYON_OBJECT_STORE_* options, as the config schema validated them. */
export interface ObjectStoreSettings {
  CARRYON_OBJECT_STORE_URL: string;
  CARRYON_OBJECT_STORE_ENDPOINT: string;
  CARRYON_OBJECT_STORE_REGION: string;
  CARRYON_OBJECT_STORE_PATH_STYLE: boolean;
  CARRYON_OBJECT_STORE_TIMEOUT_MS: number;
  CARRYON_OBJECT_STORE_ATTEMPTS: number;
}

const ignore = (): void => undefined;
const QUIET_SDK_LOGGER = { trace: ignore, debug: ignore, info: ignore, warn: ignore, error: ignore };

/** S3's own bucket naming rules (3-63 lowercase letters, digits, dots, hyphens). */
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Why `url` cannot name an object store, or null when it can ('' is fine: none configured). Messages never repeat the value. */
export function objectStoreUrlProblem(url: string): string | null {
  if (url === '') return null;
  if (url.startsWith('s3://')) return s3LocationOf(url) ? null : 'must be s3://<bucket>[/<prefix>] with a valid bucket name';
  if (url.startsWith('file://')) return path.isAbsolute(url.slice('file://'.length)) ? null : 'a file:// store needs an absolute path (file:///mnt/...)';
  return 'must be an s3:// or file:// URL';
}

/** `s3://bucket/some/prefix` → bucket and `some/prefix/`; null when malformed. */
export function s3LocationOf(url: string): S3Location | null {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m || !BUCKET.test(m[1])) return null;
  const parts = (m[2] ?? '').split('/').filter(Boolean);
  if (parts.some((p) => p === '.' || p === '..')) return null;
  return { bucket: m[1], prefix: parts.length > 0 ? `${parts.join('/')}/` : '' };
}

/**
 * The configured object store, or null when none is (the embedded default: blobs stay under
 * DATA_DIR only). Credentials come from the AWS SDK's standard chain (AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, a profile, web identity, instance metadata): never from our own options.
 */
export function objectStoreFromConfig(config: ObjectStoreSettings): ObjectStore | null {
  const url = config.CARRYON_OBJECT_STORE_URL;
  if (url === '') return null;
  if (url.startsWith('file://')) return new LocalObjectStore(url.slice('file://'.length));
  const location = s3LocationOf(url);
  if (!location) throw new Error('CARRYON_OBJECT_STORE_URL: not an s3:// URL'); // the config schema refused it already
  const timeoutMs = config.CARRYON_OBJECT_STORE_TIMEOUT_MS;
  const client = new S3Client({
    region: config.CARRYON_OBJECT_STORE_REGION,
    endpoint: config.CARRYON_OBJECT_STORE_ENDPOINT || undefined,
    forcePathStyle: config.CARRYON_OBJECT_STORE_PATH_STYLE,
    // Our bounded retries instead (S3ObjectStore): an upload's file stream must be reopened per try.
    maxAttempts: 1,
    // A dead endpoint fails in timeoutMs, and so does a transfer that stalls that long.
    requestHandler: { connectionTimeout: timeoutMs, requestTimeout: timeoutMs },
    // Only the checksums S3 requires: many S3-compatible servers refuse the SDK's default streaming
    // CRC trailers, and every blob's sha256 is checked end to end by us anyway.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // Failures reach our callers as ObjectStoreErrors (and from there the log); without a logger
    // of its own the SDK prints some of them to the console as well.
    logger: QUIET_SDK_LOGGER,
  });
  return new S3ObjectStore({ ...location, client, timeoutMs, retry: { attempts: config.CARRYON_OBJECT_STORE_ATTEMPTS, firstDelayMs: 200 } });
}
