/**
 * GGUF (v2/v3, little endian) reader and writer, plus the mapping between a llama-architecture
 * GGUF and our ImportedCheckpoint. Layout reference: ggml/docs/gguf.md and ggml/src/gguf.cpp.
 *
 * File layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata KVs,
 * tensor infos (name, n_dims, ne[], type, offset), zero padding to `alignment`, tensor data
 * (each tensor's offset is relative to the data section and aligned).
 */
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';

import { bf16ToF32, f16LookupTable, f32ToBf16, f32ToF16 } from '../formats/half.js';
import type {
  ImportedCheckpoint,
  LlamaConfig,
  LlamaLayer,
  LlamaWeights,
  Matrix,
  SentencePieceVocab,
} from './types.js';

// ---------------------------------------------------------------------------------------------
// Constants

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const GGUF_WRITE_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueTypeId = (typeof GgufValueType)[keyof typeof GgufValueType];
export type GgufScalarTypeId = Exclude<GgufValueTypeId, typeof GgufValueType.ARRAY>;

export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ4_NL: 20,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  BF16: 30,
  MXFP4: 39,
} as const;

/** [elements per block, bytes per block], from ggml's type_traits (ggml.c / ggml-common.h). */
const GGML_BLOCK_LAYOUT: ReadonlyMap<number, readonly [number, number]> = new Map([
  [GgmlType.F32, [1, 4]],
  [GgmlType.F16, [1, 2]],
  [GgmlType.Q4_0, [32, 18]],
  [GgmlType.Q4_1, [32, 20]],
  [GgmlType.Q5_0, [32, 22]],
  [GgmlType.Q5_1, [32, 24]],
  [GgmlType.Q8_0, [32, 34]],
  [GgmlType.Q8_1, [32, 36]],
  [GgmlType.Q2_K, [256, 84]],
  [GgmlType.Q3_K, [256, 110]],
  [GgmlType.Q4_K, [256, 144]],
  [GgmlType.Q5_K, [256, 176]],
  [GgmlType.Q6_K, [256, 210]],
  [GgmlType.Q8_K, [256, 292]],
  [GgmlType.IQ4_NL, [32, 18]],
  [GgmlType.IQ4_XS, [256, 136]],
  [GgmlType.I8, [1, 1]],
  [GgmlType.I16, [1, 2]],
  [GgmlType.I32, [1, 4]],
  [GgmlType.I64, [1, 8]],
  [GgmlType.F64, [1, 8]],
  [GgmlType.BF16, [1, 2]],
  [GgmlType.MXFP4, [32, 17]],
]);

export function ggmlTypeName(type: number): string {
  for (const [name, id] of Object.entries(GgmlType)) if (id === type) return name;
  return `type#${type}`;
}

/** Bytes a tensor of `type` with ggml dims `ne` occupies; rows must hold whole blocks. */
export function ggmlTensorBytes(type: number, ne: readonly number[], what = 'tensor'): number {
  const layout = GGML_BLOCK_LAYOUT.get(type);
  if (!layout) throw new Error(`${what}: unsupported ggml type ${ggmlTypeName(type)}`);
  const [blockElems, blockBytes] = layout;
  if (ne.length > 0 && ne[0] % blockElems !== 0) {
    throw new Error(`${what}: ne[0]=${ne[0]} is not a multiple of the ${ggmlTypeName(type)} block size ${blockElems}`);
  }
  return (elementCount(ne) / blockElems) * blockBytes;
}

function elementCount(ne: readonly number[]): number {
  return ne.reduce((a, b) => a * b, 1);
}

// ---------------------------------------------------------------------------------------------
// Metadata values

export type GgufScalar = number | bigint | boolean | string;
/** Metadata as consumers want it: 64-bit integers become numbers when they are safe integers. */
export type GgufValue = GgufScalar | GgufValue[];

/** Metadata with its wire type, so a file can be written back without guessing u32 vs f32. */
export type GgufTypedValue =
  | { type: GgufScalarTypeId; value: GgufScalar }
  | { type: typeof GgufValueType.ARRAY; elementType: GgufScalarTypeId; value: GgufScalar[] }
  | { type: typeof GgufValueType.ARRAY; elementType: typeof GgufValueType.ARRAY; value: GgufTypedValue[] };

/** Constructors for typed metadata values (writer input). */
export const gguf = {
  u8: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT8, value }),
  i8: (value: number): GgufTypedValue => ({ type: GgufValueType.INT8, value }),
  u16: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT16, value }),
  i16: (value: number): GgufTypedValue => ({ type: GgufValueType.INT16, value }),
  u32: (value: number): GgufTypedValue => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): GgufTypedValue => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): GgufTypedValue => ({ type: GgufValueType.FLOAT32, value }),
  f64: (value: number): GgufTypedValue => ({ type: GgufValueType.FLOAT64, value }),
  u64: (value: number | bigint): GgufTypedValue => ({ type: GgufValueType.UINT64, value: BigInt(value) }),
  i64: (value: number | bigint): GgufTypedValue => ({ type: GgufValueType.INT64, value: BigInt(value) }),
  bool: (value: boolean): GgufTypedValue => ({ type: GgufValueType.BOOL, value }),
  str: (value: string): GgufTypedValue => ({ type: GgufValueType.STRING, value }),
  array: (elementType: GgufScalarTypeId, value: GgufScalar[]): GgufTypedValue => ({
    type: GgufValueType.ARRAY,
    elementType,
    value,
  }),
};

export function plainValue(typed: GgufTypedValue): GgufValue {
  if (typed.type !== GgufValueType.ARRAY) return plainScalar(typed.value);
  if (typed.elementType === GgufValueType.ARRAY) return typed.value.map(plainValue);
  return typed.value.map(plainScalar);
}

