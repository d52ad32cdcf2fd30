/**
 * The safetensors file format (https://github.com/huggingface/safetensors), written and read exactly
 * as the reference implementation expects: an 8-byte little-endian u64 header length N, an N-byte
 * UTF-8 JSON header padded with spaces so the data starts 8-byte aligned, then the tensors' bytes,
 * contiguous, with no gaps, in little-endian, row-major order. Offsets are relative to the data start.
 *
 * We write tensors in descending element size (I64, then 4-byte, 2-byte, 1-byte types) so that
 * every tensor is naturally aligned in the file: readers that map the file (safetensors' `safe_open`,
 * numpy.frombuffer on an mmap) can view it without copying.
 */
import fs from 'node:fs';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I8' | 'I32' | 'I64' | 'U8';

export const DTYPE_BYTES: Record<SafetensorsDtype, number> = { I64: 8, F32: 4, I32: 4, F16: 2, BF16: 2, I8: 1, U8: 1 };

/** The reference reader refuses headers above 100 MB; so do we, before allocating anything. */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * A tensor to write: its bytes in row-major order, as one typed-array view or as consecutive pieces
 * (a shard's rows arrive one sequence at a time; writing the pieces avoids concatenating them).
 */
export interface TensorInput {
  dtype: SafetensorsDtype;
  shape: number[];
  data: ArrayBufferView | ArrayBufferView[];
}

export interface HeaderEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  data_offsets: [number, number];
}

export interface SafetensorsHeader {
  tensors: Map<string, HeaderEntry>;
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file (8 + N). */
  dataStart: number;
  /** Length of the data section: the file must be exactly dataStart + dataBytes long. */
  dataBytes: number;
}

/** Typed view of a decoded tensor. F16 and BF16 stay raw bits (Node 20 has no Float16Array). */
export type TensorArray = Float32Array | Uint16Array | Int8Array | Int32Array | BigInt64Array | Uint8Array;

export interface DecodedTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: TensorArray;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

/**
 * Lays out a safetensors file: returns the header block (length prefix + padded JSON) and the data
 * chunks in file order, so callers can `writev` them without concatenating the payload.
 */
export function encodeSafetensors(
  tensors: Record<string, TensorInput>,
  metadata: Record<string, string> = {},
): { header: Buffer; chunks: Uint8Array[]; totalBytes: number } {
  const names = Object.keys(tensors).sort((a, b) => {
    const d = DTYPE_BYTES[tensors[b].dtype] - DTYPE_BYTES[tensors[a].dtype];
    return d !== 0 ? d : a < b ? -1 : a > b ? 1 : 0;
  });
  const entries: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(`metadata ${k}: values must be strings`);
    }
    entries.__metadata__ = metadata;
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name === '__metadata__') throw new SafetensorsError('"__metadata__" is reserved');
    const t = tensors[name];
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    for (const dim of t.shape) {
      if (!Number.isSafeInteger(dim) || dim < 0) throw new SafetensorsError(`${name}: bad shape [${t.shape}]`);
    }
    const pieces = Array.isArray(t.data) ? t.data : [t.data];
    const bytes = pieces.reduce((a, p) => a + p.byteLength, 0);
    if (bytes !== expected) {
      throw new SafetensorsError(`${name}: ${bytes} bytes for ${t.dtype}[${t.shape}] (want ${expected})`);
    }
    entries[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + expected] };
    for (const p of pieces) if (p.byteLength > 0) chunks.push(new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
    offset += expected;
  }
  assertLittleEndian();
  const json = Buffer.from(JSON.stringify(entries), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  return { header, chunks, totalBytes: header.length + offset };
}

/** Whole file in one buffer (small files and tests; shards use encodeSafetensors + writev). */
export function serializeSafetensors(tensors: Record<string, TensorInput>, metadata: Record<string, string> = {}): Buffer {
  const { header, chunks } = encodeSafetensors(tensors, metadata);
  return Buffer.concat([header, ...chunks]);
}

/**
 * Parses and validates the header: known dtypes, byte sizes matching shapes, tensors covering the
 * data section exactly with no gaps or overlaps (the reference reader's rules). `fileBytes`, when
 * given, must equal the header's promised size, which catches truncated files.
 */
