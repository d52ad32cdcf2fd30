/**
 * Linear layers over ggml-quantized weights, served quantized through ONNX Runtime's MatMulNBits
 * instead of being expanded to f32. Each ggml block type maps onto MatMulNBits exactly (same
 * values, only re-laid out), so what runs is the weight the file holds:
 *
 * - Q4_0 (value (q - 8)·d per 32): 4-bit, block 32, the default zero point 8.
 * - Q8_0 (value q·d, q int8, per 32): 8-bit, block 32, stored as q + 128 with the default zero point 128.
 * - Q6_K (value d·sc·(q - 32), q 6-bit, one int8 scale per 16): 8-bit, block 16, zero point 32.
 * - Q4_K (value d·sc·q - dmin·m per 32, 6-bit sc and m): 4-bit, block 32, zero point 0, and the
 *   "- dmin·m" part as a correction: Σ_k x_k·(-dmin·m_block(k)) = -(block sums of x) · mins, a
 *   MatMul K/32 wide. MatMulNBits also takes float zero points, which would express dmin·m/(d·sc)
 *   directly, but ORT 1.30 runs that form on a slow reference kernel (≈70× slower than f32 MatMul
 *   measured here), while zero point 0 keeps the int8 kernels (accuracy_level 4).
 *
 * 8-bit weights always run with accuracy_level 4: ORT's fp32-activation 8-bit kernel is a
 * reference loop (hundreds of ms for a 2048×8192 matrix), its int8 one is faster than f32.
 */
import { attr, type GraphBuilder } from '../formats/onnx-builder.js';
import { f16ToF32 } from '../formats/half.js';
import type { Matrix, QuantKind } from './types.js';

/** A weight matrix [rows = out, cols = in] kept as ggml blocks, row-major, each row its own blocks. */
export type GgmlQuantMatrix = Extract<Matrix, { kind: QuantKind }>;
export type GgmlQuantKind = QuantKind;

/** Elements and bytes of one ggml block of each kind. */
export const GGML_BLOCKS: Record<GgmlQuantKind, { elements: number; bytes: number }> = {
  q4_0: { elements: 32, bytes: 18 },
  q8_0: { elements: 32, bytes: 34 },
  q4_k: { elements: 256, bytes: 144 },
  q6_k: { elements: 256, bytes: 210 },
};

/** Values of a MatMulNBits weight: B [N, K/block, block·bits/8], scales [N·K/block], uint8 zero points. */
export interface NBitsWeight {
  bits: 4 | 8;
  blockSize: number;
  packed: Uint8Array;
  scales: Float32Array;
  /** Absent: MatMulNBits' default (2^(bits-1)). 4-bit ones are packed two per byte, low nibble first. */
  zeroPoints?: Uint8Array;
  /** Q4_K only: [K/32, N], the per-block amounts subtracted (dmin·m), applied to block sums of x. */
  mins?: Float32Array;
}

export function checkQuantMatrix(m: GgmlQuantMatrix, what: string): void {
  const { elements, bytes } = GGML_BLOCKS[m.kind];
  if (m.cols % elements !== 0) throw new Error(`${what}: ${m.kind} needs cols divisible by ${elements}, got ${m.cols} (keep this matrix in f32)`);
  const expected = (m.rows * m.cols * bytes) / elements;
  if (m.data.length !== expected) throw new Error(`${what}: ${m.data.length} bytes of ${m.kind}, expected ${expected}`);
}

/** Re-lays ggml blocks out for MatMulNBits; exact (the same values), see the file comment. */
export function toNBits(m: GgmlQuantMatrix): NBitsWeight {
  checkQuantMatrix(m, 'weight');
  switch (m.kind) {
    case 'q4_0':
      return q4_0ToNBits(m);
    case 'q8_0':
      return q8_0ToNBits(m);
    case 'q4_k':
      return q4_kToNBits(m);
    case 'q6_k':
      return q6_kToNBits(m);
  }
}