function plainScalar(value: GgufScalar): GgufScalar {
  if (typeof value === 'bigint' && value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
    return Number(value);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Reader

export interface GgufTensorInfo {
  name: string;
  /** ggml ne[]: ne[0] is the contiguous dimension. */
  dims: number[];
  type: number;
  /** Offset relative to the start of the tensor data section. */
  offset: number;
  nElements: number;
  nBytes: number;
}

export class GgufFile {
  readonly metadata: Map<string, GgufValue>;
  private readonly tensorsByName: Map<string, GgufTensorInfo>;

  constructor(
    readonly path: string,
    readonly version: number,
    readonly typedMetadata: Map<string, GgufTypedValue>,
    readonly tensors: GgufTensorInfo[],
    readonly alignment: number,
    /** Absolute file offset of the tensor data section. */
    readonly dataOffset: number,
    /** The whole file; tensor bytes are views into it. */
    readonly bytes: Uint8Array,
  ) {
    this.metadata = new Map([...typedMetadata].map(([key, value]) => [key, plainValue(value)]));
    this.tensorsByName = new Map(tensors.map((t) => [t.name, t]));
  }

  tensor(name: string): GgufTensorInfo | undefined {
    return this.tensorsByName.get(name);
  }

  requireTensor(name: string): GgufTensorInfo {
    const info = this.tensorsByName.get(name);
    if (!info) throw new Error(`${this.path}: missing tensor ${name}`);
    return info;
  }

  /** Raw tensor bytes: a view into the file buffer (no copy). */
  tensorBytes(tensor: string | GgufTensorInfo): Uint8Array {
    const info = typeof tensor === 'string' ? this.requireTensor(tensor) : tensor;
    if (info.nBytes < 0) throw new Error(`${this.path}: tensor ${info.name} has unsupported ggml type ${ggmlTypeName(info.type)}`);
    const start = this.dataOffset + info.offset;
    return this.bytes.subarray(start, start + info.nBytes);
  }

  /** Tensor values as a fresh Float32Array, dequantized when needed. */
  tensorF32(tensor: string | GgufTensorInfo): Float32Array {
    const info = typeof tensor === 'string' ? this.requireTensor(tensor) : tensor;
    return dequantize(info.type, this.tensorBytes(info), info.nElements, info.name);
  }
}

export async function readGguf(path: string): Promise<GgufFile> {
  const file = await readFile(path);
  // A plain Uint8Array view: Buffer#slice does not copy, Uint8Array#slice does.
  return parseGguf(new Uint8Array(file.buffer, file.byteOffset, file.byteLength), path);
}

/** Parses an in-memory GGUF image. `where` names the source in error messages. */
export function parseGguf(bytes: Uint8Array, where = 'gguf'): GgufFile {
  const reader = new ByteReader(bytes, where);
  const magic = reader.u32();
  if (magic !== GGUF_MAGIC) throw new Error(`${where}: not a GGUF file (bad magic 0x${magic.toString(16)})`);
  const version = reader.u32();
  if (version !== 2 && version !== 3) {
    const bigEndian = version === 0x02000000 || version === 0x03000000;
    throw new Error(`${where}: unsupported GGUF ${bigEndian ? 'big-endian file' : `version ${version}`} (little-endian v2/v3 only)`);
  }
  const tensorCount = reader.u64AsNumber('tensor count');
  const kvCount = reader.u64AsNumber('metadata count');

  const typedMetadata = new Map<string, GgufTypedValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = reader.string();
    if (typedMetadata.has(key)) throw new Error(`${where}: duplicate metadata key ${key}`);
    typedMetadata.set(key, reader.typedValue(reader.valueType()));
  }

  const alignment = alignmentFrom(typedMetadata, where);
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) tensors.push(readTensorInfo(reader));

  const dataOffset = alignUp(reader.offset, alignment);
  validateTensorLayout(tensors, alignment, bytes.length - dataOffset, where);
  return new GgufFile(where, version, typedMetadata, tensors, alignment, dataOffset, bytes);
}

function alignmentFrom(metadata: Map<string, GgufTypedValue>, where: string): number {
  const entry = metadata.get('general.alignment');
  if (!entry) return GGUF_DEFAULT_ALIGNMENT;
  const value = entry.value;
  if (entry.type !== GgufValueType.UINT32 || typeof value !== 'number' || value <= 0 || (value & (value - 1)) !== 0) {
    throw new Error(`${where}: general.alignment must be a u32 power of two`);
  }
  return value;
}

function readTensorInfo(reader: ByteReader): GgufTensorInfo {
  const name = reader.string();
  const nDims = reader.u32();
  if (nDims > 4) throw new Error(`${reader.where}: tensor ${name} has ${nDims} dims (ggml max is 4)`);
  const dims: number[] = [];
  for (let d = 0; d < nDims; d++) dims.push(reader.u64AsNumber(`dim of ${name}`));
  const type = reader.u32();
  const offset = reader.u64AsNumber(`offset of ${name}`);
  const nElements = elementCount(dims);
  // Unknown types keep nBytes = -1: listing the file still works, reading that tensor throws.
  const nBytes = GGML_BLOCK_LAYOUT.has(type) ? ggmlTensorBytes(type, dims, `${reader.where}: ${name}`) : -1;
  return { name, dims, type, offset, nElements, nBytes };
}

function validateTensorLayout(tensors: GgufTensorInfo[], alignment: number, dataBytes: number, where: string): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new Error(`${where}: duplicate tensor ${t.name}`);
    seen.add(t.name);
    if (t.offset % alignment !== 0) throw new Error(`${where}: tensor ${t.name} offset ${t.offset} is not ${alignment}-aligned`);
    if (t.nBytes >= 0 && t.offset + t.nBytes > dataBytes) {
      throw new Error(`${where}: tensor ${t.name} extends past the end of the file`);
    }
  }
}

