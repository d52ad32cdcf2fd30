import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ATTENTION_MASK,
  buildBodyModel,
  buildHeadModel,
  HIDDEN_STATES,
  INPUT_IDS,
  LOGITS,
  pastKeyName,
  pastValueName,
  POSITION_IDS,
} from '../../src/model/onnx-graph.js';
import type { LlamaWeights, RopeScaling } from '../../src/model/types.js';
import { FAMILIES, randomFamilyWeights } from '../helpers/model-families.js';

/**
 * The three RoPE scaling forms the graph computes, checked through the real graph against what each
 * must equal by definition (the llama3 form itself is checked against a PyTorch re-derivation of
 * transformers in test/integration/model-families-hf.test.ts):
 * - 'factors' with the per-frequency factors llama.cpp's convert_hf_to_gguf.py writes to
 *   `rope_freqs.weight` for a llama3 config gives the llama3 model's logits;
 * - 'linear' with factor 4 at position 4p gives the unscaled model at position p.
 */
const LLAMA3 = FAMILIES.llama3.config.rope_scaling as Extract<RopeScaling, { rope_type: 'llama3' }>;
const VOCAB = 512;
const TOKENS = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % VOCAB);
const base = randomFamilyWeights('llama3', 3, 4, VOCAB);
const withScaling = (rope_scaling: RopeScaling | null): LlamaWeights => ({ ...base, config: { ...base.config, rope_scaling } });

/** llama.cpp convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors): one factor per frequency, float64. */
function ggufLlama3Factors(): number[] {
  const { head_dim: hd, rope_theta: theta } = base.config;
  const { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } = LLAMA3;
  return Array.from({ length: hd / 2 }, (_, j) => {
    const wavelen = (2 * Math.PI) / (1 / theta ** ((2 * j) / hd));
    if (wavelen < old / high) return 1;
    if (wavelen > old / low) return factor;
    const smooth = (old / wavelen - low) / (high - low);
    return 1 / ((1 - smooth) / factor + smooth);
  });
}

const sessions: ort.InferenceSession[] = [];
async function logitsAt(w: LlamaWeights, positions: number[]): Promise<Float32Array> {
  const opts = { intraOpNumThreads: 1 };
  const body = await ort.InferenceSession.create(buildBodyModel(w, { attention: 'reference' }), opts);
  const head = await ort.InferenceSession.create(buildHeadModel(w), opts);
  sessions.push(body, head);
  const { num_key_value_heads: kv, head_dim: hd, num_hidden_layers: n } = w.config;
  const i64 = (v: number[]) => new ort.Tensor('int64', BigInt64Array.from(v, BigInt), [1, v.length]);
  const feeds: Record<string, ort.Tensor> = {
    [INPUT_IDS]: i64(TOKENS),
    [POSITION_IDS]: i64(positions),
    [ATTENTION_MASK]: i64(TOKENS.map(() => 1)),
  };
  for (let i = 0; i < n; i++) {
    feeds[pastKeyName(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
    feeds[pastValueName(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
  }
  const hidden = (await body.run(feeds))[HIDDEN_STATES];
  return (await head.run({ [HIDDEN_STATES]: hidden }))[LOGITS].data as Float32Array;
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const sequential = TOKENS.map((_, i) => i);
let plain: Float32Array;

beforeAll(async () => {
  plain = await logitsAt(withScaling(null), sequential);
});
afterAll(async () => {
  for (const s of sessions) await s.release();
});

describe('RoPE scaling in the graph', () => {
  it("GGUF's rope_freqs factors reproduce llama3 scaling", async () => {
    const llama3 = await logitsAt(withScaling(LLAMA3), sequential);
    const factors = await logitsAt(withScaling({ rope_type: 'factors', factors: ggufLlama3Factors() }), sequential);
    // The scaling matters here (a low-frequency pair is divided by 32 from the first position on)...
    expect(maxAbsDiff(llama3, plain)).toBeGreaterThan(1e-2);
    // ...and the factors form is the same model, up to float32 rounding of the frequencies.
    expect(maxAbsDiff(factors, llama3)).toBeLessThan(1e-5);
  });

  it('linear scaling by 4 at position 4p is the unscaled model at position p', async () => {
    const linear = await logitsAt(withScaling({ rope_type: 'linear', factor: 4 }), sequential.map((p) => 4 * p));
    const sameSpot = await logitsAt(withScaling({ rope_type: 'linear', factor: 4 }), sequential);
    expect(maxAbsDiff(sameSpot, plain)).toBeGreaterThan(1e-2);
    expect(maxAbsDiff(linear, plain)).toBeLessThan(1e-5);
  });

  it('refuses a factors list that is not one per rotation pair', () => {
    expect(() => buildBodyModel(withScaling({ rope_type: 'factors', factors: [1, 2, 3] }))).toThrow(/expected 8 \(head_dim \/ 2\), got 3/);
  });
});