/** ggml Q4_0 byte j holds elements j (low) and j + 16 (high); MatMulNBits byte i holds 2i (low), 2i + 1 (high). */
function q4_0ToNBits(m: GgmlQuantMatrix): NBitsWeight {
  const nBlocks = (m.rows * m.cols) / 32;
  const packed = new Uint8Array(nBlocks * 16);
  const scales = new Float32Array(nBlocks);
  const q = new Uint8Array(32);
  for (let blk = 0; blk < nBlocks; blk++) {
    const src = blk * 18;
    scales[blk] = f16ToF32(m.data[src] | (m.data[src + 1] << 8));
    for (let j = 0; j < 16; j++) {
      const byte = m.data[src + 2 + j];
      q[j] = byte & 0x0f;
      q[j + 16] = byte >> 4;
    }
    packNibbles(q, packed, blk * 16);
  }
  return { bits: 4, blockSize: 32, packed, scales };
}

function q8_0ToNBits(m: GgmlQuantMatrix): NBitsWeight {
  const nBlocks = (m.rows * m.cols) / 32;
  const packed = new Uint8Array(nBlocks * 32);
  const scales = new Float32Array(nBlocks);
  for (let blk = 0; blk < nBlocks; blk++) {
    const src = blk * 34;
    scales[blk] = f16ToF32(m.data[src] | (m.data[src + 1] << 8));
    // int8 q as uint8 q + 128: flipping the top bit of the two's complement byte adds 128.
    for (let j = 0; j < 32; j++) packed[blk * 32 + j] = m.data[src + 2 + j] ^ 0x80;
  }
  return { bits: 8, blockSize: 32, packed, scales };
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes at `at`. */
function scaleMinK4(j: number, b: Uint8Array, at: number): [number, number] {
  if (j < 4) return [b[at + j] & 63, b[at + j + 4] & 63];
  return [(b[at + j + 4] & 0x0f) | ((b[at + j - 4] >> 6) << 4), (b[at + j + 4] >> 4) | ((b[at + j] >> 6) << 4)];
}

/**
 * Q4_K super-block (144 bytes, 256 values): f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) for 8
 * sub-blocks of 32, then 128 bytes where byte 32c + l holds sub-block 2c's value l (low nibble) and
 * sub-block 2c + 1's value l (high nibble).
 */
function q4_kToNBits(m: GgmlQuantMatrix): NBitsWeight {
  const blocksPerRow = m.cols / 32;
  const superPerRow = m.cols / 256;
  const packed = new Uint8Array(m.rows * blocksPerRow * 16);
  const scales = new Float32Array(m.rows * blocksPerRow);
  const mins = new Float32Array(blocksPerRow * m.rows);
  const q = new Uint8Array(32);
  for (let r = 0; r < m.rows; r++) {
    for (let s = 0; s < superPerRow; s++) {
      const src = (r * superPerRow + s) * 144;
      const d = f16ToF32(m.data[src] | (m.data[src + 1] << 8));
      const dmin = f16ToF32(m.data[src + 2] | (m.data[src + 3] << 8));
      for (let sub = 0; sub < 8; sub++) {
        const [sc, mn] = scaleMinK4(sub, m.data, src + 4);
        const qs = src + 16 + 32 * (sub >> 1);
        const high = sub & 1;
        for (let l = 0; l < 32; l++) q[l] = high ? m.data[qs + l] >> 4 : m.data[qs + l] & 0x0f;
        const blk = r * blocksPerRow + s * 8 + sub;
        packNibbles(q, packed, blk * 16);
        scales[blk] = d * sc;
        mins[(s * 8 + sub) * m.rows + r] = dmin * mn;
      }
    }
  }
  // Zero point 0 for every block: ceil(blocks / 2) bytes per row, all zero.
  const zeroPoints = new Uint8Array(m.rows * Math.ceil(blocksPerRow / 2));
  return { bits: 4, blockSize: 32, packed, scales, zeroPoints, mins };
}

/**
 * Q6_K super-block (210 bytes, 256 values): 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits),
 * 16 int8 scales (one per 16 values), f16 d. Value = d·scale·(q - 32), q = ql | qh << 4 in 0..63.
 */
function q6_kToNBits(m: GgmlQuantMatrix): NBitsWeight {
  const superPerRow = m.cols / 256;
  const nSuper = m.rows * superPerRow;
  const packed = new Uint8Array(m.rows * m.cols);
  const scales = new Float32Array((m.rows * m.cols) / 16);
  for (let b = 0; b < nSuper; b++) {
    const src = b * 210;
    const d = f16ToF32(m.data[src + 208] | (m.data[src + 209] << 8));
    const out = b * 256;
    for (let half = 0; half < 2; half++) {
      const ql = src + 64 * half;
      const qh = src + 128 + 32 * half;
      const y = out + 128 * half;
      for (let l = 0; l < 32; l++) {
        const h = m.data[qh + l];
        packed[y + l] = (m.data[ql + l] & 0x0f) | ((h & 3) << 4);
        packed[y + l + 32] = (m.data[ql + l + 32] & 0x0f) | (((h >> 2) & 3) << 4);
        packed[y + l + 64] = (m.data[ql + l] >> 4) | (((h >> 4) & 3) << 4);
        packed[y + l + 96] = (m.data[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4);
      }
      // Scale i of the half covers its values 16i..16i+15 (ggml: sc[is + 2k] for l < 16, sc[is + 2k + 1] after).
      for (let i = 0; i < 8; i++) {
        const sc = (m.data[src + 192 + 8 * half + i] << 24) >> 24;
        scales[(out + 128 * half) / 16 + i] = d * sc;
      }
    }
  }
  return { bits: 8, blockSize: 16, packed, scales, zeroPoints: new Uint8Array(scales.length).fill(32) };
}

/** 32 four-bit values into 16 bytes, MatMulNBits order: byte i = value 2i | value 2i + 1 << 4. */
function packNibbles(q: Uint8Array, out: Uint8Array, at: number): void {
  for (let i = 0; i < 16; i++) out[at + i] = q[2 * i] | (q[2 * i + 1] << 4);
}

/** y = x Wᵀ for a ggml-quantized W [out, in], x [..., in]. */
export function quantizedLinear(
  g: GraphBuilder,
  x: string,
  m: GgmlQuantMatrix,
  name: string,
  accuracyLevel: number,
  output?: string,
): string {
  const w = toNBits(m);
  const blocks = m.cols / w.blockSize;
  const inputs = [
    x,
    g.initializer(`${name}.qweight`, w.packed, [m.rows, blocks, (w.blockSize * w.bits) / 8]),
    g.initializer(`${name}.scales`, w.scales, [w.scales.length]),
  ];
  if (w.zeroPoints) inputs.push(g.initializer(`${name}.zero_points`, w.zeroPoints, [w.zeroPoints.length]));
  const attrs = {
    K: attr.int(m.cols),
    N: attr.int(m.rows),
    bits: attr.int(w.bits),
    block_size: attr.int(w.blockSize),
    accuracy_level: attr.int(w.bits === 8 ? 4 : accuracyLevel),
  };
  const direct = w.mins === undefined ? output : undefined;
  const [y] = g.node('MatMulNBits', inputs, { attrs, domain: 'com.microsoft', outputs: direct === undefined ? undefined : [direct] });
  if (w.mins === undefined) return y;
  // Q4_K's mins: y -= (sums of x over each 32-block) · mins, a [.., K/32] × [K/32, N] MatMul.
  const sums = g.op('ReduceSum', [g.op('Reshape', [x, g.constI64([0, 0, m.cols / 32, 32])]), g.constI64([-1])], { keepdims: attr.int(0) });
  const mins = g.initializer(`${name}.block_mins`, w.mins, [m.cols / 32, m.rows]);
  return g.op('Sub', [y, g.op('MatMul', [sums, mins])], undefined, output);
}
