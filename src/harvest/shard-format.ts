/**
 * The harvest shard: one safetensors file holding the σ-encoded hidden states of several sequences of
 * ONE tenant (so forgetting a tenant deletes whole files), concatenated row-wise. The layout is
 * documented in docs/harvest-format.md ("Shard layout"); this module is its single definition.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../core/fs-atomic.js';
import {
  encodeSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  type SafetensorsHeader,
  type TensorInput,
} from '../formats/safetensors.js';
import { decodeRows, type EncodedDtype, type EncodedRows, type SigmaDescriptor } from './sigma.js';

export const SHARD_FORMAT = 'carryon-harvest';
export const SHARD_FORMAT_VERSION = 1;
export const SHARD_SUFFIX = '.safetensors';

export type LayerId = 'final' | number;

export function layerTensorName(layer: LayerId): string {
  return layer === 'final' ? 'hidden.final' : `hidden.layer.${layer}`;
}

/** Everything every sequence of a shard shares; a sequence that differs starts a new shard. */
export interface ShardSchema {
  tenantId: string | null;
  baseFingerprint: string;
  layers: LayerId[];
  /** D: the base's hidden size. */
  hiddenSize: number;
  /** d: the stored width (D unless σ projects). */
  storedSize: number;
  dtype: EncodedDtype;
  sigma: SigmaDescriptor;
}

/** A sequence after σ, as kept in memory and in the journal until its shard is written. */
export interface EncodedSequence {
  requestId: string;
  tenantId: string | null;
  carryOnId: string | null;
  finishedAt: number;
  rows: number;
  /** One per schema layer, in schema order. */
  layers: EncodedRows[];
  tokenIds: Int32Array;
  targetIds: Int32Array;
  isCompletion: Uint8Array;
}

/** What the writer reports for a finished shard (the index row). */
export interface ShardInfo {
  id: string;
  path: string;
  tenantId: string | null;
  bytes: number;
  rows: number;
  sequences: number;
  /** Unix ms when the shard was opened (its oldest data). */
  createdAt: number;
  metadata: Record<string, string>;
}

/** Bytes a sequence adds to a shard's data section. */
export function encodedSequenceBytes(seq: EncodedSequence): number {
  let n = seq.rows * (4 + 4 + 1);
  for (const l of seq.layers) n += l.data.byteLength + (l.scale?.byteLength ?? 0);
  return n + 8; // its seq_offsets entry
}

/** Header bytes a sequence adds (its ids in the metadata lists); an estimate for size-based rolling. */
export function sequenceHeaderBytes(seq: EncodedSequence): number {
  return seq.requestId.length + (seq.carryOnId?.length ?? 4) + 24;
}

export function schemaKey(s: Pick<ShardSchema, 'layers' | 'hiddenSize'>): string {
  return `${JSON.stringify(s.layers)}/${s.hiddenSize}`;
}

