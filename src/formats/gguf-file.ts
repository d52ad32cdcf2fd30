/**
 * GGUF (v2/v3, little endian) container reader and writer: metadata key/values with their wire
 * types, tensor infos, aligned tensor data. Layout reference: ggml/docs/gguf.md and ggml/src/gguf.cpp.
 * What the tensors and keys mean for a model is src/model/gguf-architectures.ts's business.
 *
 * File layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata KVs,
 * tensor infos (name, n_dims, ne[], type, offset), zero padding to `alignment`, tensor data
 * (each tensor's offset is relative to the data section and aligned).
 */
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';

import { dequantize, elementCount, encodeF32, GGML_BLOCK_LAYOUT, ggmlTensorBytes, ggmlTypeName } from './ggml-quants.js';

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
// Typed access to metadata, for the mappings that read a model out of a file

/** Metadata getters that name the file and key when a value is missing or of the wrong type. */
export class GgufMetadataReader {
  constructor(private readonly file: GgufFile) {}

  has(key: string): boolean {
    return this.file.metadata.has(key);
  }

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
