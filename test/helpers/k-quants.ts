/**
 * Simple Q4_K and Q6_K quantizers, to write K-quant GGUF test models (what a `Q4_K_M` download
 * holds) without llama.cpp's quantize tool. They are not ggml's error-minimising search
 * (make_qkx2_quants), only a straightforward min/max fit, but they write valid blocks in ggml's exact
 * layout: the importer and llama.cpp then read the same bytes, which is what parity tests need.
 */
import { f16ToF32, f32ToF16 } from '../../src/formats/half.js';

const QK_K = 256;

function putF16(out: Uint8Array, at: number, v: number): number {
  const h = f32ToF16(v);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
  return f16ToF32(h);
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/** Q4_K: per 256 values f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) per 32, 128 bytes of nibbles. */
export function quantizeQ4_K(x: Float32Array): Uint8Array {
  if (x.length % QK_K !== 0) throw new Error(`Q4_K needs a multiple of ${QK_K} values`);
  const out = new Uint8Array((x.length / QK_K) * 144);
  const scale = new Float64Array(8);
  const min = new Float64Array(8);
  for (let b = 0; b < x.length / QK_K; b++) {
    const v = x.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * 144;
    for (let j = 0; j < 8; j++) {
      let lo = 0;
      let hi = 0;
      for (let l = 0; l < 32; l++) {
        lo = Math.min(lo, v[32 * j + l]);
        hi = Math.max(hi, v[32 * j + l]);
      }
      scale[j] = (hi - lo) / 15;
      min[j] = -lo;
    }
    const d = putF16(out, at, Math.max(...scale) / 63);
    const dmin = putF16(out, at + 2, Math.max(...min) / 63);
    // Rounded up, so the 16 levels still span the sub-block after the 6-bit rounding (no clipping at the top).
    const sc = Array.from(scale, (s) => (d > 0 ? clamp(Math.ceil(s / d), 0, 63) : 0));
    const mn = Array.from(min, (m) => (dmin > 0 ? clamp(Math.ceil(m / dmin), 0, 63) : 0));
    // The inverse of ggml's get_scale_min_k4.
    const s = at + 4;
    for (let j = 0; j < 4; j++) {
      out[s + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
      out[s + j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
      out[s + j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    for (let j = 0; j < 8; j++) {
      const step = d * sc[j];
      const offset = dmin * mn[j];
      const qs = at + 16 + 32 * (j >> 1);
      for (let l = 0; l < 32; l++) {
        const q = step > 0 ? clamp(Math.round((v[32 * j + l] + offset) / step), 0, 15) : 0;
        out[qs + l] |= j & 1 ? q << 4 : q;
      }
    }
  }
  return out;
}

/** Q6_K: per 256 values 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, f16 d. */
export function quantizeQ6_K(x: Float32Array): Uint8Array {
  if (x.length % QK_K !== 0) throw new Error(`Q6_K needs a multiple of ${QK_K} values`);
  const out = new Uint8Array((x.length / QK_K) * 210);
  const scale = new Float64Array(16);
  for (let b = 0; b < x.length / QK_K; b++) {
    const v = x.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * 210;
    for (let i = 0; i < 16; i++) {
      let amax = 0;
      for (let l = 0; l < 16; l++) amax = Math.max(amax, Math.abs(v[16 * i + l]));
      scale[i] = amax / 31;
    }
    const d = putF16(out, at + 208, Math.max(...scale) / 127);
    const sc = Array.from(scale, (s) => (d > 0 ? clamp(Math.round(s / d), -128, 127) : 0));
    const q = new Uint8Array(QK_K);
    for (let i = 0; i < QK_K; i++) {
      const step = d * sc[i >> 4];
      q[i] = step > 0 ? clamp(Math.round(v[i] / step) + 32, 0, 63) : 32;
    }
    for (let half = 0; half < 2; half++) {
      const ql = at + 64 * half;
      const qh = at + 128 + 32 * half;
      const y = 128 * half;
      for (let l = 0; l < 32; l++) {
        const [q1, q2, q3, q4] = [q[y + l], q[y + l + 32], q[y + l + 64], q[y + l + 96]];
        out[ql + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
        out[ql + l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
        out[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
      for (let i = 0; i < 8; i++) out[at + 192 + 8 * half + i] = sc[8 * half + i] & 0xff;
    }
  }
  return out;
}
