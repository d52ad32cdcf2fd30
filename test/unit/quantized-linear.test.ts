import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../../bench/lib/rng.js';
import { dequantize, GgmlType } from '../../src/formats/ggml-quants.js';
import { f32ToF16 } from '../../src/formats/half.js';
import { DataType, GraphBuilder } from '../../src/formats/onnx-builder.js';
import { GGML_TYPE_OF } from '../../src/model/gguf-architectures.js';
import { GGML_BLOCKS, quantizedLinear, type GgmlQuantKind } from '../../src/model/quantized-linear.js';
import { quantizeQ4_K, quantizeQ6_K } from '../helpers/k-quants.js';

/**
 * ggml-quantized matrices served through MatMulNBits compute x·Wᵀ with the W the file holds: the
 * reference is the ggml codec's dequantization (src/formats/ggml-quants.ts, checked bit-exact
 * against ggml's C code elsewhere) followed by an f64 matmul here. Blocks are random bytes with
 * sane f16 scales, so every bit pattern of the scale/min/nibble fields is exercised.
 */

/** Random blocks whose f16 fields (d, dmin) are small positive numbers, the rest random bytes. */
function randomBlocks(kind: GgmlQuantKind, rows: number, cols: number, seed: number): Uint8Array {
  const { elements, bytes } = GGML_BLOCKS[kind];
  const n = (rows * cols) / elements;
  const rand = mulberry32(seed);
  const data = Uint8Array.from({ length: n * bytes }, () => Math.floor(rand() * 256));
  const setF16 = (at: number, v: number) => {
    const h = f32ToF16(v);
    data[at] = h & 0xff;
    data[at + 1] = h >> 8;
  };
  for (let b = 0; b < n; b++) {
    const at = b * bytes;
    if (kind === 'q4_0' || kind === 'q8_0') setF16(at, 0.001 + 0.01 * rand());
    if (kind === 'q4_k') {
      setF16(at, 0.0005 + 0.002 * rand());
      setF16(at + 2, 0.0005 + 0.002 * rand());
    }
    if (kind === 'q6_k') setF16(at + 208, 0.0005 + 0.002 * rand());
  }
  return data;
}

async function runLinear(kind: GgmlQuantKind, rows: number, cols: number, data: Uint8Array, x: Float32Array, seqLen: number, accuracyLevel: number) {
  const g = new GraphBuilder('linear');
  g.input('x', DataType.FLOAT, [1, seqLen, cols]);
  quantizedLinear(g, 'x', { kind, rows, cols, data }, 'w', accuracyLevel, 'y');
  g.output('y', DataType.FLOAT, [1, seqLen, rows]);
  const model = g.serialize({ irVersion: 8, opsets: [{ domain: '', version: 17 }, { domain: 'com.microsoft', version: 1 }] });
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  try {
    const out = await session.run({ x: new ort.Tensor('float32', x, [1, seqLen, cols]) });
    return out.y.data as Float32Array;
  } finally {
    await session.release();
  }
}

function reference(w: Float32Array, rows: number, cols: number, x: Float32Array, seqLen: number): Float64Array {
  const y = new Float64Array(seqLen * rows);
  for (let s = 0; s < seqLen; s++) {
    for (let r = 0; r < rows; r++) {
      let acc = 0;
      for (let c = 0; c < cols; c++) acc += x[s * cols + c] * w[r * cols + c];
      y[s * rows + r] = acc;
    }
  }
  return y;
}

/** Largest |ours - ref| over the largest |ref|: int8 activations (accuracy_level 4) cost ~1e-3. */
function relativeError(ours: Float32Array, ref: Float64Array): number {
  let diff = 0;
  let scale = 0;
  ref.forEach((v, i) => {
    diff = Math.max(diff, Math.abs(ours[i] - v));
    scale = Math.max(scale, Math.abs(v));
  });
  return diff / scale;
}

describe('ggml-quantized linear layers through MatMulNBits', () => {
  const rows = 24;
  const cols = 512;
  const seqLen = 3;
  const x = Float32Array.from({ length: seqLen * cols }, (_, i) => Math.sin(i * 0.37) + 0.3 * Math.cos(i * 1.7));

  for (const kind of ['q4_0', 'q8_0', 'q4_k', 'q6_k'] as const) {
    it(`${kind}: equals the dequantized weights' matmul`, async () => {
      const data = randomBlocks(kind, rows, cols, 7 + kind.length);
      const w = dequantize(GGML_TYPE_OF[kind], data, rows * cols, kind);
      const ref = reference(w, rows, cols, x, seqLen);
      // 4-bit with fp32 activations (accuracy_level 1) is the exact path; 8-bit always runs level 4.
      const exact = await runLinear(kind, rows, cols, data, x, seqLen, 1);
      expect(relativeError(exact, ref)).toBeLessThan(kind === 'q8_0' || kind === 'q6_k' ? 1e-2 : 1e-5);
      const fast = await runLinear(kind, rows, cols, data, x, seqLen, 4);
      expect(relativeError(fast, ref)).toBeLessThan(1e-2);
    });
  }

  it('refuses a matrix whose byte count does not match its shape', async () => {
    await expect(runLinear('q4_k', rows, cols, new Uint8Array(100), x, seqLen, 4)).rejects.toThrow(/bytes of q4_k, expected/);
  });
});

describe('the test helper K-quantizers', () => {
  const x = Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i * 0.61) * (1 + (i % 7)) * 0.01);
  for (const [name, type, quantize, bound] of [
    // Half a step of 15 over a range up to 2·max|x| (Q4_K), of 31 over max|x| on each side (Q6_K), plus the 6/8-bit scale rounding.
    ['Q4_K', GgmlType.Q4_K, quantizeQ4_K, 1.1 / 15],
    ['Q6_K', GgmlType.Q6_K, quantizeQ6_K, 1.1 / 62],
  ] as const) {
    it(`${name} blocks dequantize (by the ggml codec) to within half a step of the input`, () => {
      const back = dequantize(type, quantize(x), x.length, name);
      let err = 0;
      let range = 0;
      x.forEach((v, i) => {
        err = Math.max(err, Math.abs(back[i] - v));
        range = Math.max(range, Math.abs(v));
      });
      expect(err / range).toBeLessThan(bound);
    });
  }
});
