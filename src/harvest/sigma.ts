/**
 * The bridge σ: how hidden states are compressed before they leave the inference node (GPT Carry-On,
 * §3). An optional fixed linear projection D → d runs first, then a dtype codec:
 *
 * - `f16`  (default) IEEE binary16, round-to-nearest-even; 2 bytes per value.
 * - `int8` per-row (per-token) absmax: s = max|x| over the row, q = round(x / s · 127) stored as I8,
 *          s stored as F32; decode x̂ = q · s / 127. 1 byte per value + 4 bytes per row.
 * - `none` f32 as computed; 4 bytes per value.
 *
 * Measured errors on real hidden states are in docs/harvest-format.md ("The bridge σ").
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { f16LookupTable, f32BitsToF16 } from '../formats/half.js';
import { readSafetensors, type DecodedTensor } from '../formats/safetensors.js';

export type SigmaCodec = 'f16' | 'int8' | 'none';
export const SIGMA_CODECS: readonly SigmaCodec[] = ['f16', 'int8', 'none'];

export interface SigmaSpec {
  codec: SigmaCodec;
  /** A [d, D] matrix: a `.safetensors` file (tensor `projection`, or its only tensor; F32 or F16) or raw little-endian f32. */
  projectionPath?: string;
}

/** What a shard records about its σ (JSON in the `sigma` metadata key). */
export interface SigmaDescriptor {
  codec: SigmaCodec;
  projection: { sha256: string; file: string; rows: number; cols: number } | null;
}

export type EncodedDtype = 'F16' | 'I8' | 'F32';

/** One layer's rows after σ: [rows × cols] in `dtype`, plus the per-row scale for int8. */
export interface EncodedRows {
  dtype: EncodedDtype;
  rows: number;
  cols: number;
  data: Uint16Array | Int8Array | Float32Array;
  scale: Float32Array | null;
}

export const CODEC_DTYPE: Record<SigmaCodec, EncodedDtype> = { f16: 'F16', int8: 'I8', none: 'F32' };

/** A loaded projection matrix. A raw f32 file has no shape, so its row count is fixed by the first D seen. */
export class Projection {
  private constructor(
    readonly data: Float32Array,
    readonly sha256: string,
    readonly file: string,
    /** d×D known from a safetensors file; null for raw f32 until `shapeFor` resolves it. */
    private readonly shape: [number, number] | null,
  ) {}

  static load(file: string): Projection {
    const bytes = fs.readFileSync(file);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    if (file.endsWith('.safetensors')) {
      const { tensors } = readSafetensors(file);
      const t = tensors.get('projection') ?? (tensors.size === 1 ? [...tensors.values()][0] : undefined);
      if (!t) throw new Error(`${file}: expected a tensor named "projection" (or exactly one tensor)`);
      if (t.shape.length !== 2) throw new Error(`${file}: projection must be 2-D [d, D], got [${t.shape}]`);
      return new Projection(toF32(t, file), sha256, path.basename(file), [t.shape[0], t.shape[1]]);
    }
    if (bytes.length % 4 !== 0 || bytes.length === 0) throw new Error(`${file}: raw f32 projection must be a non-empty multiple of 4 bytes`);
    const data = new Float32Array(bytes.length / 4);
    new Uint8Array(data.buffer).set(bytes);
    return new Projection(data, sha256, path.basename(file), null);
  }

  /** [d, D] for input width D, or an error naming the mismatch. */
  shapeFor(hiddenSize: number): [number, number] {
    if (this.shape) {
      if (this.shape[1] !== hiddenSize) {
        throw new Error(`projection ${this.file} is [${this.shape}] but hidden states have D=${hiddenSize}`);
      }
      return this.shape;
    }
    if (this.data.length % hiddenSize !== 0) {
      throw new Error(`projection ${this.file} holds ${this.data.length} floats, not a multiple of D=${hiddenSize}`);
    }
    return [this.data.length / hiddenSize, hiddenSize];
  }

  /** y = x · Pᵀ for `rows` rows of x [rows × D]. */
  apply(x: Float32Array, rows: number, hiddenSize: number): Float32Array {
    const [d, D] = this.shapeFor(hiddenSize);
    const p = this.data;
    const y = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      const xo = r * D;
      for (let i = 0; i < d; i++) {
        const po = i * D;
        let acc = 0;
        for (let j = 0; j < D; j++) acc += p[po + j] * x[xo + j];
        y[r * d + i] = acc;
      }
    }
    return y;
  }

}

export class Sigma {
  constructor(
    readonly codec: SigmaCodec,
    readonly projection: Projection | null = null,
  ) {
    if (!SIGMA_CODECS.includes(codec)) throw new Error(`unknown sigma codec '${String(codec)}' (f16, int8, none)`);
  }

  static load(spec: SigmaSpec): Sigma {
    return new Sigma(spec.codec, spec.projectionPath ? Projection.load(spec.projectionPath) : null);
  }

  /** Width of the stored rows for hidden size D. */
  outputSize(hiddenSize: number): number {
    return this.projection ? this.projection.shapeFor(hiddenSize)[0] : hiddenSize;
  }