class ByteReader {
  offset = 0;
  private readonly view: DataView;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly bytes: Uint8Array,
    readonly where: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private take(n: number): number {
    const at = this.offset;
    if (at + n > this.bytes.length) throw new Error(`${this.where}: truncated GGUF header at byte ${at}`);
    this.offset += n;
    return at;
  }

  u8(): number { return this.view.getUint8(this.take(1)); }
  i8(): number { return this.view.getInt8(this.take(1)); }
  u16(): number { return this.view.getUint16(this.take(2), true); }
  i16(): number { return this.view.getInt16(this.take(2), true); }
  u32(): number { return this.view.getUint32(this.take(4), true); }
  i32(): number { return this.view.getInt32(this.take(4), true); }
  f32(): number { return this.view.getFloat32(this.take(4), true); }
  f64(): number { return this.view.getFloat64(this.take(8), true); }
  u64(): bigint { return this.view.getBigUint64(this.take(8), true); }
  i64(): bigint { return this.view.getBigInt64(this.take(8), true); }

  u64AsNumber(what: string): number {
    const value = this.u64();
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.where}: ${what} too large (${value})`);
    return Number(value);
  }

  string(): string {
    const length = this.u64AsNumber('string length');
    const at = this.take(length);
    try {
      return this.decoder.decode(this.bytes.subarray(at, at + length));
    } catch {
      // Strict on purpose: a lossy decode would silently alter vocab pieces.
      throw new Error(`${this.where}: invalid UTF-8 in string at byte ${at}`);
    }
  }

  valueType(): GgufValueTypeId {
    const type = this.u32();
    if (type > GgufValueType.FLOAT64) throw new Error(`${this.where}: unknown metadata value type ${type}`);
    return type as GgufValueTypeId;
  }

  typedValue(type: GgufValueTypeId): GgufTypedValue {
    if (type !== GgufValueType.ARRAY) return { type, value: this.scalar(type) };
    const elementType = this.valueType();
    const count = this.u64AsNumber('array length');
    if (elementType === GgufValueType.ARRAY) {
      // Each element is a bare array (element type, length, values) without its own type tag.
      const value: GgufTypedValue[] = [];
      for (let i = 0; i < count; i++) value.push(this.typedValue(GgufValueType.ARRAY));
      return { type, elementType, value };
    }
    const value = new Array<GgufScalar>(count);
    for (let i = 0; i < count; i++) value[i] = this.scalar(elementType);
    return { type, elementType, value };
  }

  private scalar(type: GgufScalarTypeId): GgufScalar {
    switch (type) {
      case GgufValueType.UINT8: return this.u8();
      case GgufValueType.INT8: return this.i8();
      case GgufValueType.UINT16: return this.u16();
      case GgufValueType.INT16: return this.i16();
      case GgufValueType.UINT32: return this.u32();
      case GgufValueType.INT32: return this.i32();
      case GgufValueType.FLOAT32: return this.f32();
      case GgufValueType.BOOL: return this.u8() !== 0;
      case GgufValueType.STRING: return this.string();
      case GgufValueType.UINT64: return this.u64();
      case GgufValueType.INT64: return this.i64();
      case GgufValueType.FLOAT64: return this.f64();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dequantization (bit-exact with ggml's reference dequantize_row_* functions: every product
// below is exact in f64 and rounded once to f32 on store, which is what the C float code does)

export function dequantize(type: number, bytes: Uint8Array, nElements: number, what = 'tensor'): Float32Array {
  if (GGML_BLOCK_LAYOUT.has(type)) {
    const needed = ggmlTensorBytes(type, [nElements], what);
    if (bytes.length < needed) throw new Error(`${what}: ${bytes.length} bytes, ${ggmlTypeName(type)} x ${nElements} needs ${needed}`);
  }
  switch (type) {
    case GgmlType.F32: return copyF32(bytes, nElements);
    case GgmlType.F16: return dequantizeF16(bytes, nElements);
    case GgmlType.BF16: return dequantizeBf16(bytes, nElements);
    case GgmlType.Q4_0: return dequantizeQ4_0(bytes, nElements);
    case GgmlType.Q8_0: return dequantizeQ8_0(bytes, nElements);
    case GgmlType.Q4_K: return dequantizeQ4_K(bytes, nElements);
    case GgmlType.Q6_K: return dequantizeQ6_K(bytes, nElements);
    default:
      throw new Error(`${what}: cannot dequantize ggml type ${ggmlTypeName(type)} (${type})`);
  }
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function copyF32(bytes: Uint8Array, n: number): Float32Array {
  if (HOST_IS_LITTLE_ENDIAN) {
    // Copy into a fresh buffer first: the source view may not be 4-byte aligned.
    return new Float32Array(copyBytes(bytes.subarray(0, n * 4)).buffer);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** A copy that owns its own ArrayBuffer (works for Buffers too, whose slice() is a view). */
function copyBytes(view: Uint8Array): Uint8Array {
  const out = new Uint8Array(view.length);
  out.set(view);
  return out;
}

function u16At(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8);
}

function dequantizeF16(bytes: Uint8Array, n: number): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = table[u16At(bytes, i * 2)];
  return out;
}

function dequantizeBf16(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = bf16ToF32(u16At(bytes, i * 2));
  return out;
}

export function dequantizeQ4_0(bytes: Uint8Array, n: number): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(n);
  for (let block = 0, src = 0; block * 32 < n; block++, src += 18) {
    const d = table[u16At(bytes, src)];
    const base = block * 32;
    for (let j = 0; j < 16; j++) {
      const q = bytes[src + 2 + j];
      out[base + j] = ((q & 0x0f) - 8) * d;
      out[base + j + 16] = ((q >> 4) - 8) * d;
    }
  }
  return out;
}

function dequantizeQ8_0(bytes: Uint8Array, n: number): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(n);
  for (let block = 0, src = 0; block * 32 < n; block++, src += 34) {
    const d = table[u16At(bytes, src)];
    const base = block * 32;
    for (let j = 0; j < 32; j++) out[base + j] = ((bytes[src + 2 + j] << 24) >> 24) * d;
  }
  return out;
}

/** ggml get_scale_min_k4: 8 (scale, min) pairs of 6 bits packed into 12 bytes. */
function scaleMinK4(j: number, scales: Uint8Array, at: number): [number, number] {
  if (j < 4) return [scales[at + j] & 63, scales[at + j + 4] & 63];
  const d = (scales[at + j + 4] & 0x0f) | ((scales[at + j - 4] >> 6) << 4);
  const m = (scales[at + j + 4] >> 4) | ((scales[at + j] >> 6) << 4);
  return [d, m];
}

/** block_q4_K: f16 d, f16 dmin, scales[12], qs[128]; 256 elements. */
function dequantizeQ4_K(bytes: Uint8Array, n: number): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(n);
  let y = 0;
  for (let src = 0; y < n; src += 144) {
    const d = table[u16At(bytes, src)];
    const min = table[u16At(bytes, src + 2)];
    const scalesAt = src + 4;
    let q = src + 16;
    for (let is = 0; is < 8; is += 2, q += 32) {
      const [sc1, m1] = scaleMinK4(is, bytes, scalesAt);
      const [sc2, m2] = scaleMinK4(is + 1, bytes, scalesAt);
      const d1 = Math.fround(d * sc1);
      const min1 = Math.fround(min * m1);
      const d2 = Math.fround(d * sc2);
      const min2 = Math.fround(min * m2);
      for (let l = 0; l < 32; l++) out[y++] = d1 * (bytes[q + l] & 0x0f) - min1;
      for (let l = 0; l < 32; l++) out[y++] = d2 * (bytes[q + l] >> 4) - min2;
    }
  }
  return out;
}

/** block_q6_K: ql[128], qh[64], int8 scales[16], f16 d; 256 elements. */
function dequantizeQ6_K(bytes: Uint8Array, n: number): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(n);
  for (let src = 0, y = 0; y < n; src += 210) {
    const d = table[u16At(bytes, src + 208)];
    let ql = src;
    let qh = src + 128;
    let sc = src + 192;
    for (let half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = bytes[qh + l];
        const q1 = ((bytes[ql + l] & 0x0f) | ((h & 3) << 4)) - 32;
        const q2 = ((bytes[ql + l + 32] & 0x0f) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((bytes[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((bytes[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
        out[y + l] = Math.fround(d * int8(bytes[sc + is])) * q1;
        out[y + l + 32] = Math.fround(d * int8(bytes[sc + is + 2])) * q2;
        out[y + l + 64] = Math.fround(d * int8(bytes[sc + is + 4])) * q3;
        out[y + l + 96] = Math.fround(d * int8(bytes[sc + is + 6])) * q4;
      }
    }
  }
  return out;
}

function int8(byte: number): number {
  return (byte << 24) >> 24;
}

// ---------------------------------------------------------------------------------------------
// Quantization

/**
 * ggml quantize_row_q4_0_ref, reproduced bit for bit: all arithmetic is rounded to f32 at the
 * same points as the C code (f64 then Math.fround gives the correctly rounded f32 result for a
 * single +, *, / of f32 operands). Length must be a multiple of 32.
 */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  if (x.length % 32 !== 0) throw new Error(`quantizeQ4_0: length ${x.length} is not a multiple of 32`);
  const out = new Uint8Array((x.length / 32) * 18);
  for (let block = 0; block * 32 < x.length; block++) {
    const base = block * 32;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[base + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    const dst = block * 18;
    const dBits = f32ToF16(d);
    out[dst] = dBits & 0xff;
    out[dst + 1] = dBits >> 8;
    for (let j = 0; j < 16; j++) {
      const lo = quantizeNibble(x[base + j], id);
      const hi = quantizeNibble(x[base + 16 + j], id);
      out[dst + 2 + j] = lo | (hi << 4);
    }
  }
  return out;
}

/** MIN(15, (int8_t)(x*id + 8.5f)): the cast truncates toward zero. */
function quantizeNibble(value: number, id: number): number {
  const scaled = Math.fround(Math.fround(value * id) + 8.5);
  return Math.min(15, Math.trunc(scaled)) & 0x0f;
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface GgufTensorSpec {
  name: string;
  /** ggml ne[] (ne[0] contiguous). */
  dims: number[];
  /** Storage type in the file. Float32Array data is converted to it (F32, F16, BF16, Q4_0). */
  type: number;
  /** Raw bytes already in `type`'s layout, or f32 values to convert. */
  data: Uint8Array | Float32Array;
}

export interface GgufWriteSpec {
  metadata: Map<string, GgufTypedValue> | Iterable<readonly [string, GgufTypedValue]>;
  tensors: GgufTensorSpec[];
}

/**
 * Writes a GGUF v3 file. Tensors are encoded and written one at a time so that a large model is
 * never held twice in memory.
 */
export async function writeGguf(path: string, spec: GgufWriteSpec): Promise<void> {
  const metadata = new Map(spec.metadata);
  const alignment = alignmentFrom(metadata, path);
  const sizes = spec.tensors.map((t) => ggmlTensorBytes(t.type, t.dims, `writeGguf ${t.name}`));
  const offsets: number[] = [];
  let dataSize = 0;
  for (const size of sizes) {
    offsets.push(dataSize);
    dataSize = alignUp(dataSize + size, alignment);
  }

  const header = new ByteWriter();
  header.u32(GGUF_MAGIC);
  header.u32(GGUF_WRITE_VERSION);
  header.u64(BigInt(spec.tensors.length));
  header.u64(BigInt(metadata.size));
  for (const [key, value] of metadata) {
    header.string(key);
    header.u32(value.type);
    header.typedValue(value, key);
  }
  spec.tensors.forEach((t, i) => {
    header.string(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(BigInt(d));
    header.u32(t.type);
    header.u64(BigInt(offsets[i]));
  });
  header.padTo(alignment);

  // Written beside the target and renamed at the end, so a failure never leaves a truncated GGUF.
  const partial = `${path}.partial-${process.pid}`;
  const file = await open(partial, 'w');
  try {
    await writeAll(file, header.finish());
    for (let i = 0; i < spec.tensors.length; i++) {
      await writeAll(file, encodeTensor(spec.tensors[i], sizes[i]));
      const padding = alignUp(sizes[i], alignment) - sizes[i];
      if (padding > 0) await writeAll(file, new Uint8Array(padding));
    }
    await file.close();
    await rename(partial, path);
  } catch (error) {
    await file.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  }
}

/** FileHandle.write may write less than asked (one syscall); loop until everything is out. */
async function writeAll(file: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await file.write(bytes, done, bytes.length - done);
    done += bytesWritten;
  }
}

function encodeTensor(t: GgufTensorSpec, expectedBytes: number): Uint8Array {
  let bytes: Uint8Array;
  if (t.data instanceof Float32Array) {
    if (t.data.length !== elementCount(t.dims)) {
      throw new Error(`writeGguf ${t.name}: ${t.data.length} values for dims [${t.dims}]`);
    }
    bytes = encodeF32(t.data, t.type, t.name);
  } else {
    bytes = t.data;
  }
  if (bytes.length !== expectedBytes) {
    throw new Error(`writeGguf ${t.name}: ${bytes.length} bytes, expected ${expectedBytes} for ${ggmlTypeName(t.type)} [${t.dims}]`);
  }
  return bytes;
}

function encodeF32(values: Float32Array, type: number, name: string): Uint8Array {
  switch (type) {
    case GgmlType.F32: {
      if (HOST_IS_LITTLE_ENDIAN) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      const out = new Uint8Array(values.length * 4);
      const view = new DataView(out.buffer);
      for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i], true);
      return out;
    }
    case GgmlType.F16:
    case GgmlType.BF16: {
      const encode = type === GgmlType.F16 ? f32ToF16 : f32ToBf16;
      const out = new Uint8Array(values.length * 2);
      for (let i = 0; i < values.length; i++) {
        const bits = encode(values[i]);
        out[i * 2] = bits & 0xff;
        out[i * 2 + 1] = bits >> 8;
      }
      return out;
    }
    case GgmlType.Q4_0:
      return quantizeQ4_0(values);
    default:
      throw new Error(`writeGguf ${name}: cannot encode f32 data as ${ggmlTypeName(type)}; pass raw bytes`);
  }
}

class ByteWriter {
  private buffer = new Uint8Array(1 << 16);
  private view = new DataView(this.buffer.buffer);
  private length = 0;
  private readonly encoder = new TextEncoder();

  private reserve(n: number): number {
    if (this.length + n > this.buffer.length) {
      let capacity = this.buffer.length * 2;
      while (capacity < this.length + n) capacity *= 2;
      const grown = new Uint8Array(capacity);
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
      this.view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  // reserve() may swap in a larger buffer, so it must run before this.view / this.buffer are read.
  u8(v: number): void { const at = this.reserve(1); this.view.setUint8(at, v); }
  i8(v: number): void { const at = this.reserve(1); this.view.setInt8(at, v); }
  u16(v: number): void { const at = this.reserve(2); this.view.setUint16(at, v, true); }
  i16(v: number): void { const at = this.reserve(2); this.view.setInt16(at, v, true); }
  u32(v: number): void { const at = this.reserve(4); this.view.setUint32(at, v, true); }
  i32(v: number): void { const at = this.reserve(4); this.view.setInt32(at, v, true); }
  f32(v: number): void { const at = this.reserve(4); this.view.setFloat32(at, v, true); }
  f64(v: number): void { const at = this.reserve(8); this.view.setFloat64(at, v, true); }
  u64(v: bigint): void { const at = this.reserve(8); this.view.setBigUint64(at, v, true); }
  i64(v: bigint): void { const at = this.reserve(8); this.view.setBigInt64(at, v, true); }

  string(s: string): void {
    const bytes = this.encoder.encode(s);
    this.u64(BigInt(bytes.length));
    const at = this.reserve(bytes.length);
    this.buffer.set(bytes, at);
  }

  typedValue(v: GgufTypedValue, key: string): void {
    if (v.type !== GgufValueType.ARRAY) {
      this.scalar(v.type, v.value, key);
      return;
    }
    this.u32(v.elementType);
    this.u64(BigInt(v.value.length));
    if (v.elementType === GgufValueType.ARRAY) {
      for (const element of v.value) {
        if (element.type !== GgufValueType.ARRAY) throw new Error(`writeGguf: metadata ${key}: nested element is not an array`);
        this.typedValue(element, key);
      }
      return;
    }
    for (const element of v.value) this.scalar(v.elementType, element, key);
  }

  private scalar(type: GgufScalarTypeId, value: GgufScalar, key: string): void {
    const fail = (): never => {
      throw new Error(`writeGguf: metadata ${key}: value ${String(value)} does not fit type ${type}`);
    };
    if (type === GgufValueType.STRING) return typeof value === 'string' ? this.string(value) : fail();
    if (type === GgufValueType.BOOL) return typeof value === 'boolean' ? this.u8(value ? 1 : 0) : fail();
    if (type === GgufValueType.UINT64 || type === GgufValueType.INT64) {
      const big = typeof value === 'bigint' ? value : typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : fail();
      const unsigned = type === GgufValueType.UINT64;
      if ((unsigned ? BigInt.asUintN(64, big) : BigInt.asIntN(64, big)) !== big) fail();
      return unsigned ? this.u64(big) : this.i64(big);
    }
    if (typeof value !== 'number') return fail();
    if (type === GgufValueType.FLOAT32) return this.f32(value);
    if (type === GgufValueType.FLOAT64) return this.f64(value);
    const [lo, hi] = INTEGER_RANGES[type];
    if (!Number.isInteger(value) || value < lo || value > hi) fail();
    switch (type) {
      case GgufValueType.UINT8: return this.u8(value);
      case GgufValueType.INT8: return this.i8(value);
      case GgufValueType.UINT16: return this.u16(value);
      case GgufValueType.INT16: return this.i16(value);
      case GgufValueType.UINT32: return this.u32(value);
      case GgufValueType.INT32: return this.i32(value);
    }
  }

  padTo(alignment: number): void {
    this.reserve(alignUp(this.length, alignment) - this.length); // fresh capacity is zero-filled
  }

  finish(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }
}

const INTEGER_RANGES: Record<0 | 1 | 2 | 3 | 4 | 5, readonly [number, number]> = {
  [GgufValueType.UINT8]: [0, 0xff],
  [GgufValueType.INT8]: [-0x80, 0x7f],
  [GgufValueType.UINT16]: [0, 0xffff],
  [GgufValueType.INT16]: [-0x8000, 0x7fff],
  [GgufValueType.UINT32]: [0, 0xffffffff],
  [GgufValueType.INT32]: [-0x80000000, 0x7fffffff],
};

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

// ---------------------------------------------------------------------------------------------
// Llama GGUF <-> ImportedCheckpoint

/** Types we keep quantized in memory; the engine multiplies with them directly. */
const KEEP_QUANTIZED: ReadonlySet<number> = new Set([GgmlType.Q4_0]);

export async function ggufToCheckpoint(path: string): Promise<ImportedCheckpoint> {
  const file = await readGguf(path);
  const architecture = file.metadata.get('general.architecture');
  if (architecture !== 'llama') {
    throw new Error(`${path}: general.architecture is ${JSON.stringify(architecture)}; only 'llama' is supported`);
  }
  const vocab = vocabFromGguf(file);
  const hasOutput = file.tensor('output.weight') !== undefined;
  const config = llamaConfigFromGguf(file, vocab, !hasOutput);
  const weights = llamaWeightsFromGguf(file, config);
  const sha256 = createHash('sha256').update(file.bytes).digest('hex');
  return { weights, vocab, source: { format: 'gguf', path, sha256 } };
}

class MetadataReader {
  constructor(private readonly file: GgufFile) {}

  number(key: string, fallback?: number): number {
    const value = this.file.metadata.get(key);
    if (value === undefined) {
      if (fallback === undefined) throw new Error(`${this.file.path}: missing metadata ${key}`);
      return fallback;
    }
    if (typeof value !== 'number') throw new Error(`${this.file.path}: metadata ${key} is not a number`);
    return value;
  }

  string(key: string): string | undefined {
    const value = this.file.metadata.get(key);
    if (value !== undefined && typeof value !== 'string') throw new Error(`${this.file.path}: metadata ${key} is not a string`);
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const value = this.file.metadata.get(key);
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') throw new Error(`${this.file.path}: metadata ${key} is not a bool`);
    return value;
  }

  array(key: string): GgufValue[] | undefined {
    const value = this.file.metadata.get(key);
    if (value !== undefined && !Array.isArray(value)) throw new Error(`${this.file.path}: metadata ${key} is not an array`);
    return value;
  }
}

/**
 * f32 metadata such as 1e-5 arrives as 9.99999974e-6. Return the shortest decimal that rounds to
 * the same f32, i.e. the value the converter wrote, so configs compare equal across formats.
 */
export function shortestF32Decimal(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const target = Math.fround(x);
  for (let digits = 1; digits <= 9; digits++) {
    const candidate = Number(target.toPrecision(digits));
    if (Math.fround(candidate) === target) return candidate;
  }
  return target;
}

function llamaConfigFromGguf(file: GgufFile, vocab: SentencePieceVocab, tied: boolean): LlamaConfig {
  const meta = new MetadataReader(file);
  const hidden = meta.number('llama.embedding_length');
  const heads = meta.number('llama.attention.head_count');
  const headDim = meta.number('llama.attention.key_length', hidden / heads);
  if (!Number.isInteger(headDim)) throw new Error(`${file.path}: embedding_length ${hidden} not divisible by ${heads} heads`);
  if (meta.number('llama.attention.value_length', headDim) !== headDim) {
    throw new Error(`${file.path}: key_length != value_length is not supported`);
  }
  // Partial rotary embeddings have no representation in LlamaConfig: refuse rather than misrun.
  const ropeDims = meta.number('llama.rope.dimension_count', headDim);
  if (ropeDims !== headDim) throw new Error(`${file.path}: rope.dimension_count ${ropeDims} != head_dim ${headDim} is not supported`);
  if (file.metadata.has('llama.rope.scaling.type') && meta.string('llama.rope.scaling.type') !== 'none') {
    throw new Error(`${file.path}: RoPE scaling (${meta.string('llama.rope.scaling.type')}) is not supported`);
  }

  const vocabSize = vocab.tokens.length;
  const declared = meta.number('llama.vocab_size', vocabSize);
  if (declared !== vocabSize) throw new Error(`${file.path}: llama.vocab_size ${declared} != ${vocabSize} tokens`);

  return {
    architecture: 'llama',
    hidden_size: hidden,
    intermediate_size: meta.number('llama.feed_forward_length'),
    num_hidden_layers: meta.number('llama.block_count'),
    num_attention_heads: heads,
    num_key_value_heads: meta.number('llama.attention.head_count_kv', heads),
    head_dim: headDim,
    vocab_size: vocabSize,
    max_position_embeddings: meta.number('llama.context_length'),
    rope_theta: shortestF32Decimal(meta.number('llama.rope.freq_base', 10000)),
    rope_style: 'interleaved',
    rope_scaling: null,
    attention_bias: false,
    qk_norm: false,
    rms_norm_eps: shortestF32Decimal(meta.number('llama.attention.layer_norm_rms_epsilon')),
    tie_word_embeddings: tied,
    bos_token_id: vocab.bos,
    eos_token_id: vocab.eos,
  };
}

function vocabFromGguf(file: GgufFile): SentencePieceVocab {
  const meta = new MetadataReader(file);
  const model = meta.string('tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new Error(`${file.path}: tokenizer.ggml.model is ${JSON.stringify(model)}; only 'llama' (SentencePiece) is supported`);
  }
  const tokens = meta.array('tokenizer.ggml.tokens');
  if (!tokens || !tokens.every((t): t is string => typeof t === 'string')) {
    throw new Error(`${file.path}: tokenizer.ggml.tokens missing or not strings`);
  }
  const scores = numberArray(meta.array('tokenizer.ggml.scores'), tokens.length, 0, 'tokenizer.ggml.scores', file.path);
  const types = numberArray(meta.array('tokenizer.ggml.token_type'), tokens.length, 1, 'tokenizer.ggml.token_type', file.path);
  const unknownIndex = types.indexOf(2);
  const vocab: SentencePieceVocab = {
    tokens,
    scores,
    types,
    bos: meta.number('tokenizer.ggml.bos_token_id', 1),
    eos: meta.number('tokenizer.ggml.eos_token_id', 2),
    unk: meta.number('tokenizer.ggml.unknown_token_id', unknownIndex >= 0 ? unknownIndex : 0),
    addSpacePrefix: meta.bool('tokenizer.ggml.add_space_prefix', true),
  };
  const chatTemplate = meta.string('tokenizer.chat_template');
  if (chatTemplate !== undefined) vocab.chatTemplate = chatTemplate;
  for (const [name, id] of [['bos', vocab.bos], ['eos', vocab.eos], ['unk', vocab.unk]] as const) {
    if (id < 0 || id >= tokens.length) throw new Error(`${file.path}: ${name} token id ${id} out of range`);
  }
  return vocab;
}

function numberArray(value: GgufValue[] | undefined, length: number, fallback: number, key: string, where: string): number[] {
  if (value === undefined) return new Array<number>(length).fill(fallback);
  if (value.length !== length || !value.every((v): v is number => typeof v === 'number')) {
    throw new Error(`${where}: ${key} must be ${length} numbers`);
  }
  return value;
}

function llamaWeightsFromGguf(file: GgufFile, config: LlamaConfig): LlamaWeights {
  const hidden = config.hidden_size;
  const kvDim = config.num_key_value_heads * config.head_dim;
  const qDim = config.num_attention_heads * config.head_dim;
  const ffn = config.intermediate_size;

  const vector = (name: string, length: number): Float32Array => {
    const info = file.requireTensor(name);
    expectDims(info, [length], file.path);
    return file.tensorF32(info);
  };
  const matrix = (name: string, rows: number, cols: number): Matrix => {
    const info = file.requireTensor(name);
    expectDims(info, [cols, rows], file.path);
    if (KEEP_QUANTIZED.has(info.type)) return { kind: 'q4_0', rows, cols, data: copyBytes(file.tensorBytes(info)) };
    return { kind: 'f32', rows, cols, data: file.tensorF32(info) };
  };

  const embeddings = file.requireTensor('token_embd.weight');
  expectDims(embeddings, [hidden, config.vocab_size], file.path);

  const layers: LlamaLayer[] = [];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `blk.${i}.`;
    layers.push({
      attnNorm: vector(`${p}attn_norm.weight`, hidden),
      wq: matrix(`${p}attn_q.weight`, qDim, hidden),
      wk: matrix(`${p}attn_k.weight`, kvDim, hidden),
      wv: matrix(`${p}attn_v.weight`, kvDim, hidden),
      wo: matrix(`${p}attn_output.weight`, hidden, qDim),
      ffnNorm: vector(`${p}ffn_norm.weight`, hidden),
      gate: matrix(`${p}ffn_gate.weight`, ffn, hidden),
      down: matrix(`${p}ffn_down.weight`, hidden, ffn),
      up: matrix(`${p}ffn_up.weight`, ffn, hidden),
    });
  }

  return {
    config,
    tokEmbeddings: file.tensorF32(embeddings),
    layers,
    finalNorm: vector('output_norm.weight', hidden),
    output: config.tie_word_embeddings ? null : matrix('output.weight', config.vocab_size, hidden),
  };
}

function expectDims(info: GgufTensorInfo, expected: number[], where: string): void {
  if (info.dims.length !== expected.length || info.dims.some((d, i) => d !== expected[i])) {
    throw new Error(`${where}: tensor ${info.name} has ne=[${info.dims}], expected [${expected}]`);
  }
}

export interface WriteLlamaGgufOptions {
  /**
   * 'f32': every tensor F32 (Q4_0 matrices are dequantized). 'q4_0': the linear layers and an
   * untied output become Q4_0 where the row length allows it (cols % 32 == 0; others stay F32,
   * as llama.cpp's quantizer also falls back). token_embd and the norms always stay F32,
   * mirroring our in-memory form, so a q4_0 export re-imports to the same checkpoint.
   */
  quant: 'f32' | 'q4_0';
  /** general.name; defaults to none. */
  name?: string;
}

/** Writes a checkpoint as a llama-architecture GGUF that llama.cpp can load. */
export async function writeLlamaGguf(path: string, ckpt: ImportedCheckpoint, opts: WriteLlamaGgufOptions): Promise<void> {
  const { weights, vocab } = ckpt;
  const { config } = weights;
  if (config.tie_word_embeddings !== (weights.output === null)) {
    throw new Error('writeLlamaGguf: tie_word_embeddings disagrees with the presence of an output matrix');
  }
  if (vocab.tokens.length !== config.vocab_size) {
    throw new Error(`writeLlamaGguf: ${vocab.tokens.length} vocab pieces for vocab_size ${config.vocab_size}`);
  }
  await writeGguf(path, { metadata: llamaMetadata(config, vocab, opts), tensors: llamaTensors(weights, opts.quant) });
}

function llamaMetadata(config: LlamaConfig, vocab: SentencePieceVocab, opts: WriteLlamaGgufOptions): Map<string, GgufTypedValue> {
  const LLAMA_FTYPE_ALL_F32 = 0;
  const LLAMA_FTYPE_MOSTLY_Q4_0 = 2;
  const m = new Map<string, GgufTypedValue>();
  m.set('general.architecture', gguf.str('llama'));
  if (opts.name !== undefined) m.set('general.name', gguf.str(opts.name));
  m.set('general.file_type', gguf.u32(opts.quant === 'q4_0' ? LLAMA_FTYPE_MOSTLY_Q4_0 : LLAMA_FTYPE_ALL_F32));
  m.set('llama.vocab_size', gguf.u32(config.vocab_size));
  m.set('llama.context_length', gguf.u32(config.max_position_embeddings));
  m.set('llama.embedding_length', gguf.u32(config.hidden_size));
  m.set('llama.block_count', gguf.u32(config.num_hidden_layers));
  m.set('llama.feed_forward_length', gguf.u32(config.intermediate_size));
  m.set('llama.rope.dimension_count', gguf.u32(config.head_dim));
  m.set('llama.rope.freq_base', gguf.f32(config.rope_theta));
  m.set('llama.attention.head_count', gguf.u32(config.num_attention_heads));
  m.set('llama.attention.head_count_kv', gguf.u32(config.num_key_value_heads));
  m.set('llama.attention.layer_norm_rms_epsilon', gguf.f32(config.rms_norm_eps));
  if (config.head_dim * config.num_attention_heads !== config.hidden_size) {
    m.set('llama.attention.key_length', gguf.u32(config.head_dim));
    m.set('llama.attention.value_length', gguf.u32(config.head_dim));
  }
  m.set('tokenizer.ggml.model', gguf.str('llama'));
  m.set('tokenizer.ggml.tokens', gguf.array(GgufValueType.STRING, vocab.tokens));
  m.set('tokenizer.ggml.scores', gguf.array(GgufValueType.FLOAT32, vocab.scores));
  m.set('tokenizer.ggml.token_type', gguf.array(GgufValueType.INT32, vocab.types));
  m.set('tokenizer.ggml.bos_token_id', gguf.u32(vocab.bos));
  m.set('tokenizer.ggml.eos_token_id', gguf.u32(vocab.eos));
  m.set('tokenizer.ggml.unknown_token_id', gguf.u32(vocab.unk));
  m.set('tokenizer.ggml.add_bos_token', gguf.bool(true));
  m.set('tokenizer.ggml.add_eos_token', gguf.bool(false));
  m.set('tokenizer.ggml.add_space_prefix', gguf.bool(vocab.addSpacePrefix));
  if (vocab.chatTemplate !== undefined) m.set('tokenizer.chat_template', gguf.str(vocab.chatTemplate));
  return m;
}

function llamaTensors(weights: LlamaWeights, quant: 'f32' | 'q4_0'): GgufTensorSpec[] {
  const { config } = weights;
  const f32 = (name: string, data: Float32Array, dims: number[]): GgufTensorSpec => ({ name, dims, type: GgmlType.F32, data });
  const vector = (name: string, data: Float32Array): GgufTensorSpec => f32(name, data, [data.length]);
  const matrix = (name: string, m: Matrix): GgufTensorSpec => matrixTensor(name, m, quant);

  const tensors: GgufTensorSpec[] = [
    f32('token_embd.weight', weights.tokEmbeddings, [config.hidden_size, config.vocab_size]),
    vector('output_norm.weight', weights.finalNorm),
  ];
  if (weights.output) tensors.push(matrix('output.weight', weights.output));
  weights.layers.forEach((layer, i) => {
    const p = `blk.${i}.`;
    tensors.push(
      vector(`${p}attn_norm.weight`, layer.attnNorm),
      matrix(`${p}attn_q.weight`, layer.wq),
      matrix(`${p}attn_k.weight`, layer.wk),
      matrix(`${p}attn_v.weight`, layer.wv),
      matrix(`${p}attn_output.weight`, layer.wo),
      vector(`${p}ffn_norm.weight`, layer.ffnNorm),
      matrix(`${p}ffn_gate.weight`, layer.gate),
      matrix(`${p}ffn_down.weight`, layer.down),
      matrix(`${p}ffn_up.weight`, layer.up),
    );
  });
  return tensors;
}

function matrixTensor(name: string, m: Matrix, quant: 'f32' | 'q4_0'): GgufTensorSpec {
  const dims = [m.cols, m.rows];
  if (m.kind === 'q4_0') {
    return quant === 'q4_0'
      ? { name, dims, type: GgmlType.Q4_0, data: m.data }
      : { name, dims, type: GgmlType.F32, data: dequantizeQ4_0(m.data, m.rows * m.cols) };
  }
  const quantize = quant === 'q4_0' && m.cols % 32 === 0;
  return { name, dims, type: quantize ? GgmlType.Q4_0 : GgmlType.F32, data: m.data };
}
