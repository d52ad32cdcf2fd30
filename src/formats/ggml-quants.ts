/**
 * ggml tensor storage types and their codecs: block layouts, dequantization of F32/F16/BF16/Q4_0/
 * Q8_0/Q4_K/Q6_K to f32, and Q4_0 quantization, each bit-exact with ggml's reference C code
 * (ggml/src/ggml-quants.c). f16/bf16 conversion lives in ./half.ts, the one copy of it.
 */
import { bf16ToF32, f16LookupTable, f32ToBf16, f32ToF16 } from './half.js';

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
export const GGML_BLOCK_LAYOUT: ReadonlyMap<number, readonly [number, number]> = new Map([
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

export function elementCount(ne: readonly number[]): number {
  return ne.reduce((a, b) => a * b, 1);
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
export function copyBytes(view: Uint8Array): Uint8Array {
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
// Encoding f32 values as a storage type (the writer's input)

/** f32 values in `type`'s on-disk layout (F32, F16, BF16 or Q4_0), little endian. */
export function encodeF32(values: Float32Array, type: number, name: string): Uint8Array {
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