  describe(hiddenSize: number): SigmaDescriptor {
    if (!this.projection) return { codec: this.codec, projection: null };
    const [d, D] = this.projection.shapeFor(hiddenSize);
    return { codec: this.codec, projection: { sha256: this.projection.sha256, file: this.projection.file, rows: d, cols: D } };
  }

  /** Encodes [rows × hiddenSize] f32 hidden states. Never mutates `x`. */
  encode(x: Float32Array, rows: number, hiddenSize: number): EncodedRows {
    if (x.length !== rows * hiddenSize) throw new Error(`hidden holds ${x.length} floats, expected ${rows}×${hiddenSize}`);
    const cols = this.outputSize(hiddenSize);
    const y = this.projection ? this.projection.apply(x, rows, hiddenSize) : x;
    switch (this.codec) {
      case 'none':
        return { dtype: 'F32', rows, cols, data: y === x ? x.slice() : y, scale: null };
      case 'f16':
        return { dtype: 'F16', rows, cols, data: encodeF16(y), scale: null };
      case 'int8': {
        const { q, scale } = encodeInt8Rows(y, rows, cols);
        return { dtype: 'I8', rows, cols, data: q, scale };
      }
    }
  }
}

/** Back to f32 (in the projected space when σ has a projection: the projection is not inverted). */
export function decodeRows(enc: EncodedRows): Float32Array {
  switch (enc.dtype) {
    case 'F32':
      return Float32Array.from(enc.data as Float32Array);
    case 'F16':
      return decodeF16(enc.data as Uint16Array);
    case 'I8':
      if (!enc.scale) throw new Error('int8 rows need their scale');
      return decodeInt8Rows(enc.data as Int8Array, enc.scale, enc.rows, enc.cols);
  }
}

/**
 * f32 → f16 bits over a whole array, with formats/half.ts's converter (round to nearest even, gradual
 * underflow, overflow to infinity) on the f32 bits read directly, which is several times faster than
 * `f32ToF16` per element: σ runs on every harvested token.
 */
export function encodeF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]);
  return out;
}

/** The per-value converter `encodeF16` applies (formats/half.ts's), kept importable from here. */
export { f32BitsToF16 };

export function decodeF16(bits: Uint16Array): Float32Array {
  const table = f16LookupTable();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/**
 * Per-row absmax int8. A row of zeros gets s = 0 (decodes to zeros). Non-finite inputs never poison
 * the scale: s is taken over finite values, NaN encodes as 0 and ±Infinity as ±127.
 */
export function encodeInt8Rows(x: Float32Array, rows: number, cols: number): { q: Int8Array; scale: Float32Array } {
  const q = new Int8Array(rows * cols);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let s = 0;
    for (let j = 0; j < cols; j++) {
      const a = Math.abs(x[o + j]);
      if (a > s && a !== Infinity) s = a;
    }
    // Round s to f32 first: the decoder only ever sees the stored f32 scale.
    s = Math.fround(s);
    scale[r] = s;
    const inv = s > 0 ? 127 / s : 0;
    for (let j = 0; j < cols; j++) {
      const v = x[o + j];
      if (v !== v) continue; // NaN → 0
      const t = Math.round(v * inv);
      q[o + j] = t > 127 ? 127 : t < -127 ? -127 : t;
    }
  }
  return { q, scale };
}

export function decodeInt8Rows(q: Int8Array, scale: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const k = scale[r] / 127;
    const o = r * cols;
    for (let j = 0; j < cols; j++) out[o + j] = q[o + j] * k;
  }
  return out;
}

export interface ReconstructionError {
  /** ‖x − x̂‖₂ / ‖x‖₂ over all values. */
  relRms: number;
  maxAbs: number;
  /** max over rows of ‖x_r − x̂_r‖ / ‖x_r‖: the worst single token. */
  worstRowRel: number;
}

export function reconstructionError(x: Float32Array, xHat: Float32Array, cols: number): ReconstructionError {
  if (x.length !== xHat.length) throw new Error('length mismatch');
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let worstRowRel = 0;
  for (let o = 0; o < x.length; o += cols) {
    let rn = 0;
    let rd = 0;
    for (let j = o; j < o + cols; j++) {
      const d = x[j] - xHat[j];
      rn += d * d;
      rd += x[j] * x[j];
      if (Math.abs(d) > maxAbs) maxAbs = Math.abs(d);
    }
    num += rn;
    den += rd;
    if (rd > 0) worstRowRel = Math.max(worstRowRel, Math.sqrt(rn / rd));
  }
  return { relRms: den > 0 ? Math.sqrt(num / den) : 0, maxAbs, worstRowRel };
}

function toF32(t: DecodedTensor, file: string): Float32Array {
  if (t.dtype === 'F32') return Float32Array.from(t.data as Float32Array);
  if (t.dtype === 'F16') return decodeF16(t.data as Uint16Array);
  throw new Error(`${file}: projection must be F32 or F16, got ${t.dtype}`);
}