/** Lays out a shard: tensors and metadata (see docs/harvest-format.md for the meaning of each key). */
export function buildShard(
  id: string,
  schema: ShardSchema,
  seqs: EncodedSequence[],
  times: { createdAt: number; closedAt: number },
  extra: Record<string, string> = {},
): { header: Buffer; chunks: Uint8Array[]; totalBytes: number; metadata: Record<string, string>; rows: number } {
  const rows = seqs.reduce((a, s) => a + s.rows, 0);
  const offsets = new BigInt64Array(seqs.length + 1);
  for (let i = 0; i < seqs.length; i++) offsets[i + 1] = offsets[i] + BigInt(seqs[i].rows);
  const tensors: Record<string, TensorInput> = {
    token_ids: { dtype: 'I32', shape: [rows], data: seqs.map((s) => s.tokenIds) },
    target_ids: { dtype: 'I32', shape: [rows], data: seqs.map((s) => s.targetIds) },
    is_completion: { dtype: 'U8', shape: [rows], data: seqs.map((s) => s.isCompletion) },
    seq_offsets: { dtype: 'I64', shape: [seqs.length + 1], data: offsets },
  };
  schema.layers.forEach((layer, li) => {
    const name = layerTensorName(layer);
    tensors[name] = { dtype: schema.dtype, shape: [rows, schema.storedSize], data: seqs.map((s) => s.layers[li].data) };
    if (schema.dtype === 'I8') {
      tensors[`${name}.scale`] = { dtype: 'F32', shape: [rows], data: seqs.map((s) => s.layers[li].scale ?? new Float32Array(0)) };
    }
  });
  const completionRows = seqs.reduce((a, s) => a + s.isCompletion.reduce((c, v) => c + (v ? 1 : 0), 0), 0);
  const metadata: Record<string, string> = {
    format: SHARD_FORMAT,
    format_version: String(SHARD_FORMAT_VERSION),
    shard_id: id,
    base_fingerprint: schema.baseFingerprint,
    tenant_id: JSON.stringify(schema.tenantId),
    layers: JSON.stringify(schema.layers),
    hidden_size: String(schema.hiddenSize),
    stored_size: String(schema.storedSize),
    dtype: schema.dtype,
    sigma: JSON.stringify(schema.sigma),
    request_ids: JSON.stringify(seqs.map((s) => s.requestId)),
    carry_on_ids: JSON.stringify(seqs.map((s) => s.carryOnId)),
    sequence_finished_at_ms: JSON.stringify(seqs.map((s) => s.finishedAt)),
    created_at: new Date(times.createdAt).toISOString(),
    closed_at: new Date(times.closedAt).toISOString(),
    sequence_count: String(seqs.length),
    row_count: String(rows),
    completion_rows: String(completionRows),
    ...extra,
  };
  // The checksum covers the data section, whose layout does not depend on the metadata.
  const sha = createHash('sha256');
  for (const c of encodeSafetensors(tensors, metadata).chunks) sha.update(c);
  metadata.data_sha256 = sha.digest('hex');
  const enc = encodeSafetensors(tensors, metadata);
  return { ...enc, metadata, rows };
}

/**
 * Writes a shard so a crash leaves either nothing or the complete file under its final name: a
 * dot-prefixed temp file in the same folder, fsynced, renamed, then the folder fsynced.
 */
