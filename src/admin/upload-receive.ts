import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Multipart } from '@fastify/multipart';
import { CARRYON_FILES } from '../carryon/manifest.js';
import { ApiError } from '../core/errors.js';

/** The manifest is small JSON; anything near this is not a manifest. */
export const MAX_MANIFEST_BYTES = 1 << 20;

export interface UploadLimits {
  /** Largest accepted model.onnx (CARRYON_MAX_CARRYON_BYTES). */
  maxGraphBytes: number;
  maxManifestBytes: number;
}

export interface UploadHooks {
  /** Called with the `tenant` field as soon as it arrives (before a graph sent after it is read); may throw to refuse. */
  onTenant?: (tenant: string) => void;
}

export interface ReceivedUpload {
  manifestText: string;
  /** The `tenant` form field, when sent. */
  tenant: string | null;
  /** `<stagingDir>/model.onnx`, fsynced. */
  graphPath: string;
  sha256: string;
  bytes: number;
}

/** The file part's name; `graph` is accepted too (the first gateways' name for it). */
export const GRAPH_PART = 'model';
const GRAPH_PART_ALIAS = 'graph';
const TENANT_FIELD = 'tenant';
const MAX_TENANT_FIELD_BYTES = 256;

const tooLarge = (part: string, limit: number) =>
  new ApiError('request_too_large', `The '${part}' part is larger than this server accepts (${limit} bytes).`, { param: part });

/**
 * Reads the multipart upload: the `manifest` (a text field or a file), an optional `tenant` field,
 * and the `model` file (or `graph`), which is streamed to `stagingDir` while its sha256 is computed,
 * never held in memory, and cut off with a 413 as soon as it passes the limit. Parts may come in any
 * order. Errors about the file name the `model` parameter, whichever name the part had.
 */
export async function receiveCarryOnUpload(
  parts: AsyncIterableIterator<Multipart>,
  stagingDir: string,
  limits: UploadLimits,
  hooks: UploadHooks = {},
): Promise<ReceivedUpload> {
  let manifestText: string | null = null;
  let tenant: string | null = null;
  let graph: { sha256: string; bytes: number } | null = null;
  const graphPath = path.join(stagingDir, CARRYON_FILES.graph);
  for await (const part of parts) {
    if (part.fieldname === 'manifest' && manifestText === null) {
      manifestText = part.type === 'file' ? await readSmallFile(part.file, limits.maxManifestBytes) : fieldText(part.value, part.valueTruncated, 'manifest', limits.maxManifestBytes);
    } else if (part.fieldname === TENANT_FIELD && part.type === 'field' && tenant === null) {
      tenant = fieldText(part.value, part.valueTruncated || String(part.value).length > MAX_TENANT_FIELD_BYTES, TENANT_FIELD, MAX_TENANT_FIELD_BYTES);
      hooks.onTenant?.(tenant);
    } else if ((part.fieldname === GRAPH_PART || part.fieldname === GRAPH_PART_ALIAS) && part.type === 'file' && graph === null) {
      graph = await streamToFile(part.file, graphPath, limits.maxGraphBytes);
    } else {
      if (part.type === 'file') part.file.resume();
      throw new ApiError(
        'invalid_value',
        `Unexpected multipart part '${part.fieldname}': send one 'manifest' field, one '${GRAPH_PART}' file and optionally a '${TENANT_FIELD}' field.`,
        { param: part.fieldname },
      );
    }
  }
  if (manifestText === null) throw new ApiError('missing_required_parameter', "Missing required part: 'manifest'.", { param: 'manifest' });
  if (graph === null) {
    throw new ApiError('missing_required_parameter', `Missing required file part: '${GRAPH_PART}' (the carry-on's ${CARRYON_FILES.graph}).`, { param: GRAPH_PART });
  }
  return { manifestText, tenant, graphPath, ...graph };
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
    if (this.bytes > this.limit) return done(tooLarge(GRAPH_PART, this.limit));
    this.hash.update(chunk);
    done(null, chunk);
  }
}

async function streamToFile(stream: NodeJS.ReadableStream, file: string, limit: number): Promise<{ sha256: string; bytes: number }> {
  const digest = new DigestingLimit(limit);
  await pipeline(stream, digest, createWriteStream(file, { flags: 'wx', mode: 0o644 }));
  // Durable before it is renamed into place and recorded: a crash must not leave a torn graph behind a row.
  const handle = await fs.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { sha256: digest.hash.digest('hex'), bytes: digest.bytes };
}
