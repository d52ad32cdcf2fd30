/**
 * IEEE 754 binary16 (f16) and bfloat16 <-> binary32 conversion, bit-exact with ggml
 * (GGML_FP32_TO_FP16 rounds to nearest, ties to even; f16 -> f32 is exact).
 * Node 20 has no Float16Array / Math.f16round, so this works on the raw bits.
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Decodes f16 bits (0..0xffff) to the exactly equal number. */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (0x400 + mantissa) * 2 ** (exponent - 25);
}

/**
 * Encodes a number as f16 bits. The value is first rounded to f32 (as when C code passes a float),
 * then to f16 with round-to-nearest-even, so both overflow to infinity and gradual underflow to
 * subnormals/zero match the hardware conversion. NaN stays NaN (quiet, payload top bits kept).
 */
export function f32ToF16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToF16(scratchU32[0]);
}

/**
 * `f32ToF16` on an f32's raw bits (0..0xffffffff): array encoders read the bits through a Uint32Array
 * view and skip the per-element round trip through the scratch f32.
 */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const f32Exponent = (x >>> 23) & 0xff;
  const f32Mantissa = x & 0x7fffff;

  if (f32Exponent === 0xff) {
    return f32Mantissa === 0 ? sign | 0x7c00 : sign | 0x7e00 | (f32Mantissa >>> 13);
  }
  // f32 subnormals are below 2^-126, far under half the smallest f16 subnormal (2^-25).
  if (f32Exponent === 0) return sign;

  const halfExponent = f32Exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;

  // Shift the 24-bit significand down to the f16 unit: 13 bits for normals, more for subnormals.
  const significand = 0x800000 | f32Mantissa;
  const shift = halfExponent >= 1 ? 13 : 14 - halfExponent;
  if (shift > 25) return sign; // below half of 2^-24: rounds to zero
  let q = significand >>> shift;
  const remainder = significand & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (remainder > halfway || (remainder === halfway && (q & 1) === 1)) q += 1;

  if (halfExponent < 1) return sign | q; // subnormal; q === 0x400 is correctly the smallest normal
  // q carries the implicit bit (0x400..0x800); adding it to (exp-1)<<10 lets a rounding carry
  // bump the exponent, and a carry out of exponent 30 lands exactly on infinity (0x7c00).
  return sign | (((halfExponent - 1) << 10) + q);
}

/** All 65536 f16 values decoded once: dequantizing large tensors becomes a table lookup. */
let f16Table: Float32Array | undefined;
export function f16LookupTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

/** bfloat16 is the top half of an f32, so decoding is exact by construction. */
export function bf16ToF32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** Encodes to bfloat16 with round-to-nearest-even (ggml_compute_fp32_to_bf16). */
export function f32ToBf16(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff; // force quiet NaN
  return ((x + (0x7fff + ((x >>> 16) & 1))) >>> 16) & 0xffff;
}