export function parseSafetensorsHeader(prefix: Uint8Array, fileBytes?: number): SafetensorsHeader {
  if (prefix.length < 8) throw new SafetensorsError('file shorter than the 8-byte header length');
  const view = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(`header length ${n} exceeds ${MAX_HEADER_BYTES}`);
  const headerLen = Number(n);
  if (prefix.length < 8 + headerLen) throw new SafetensorsError(`header needs ${headerLen} bytes, have ${prefix.length - 8}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(prefix.buffer, prefix.byteOffset + 8, headerLen).toString('utf8'));
  } catch (err) {
    throw new SafetensorsError(`header is not JSON: ${(err as Error).message}`);
  }
  if (!isRecord(parsed)) throw new SafetensorsError('header is not a JSON object');

  const tensors = new Map<string, HeaderEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value);
      continue;
    }
    tensors.set(name, parseEntry(name, value));
  }
  const ordered = [...tensors.entries()].sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  let end = 0;
  for (const [name, e] of ordered) {
    if (e.data_offsets[0] !== end) throw new SafetensorsError(`${name}: data starts at ${e.data_offsets[0]}, expected ${end} (gap or overlap)`);
    end = e.data_offsets[1];
  }
  const dataStart = 8 + headerLen;
  if (fileBytes !== undefined && fileBytes !== dataStart + end) {
    throw new SafetensorsError(`file is ${fileBytes} bytes, header promises ${dataStart + end}`);
  }
  return { tensors, metadata, dataStart, dataBytes: end };
}

/** Reads just the header of a file (cheap validation: structure and exact size). */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const lenBuf = Buffer.alloc(8);
    if (fs.readSync(fd, lenBuf, 0, 8, 0) !== 8) throw new SafetensorsError('file shorter than the 8-byte header length');
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_BYTES) || Number(n) + 8 > size) {
      throw new SafetensorsError(`header length ${n} does not fit a ${size}-byte file`);
    }
    const prefix = Buffer.alloc(8 + Number(n));
    lenBuf.copy(prefix);
    readFully(fd, prefix, 8, 8);
    return parseSafetensorsHeader(prefix, size);
  } finally {
    fs.closeSync(fd);
  }
}

/** Decodes a whole file held in memory. */
export function decodeSafetensors(buf: Uint8Array): { metadata: Record<string, string>; tensors: Map<string, DecodedTensor> } {
  const header = parseSafetensorsHeader(buf, buf.length);
  assertLittleEndian();
  const tensors = new Map<string, DecodedTensor>();
  for (const [name, e] of header.tensors) {
    const begin = buf.byteOffset + header.dataStart + e.data_offsets[0];
    const bytes = e.data_offsets[1] - e.data_offsets[0];
    tensors.set(name, { dtype: e.dtype, shape: e.shape, data: typedView(e.dtype, buf.buffer, begin, bytes) });
  }
  return { metadata: header.metadata, tensors };
}

export function readSafetensors(file: string): ReturnType<typeof decodeSafetensors> {
  return decodeSafetensors(fs.readFileSync(file));
}

/** A view when the offset is aligned for the element type, otherwise an aligned copy. */
function typedView(dtype: SafetensorsDtype, buffer: ArrayBufferLike, byteOffset: number, byteLength: number): TensorArray {
  const size = DTYPE_BYTES[dtype];
  if (byteOffset % size !== 0) {
    const copy = new Uint8Array(byteLength);
    copy.set(new Uint8Array(buffer, byteOffset, byteLength));
    return typedView(dtype, copy.buffer, 0, byteLength);
  }
  const n = byteLength / size;
  switch (dtype) {
    case 'F32':
      return new Float32Array(buffer, byteOffset, n);
    case 'F16':
    case 'BF16':
      return new Uint16Array(buffer, byteOffset, n);
    case 'I8':
      return new Int8Array(buffer, byteOffset, n);
    case 'I32':
      return new Int32Array(buffer, byteOffset, n);
    case 'I64':
      return new BigInt64Array(buffer, byteOffset, n);
    case 'U8':
      return new Uint8Array(buffer, byteOffset, n);
  }
}

function parseEntry(name: string, value: unknown): HeaderEntry {
  if (!isRecord(value)) throw new SafetensorsError(`${name}: entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) throw new SafetensorsError(`${name}: unsupported dtype ${String(dtype)}`);
  if (!isCountArray(shape)) throw new SafetensorsError(`${name}: bad shape`);
  if (!isCountArray(offsets) || offsets.length !== 2 || offsets[1] < offsets[0]) {
    throw new SafetensorsError(`${name}: bad data_offsets`);
  }
  const dt = dtype as SafetensorsDtype;
  const want = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dt];
  if (offsets[1] - offsets[0] !== want) {
    throw new SafetensorsError(`${name}: ${offsets[1] - offsets[0]} bytes for ${dt}[${shape}] (want ${want})`);
  }
  return { dtype: dt, shape, data_offsets: [offsets[0], offsets[1]] };
}

function parseMetadata(value: unknown): Record<string, string> {
  if (value === null) return {};
  if (!isRecord(value)) throw new SafetensorsError('__metadata__ is not an object');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw new SafetensorsError(`__metadata__.${k} is not a string`);
    out[k] = v;
  }
  return out;
}

function readFully(fd: number, buf: Buffer, offset: number, position: number): void {
  while (offset < buf.length) {
    const n = fs.readSync(fd, buf, offset, buf.length - offset, position);
    if (n === 0) throw new SafetensorsError('unexpected end of file');
    offset += n;
    position += n;
  }
}

/** An array of non-negative safe integers (a shape or a pair of byte offsets). */
function isCountArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Typed arrays use the host's byte order; the format is little-endian. Every Node target is LE. */
function assertLittleEndian(): void {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new SafetensorsError('big-endian hosts are not supported');
}
