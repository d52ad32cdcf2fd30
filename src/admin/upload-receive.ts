import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Multipart } from '@fastify/multipart';
import { CARRYON_FILES } from '../carryon/manifest.js';
import { ApiError, diskFullError, isDiskFull } from '../core/errors.js';

/** The manifest is small JSON; anything near this is not a manifest. */
export const MAX_MANIFEST_BYTES = 1 << 20;

export interface UploadLimits {
  /** Largest accepted weights file (CARRYON_MAX_CARRYON_BYTES). */
  maxWeightsBytes: number;
  maxManifestBytes: number;
}

export interface UploadHooks {
  /** Called with the `tenant` field as soon as it arrives (before weights sent after it are read); may throw to refuse. */
  onTenant?: (tenant: string) => void | Promise<void>;
}

export interface ReceivedUpload {
  manifestText: string;
  /** The `tenant` form field, when sent. */
  tenant: string | null;
  /** `<stagingDir>/weights.safetensors`, fsynced. */
  weightsPath: string;
  sha256: string;
  bytes: number;
}

/** The file part: the carry-on's weights as safetensors. */
export const WEIGHTS_PART = 'weights';
/** Parts that used to carry an ONNX graph: refused with an explanation, since graphs are programs. */
const GRAPH_PARTS = new Set(['model', 'graph']);
const TENANT_FIELD = 'tenant';
const MAX_TENANT_FIELD_BYTES = 256;

const tooLarge = (part: string, limit: number) =>
  new ApiError('request_too_large', `The '${part}' part is larger than this server accepts (${limit} bytes).`, { param: part });

/**
 * Reads the multipart upload: the `manifest` (a text field or a file), an optional `tenant` field,
 * and the `weights` file, which is streamed to `stagingDir` while its sha256 is computed, never
 * held in memory, and cut off with a 413 as soon as it passes the limit. Parts may come in any order.
 */
export async function receiveCarryOnUpload(
  parts: AsyncIterableIterator<Multipart>,
  stagingDir: string,
  limits: UploadLimits,
  hooks: UploadHooks = {},
): Promise<ReceivedUpload> {
  try {
    return await receiveParts(parts, stagingDir, limits, hooks);
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if (isDiskFull(err)) throw diskFullError();
    // The multipart parser's own failures (no boundary, a torn or garbage body) are the client's.
    if (err instanceof Error && !('syscall' in err)) {
      throw new ApiError('malformed_request', `The multipart/form-data body could not be read: ${err.message}.`);
    }
    throw err;
  }
}

async function receiveParts(
  parts: AsyncIterableIterator<Multipart>,
  stagingDir: string,
  limits: UploadLimits,
  hooks: UploadHooks,
): Promise<ReceivedUpload> {
  let manifestText: string | null = null;
  let tenant: string | null = null;
  let weights: { sha256: string; bytes: number } | null = null;
  const weightsPath = path.join(stagingDir, CARRYON_FILES.weights);
  for await (const part of parts) {
    if (part.fieldname === 'manifest' && manifestText === null) {
      manifestText = part.type === 'file' ? await readSmallFile(part.file, limits.maxManifestBytes) : fieldText(part.value, part.valueTruncated, 'manifest', limits.maxManifestBytes);
    } else if (part.fieldname === TENANT_FIELD && part.type === 'field' && tenant === null) {
      tenant = fieldText(part.value, part.valueTruncated || String(part.value).length > MAX_TENANT_FIELD_BYTES, TENANT_FIELD, MAX_TENANT_FIELD_BYTES);
      await hooks.onTenant?.(tenant);
    } else if (part.fieldname === WEIGHTS_PART && part.type === 'file' && weights === null) {
      weights = await streamToFile(part.file, weightsPath, limits.maxWeightsBytes);
    } else {
      if (part.type === 'file') part.file.resume();
      if (GRAPH_PARTS.has(part.fieldname)) {
        throw new ApiError(
          'invalid_value',
          `Carry-ons are uploaded as weights, not ONNX graphs: send the package's ${CARRYON_FILES.weights} as the '${WEIGHTS_PART}' file, and the gateway builds the graph.`,
          { param: part.fieldname },
        );
      }
      throw new ApiError(
        'invalid_value',
        `Unexpected multipart part '${part.fieldname}': send one 'manifest' field, one '${WEIGHTS_PART}' file and optionally a '${TENANT_FIELD}' field.`,
        { param: part.fieldname },
      );
    }
  }
  if (manifestText === null) throw new ApiError('missing_required_parameter', "Missing required part: 'manifest'.", { param: 'manifest' });
  if (weights === null) {
    throw new ApiError('missing_required_parameter', `Missing required file part: '${WEIGHTS_PART}' (the carry-on's ${CARRYON_FILES.weights}).`, { param: WEIGHTS_PART });
  }
  return { manifestText, tenant, weightsPath, ...weights };
}

function fieldText(value: unknown, truncated: boolean, part: string, limit: number): string {
  if (truncated) throw tooLarge(part, limit);
  // A field sent with Content-Type application/json arrives already parsed.
  return typeof value === 'string' ? value : JSON.stringify(value);
}

async function readSmallFile(stream: NodeJS.ReadableStream, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw tooLarge('manifest', limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Hashes and counts the bytes passing through; fails the pipeline once they exceed `limit`. */
class DigestingLimit extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;

  constructor(private readonly limit: number) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limit) return done(tooLarge(WEIGHTS_PART, this.limit));
    this.hash.update(chunk);
    done(null, chunk);
  }
}

async function streamToFile(stream: NodeJS.ReadableStream, file: string, limit: number): Promise<{ sha256: string; bytes: number }> {
  const digest = new DigestingLimit(limit);
  await pipeline(stream, digest, createWriteStream(file, { flags: 'wx', mode: 0o644 }));
  // Durable before anything is built from it and recorded: a crash must not leave a torn file behind a row.
  const handle = await fs.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { sha256: digest.hash.digest('hex'), bytes: digest.bytes };
}