export function writeShardFile(
  dir: string,
  id: string,
  schema: ShardSchema,
  seqs: EncodedSequence[],
  times: { createdAt: number; closedAt: number },
  extra: Record<string, string> = {},
): ShardInfo {
  const built = buildShard(id, schema, seqs, times, extra);
  const file = path.join(dir, `${id}${SHARD_SUFFIX}`);
  const tmp = path.join(dir, tempShardName(id));
  const fd = fs.openSync(tmp, 'w', 0o640);
  try {
    writeAllV(fd, [built.header, ...built.chunks]);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  fsyncDir(dir);
  return {
    id,
    path: file,
    tenantId: schema.tenantId,
    bytes: built.totalBytes,
    rows: built.rows,
    sequences: seqs.length,
    createdAt: times.createdAt,
    metadata: built.metadata,
  };
}

export function tempShardName(id: string): string {
  return `.${id}${SHARD_SUFFIX}.tmp`;
}

/** Writes every chunk, tolerating short writes; batches stay under IOV_MAX (1024 on Linux). */
export function writeAllV(fd: number, chunks: Uint8Array[]): number {
  let total = 0;
  for (let i = 0; i < chunks.length; ) {
    const batch = chunks.slice(i, i + 512);
    const want = batch.reduce((a, c) => a + c.byteLength, 0);
    let done = fs.writevSync(fd, batch);
    // A short write leaves the rest of the batch: finish it chunk by chunk.
    if (done < want) {
      let skip = done;
      for (const c of batch) {
        if (skip >= c.byteLength) {
          skip -= c.byteLength;
          continue;
        }
        let off = skip;
        skip = 0;
        while (off < c.byteLength) off += fs.writeSync(fd, c, off, c.byteLength - off);
      }
      done = want;
    }
    total += done;
    i += batch.length;
  }
  return total;
}

export class ShardValidationError extends Error {
  override name = 'ShardValidationError';
}

/**
 * Checks a shard file before it may be listed: the safetensors header parses, the file is exactly as
 * long as the header promises (a torn file is not), the harvest metadata and tensors agree with each
 * other, and (unless `verifyData` is false) the data section matches its sha256.
 */
export function validateShardFile(file: string, opts: { verifyData?: boolean } = {}): ShardInfo {
  let header: SafetensorsHeader;
  try {
    header = readSafetensorsHeader(file);
  } catch (err) {
    throw new ShardValidationError(`${file}: ${(err as Error).message}`);
  }
  const meta = parseShardMetadata(header.metadata, file);
  const rows = meta.rowCount;
  const expect = (name: string, dtype: string, shape: number[]) => {
    const e = header.tensors.get(name);
    if (!e || e.dtype !== dtype || e.shape.join(',') !== shape.join(',')) {
      throw new ShardValidationError(`${file}: tensor ${name} missing or not ${dtype}[${shape}]`);
    }
  };
  expect('token_ids', 'I32', [rows]);
  expect('target_ids', 'I32', [rows]);
  expect('is_completion', 'U8', [rows]);
  expect('seq_offsets', 'I64', [meta.sequenceCount + 1]);
  for (const layer of meta.layers) {
    expect(layerTensorName(layer), meta.dtype, [rows, meta.storedSize]);
    if (meta.dtype === 'I8') expect(`${layerTensorName(layer)}.scale`, 'F32', [rows]);
  }
  if (meta.requestIds.length !== meta.sequenceCount || meta.carryOnIds.length !== meta.sequenceCount) {
    throw new ShardValidationError(`${file}: per-sequence metadata lists do not hold ${meta.sequenceCount} entries`);
  }
  const size = header.dataStart + header.dataBytes;
  if (opts.verifyData !== false) {
    const sha = createHash('sha256');
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (let pos = header.dataStart; pos < size; ) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
        if (n === 0) throw new ShardValidationError(`${file}: unexpected end of file`);
        sha.update(buf.subarray(0, n));
        pos += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    if (sha.digest('hex') !== meta.dataSha256) throw new ShardValidationError(`${file}: data does not match data_sha256`);
  }
  return {
    id: meta.shardId,
    path: file,
    tenantId: meta.tenantId,
    bytes: size,
    rows,
    sequences: meta.sequenceCount,
    createdAt: meta.createdAt,
    metadata: header.metadata,
  };
}

export interface ShardMetadata {
  formatVersion: number;
  shardId: string;
  baseFingerprint: string;
  tenantId: string | null;
  layers: LayerId[];
  hiddenSize: number;
  storedSize: number;
  dtype: EncodedDtype;
  sigma: SigmaDescriptor;
  requestIds: string[];
  carryOnIds: Array<string | null>;
  sequenceFinishedAtMs: number[];
  createdAt: number;
  closedAt: number;
  sequenceCount: number;
  rowCount: number;
  completionRows: number;
  dataSha256: string;
  recovered: boolean;
}

export function parseShardMetadata(m: Record<string, string>, file = 'shard'): ShardMetadata {
  const fail = (what: string): never => {
    throw new ShardValidationError(`${file}: ${what}`);
  };
  if (m.format !== SHARD_FORMAT) fail(`not a ${SHARD_FORMAT} shard (format=${m.format})`);
  if (m.format_version !== String(SHARD_FORMAT_VERSION)) fail(`unsupported format_version ${m.format_version}`);
  const json = <T>(key: string): T => {
    try {
      return JSON.parse(m[key] ?? 'undefined') as T;
    } catch {
      return fail(`metadata ${key} is not JSON`);
    }
  };
  const int = (key: string): number => {
    const n = Number(m[key]);
    return Number.isSafeInteger(n) && n >= 0 ? n : fail(`metadata ${key} is not a count`);
  };
  const time = (key: string): number => {
    const t = Date.parse(m[key] ?? '');
    return Number.isFinite(t) ? t : fail(`metadata ${key} is not a time`);
  };
  const dtype = m.dtype;
  if (dtype !== 'F16' && dtype !== 'I8' && dtype !== 'F32') fail(`bad dtype ${dtype}`);
  if (!/^[0-9a-f]{64}$/.test(m.data_sha256 ?? '')) fail('missing data_sha256');
  const layers = json<LayerId[]>('layers');
  if (!Array.isArray(layers) || layers.length === 0) fail('layers must be a non-empty list');
  const requestIds = json<string[]>('request_ids');
  const carryOnIds = json<Array<string | null>>('carry_on_ids');
  const finished = json<number[]>('sequence_finished_at_ms');
  if (!Array.isArray(requestIds) || !Array.isArray(carryOnIds) || !Array.isArray(finished)) fail('per-sequence lists missing');
  return {
    formatVersion: SHARD_FORMAT_VERSION,
    shardId: m.shard_id ?? fail('missing shard_id'),
    baseFingerprint: m.base_fingerprint ?? '',
    tenantId: json<string | null>('tenant_id'),
    layers,
    hiddenSize: int('hidden_size'),
    storedSize: int('stored_size'),
    dtype: dtype as EncodedDtype,
    sigma: json<SigmaDescriptor>('sigma'),
    requestIds,
    carryOnIds,
    sequenceFinishedAtMs: finished,
    createdAt: time('created_at'),
    closedAt: time('closed_at'),
    sequenceCount: int('sequence_count'),
    rowCount: int('row_count'),
    completionRows: int('completion_rows'),
    dataSha256: m.data_sha256,
    recovered: m.recovered === 'true',
  };
}

/** A shard read back whole (trainers, tests). */
export interface HarvestShard {
  metadata: ShardMetadata;
  raw: Record<string, string>;
  /** σ-encoded rows per layer, keyed by layer id as in `metadata.layers`. */
  layers: Map<LayerId, EncodedRows>;
  tokenIds: Int32Array;
  targetIds: Int32Array;
  isCompletion: Uint8Array;
  /** Row offsets of each sequence: sequence i is rows [seqOffsets[i], seqOffsets[i+1]). */
  seqOffsets: number[];
}

export function readShard(file: string): HarvestShard {
  const info = validateShardFile(file);
  const { metadata: raw, tensors } = readSafetensors(file);
  const metadata = parseShardMetadata(raw, file);
  const layers = new Map<LayerId, EncodedRows>();
  for (const layer of metadata.layers) {
    const t = tensors.get(layerTensorName(layer))!;
    const scale = tensors.get(`${layerTensorName(layer)}.scale`);
    layers.set(layer, {
      dtype: metadata.dtype,
      rows: info.rows,
      cols: metadata.storedSize,
      data: t.data as EncodedRows['data'],
      scale: scale ? (scale.data as Float32Array) : null,
    });
  }
  return {
    metadata,
    raw,
    layers,
    tokenIds: tensors.get('token_ids')!.data as Int32Array,
    targetIds: tensors.get('target_ids')!.data as Int32Array,
    isCompletion: tensors.get('is_completion')!.data as Uint8Array,
    seqOffsets: Array.from(tensors.get('seq_offsets')!.data as BigInt64Array, Number),
  };
}

/** One layer of a shard decoded to f32 [rows × storedSize]. */
export function decodeShardLayer(shard: HarvestShard, layer: LayerId = 'final'): Float32Array {
  const rows = shard.layers.get(layer);
  if (!rows) throw new Error(`shard has no layer ${layer} (has ${shard.metadata.layers.join(',')})`);
  return decodeRows(rows);
}
