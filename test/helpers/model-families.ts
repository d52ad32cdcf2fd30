/**
 * Tiny random-weight models of each family's exact architecture, paired with the family's real
 * tokenizer from ../shared/tokenizers. The weights are in the importer's internal layout
 * (src/model/types.ts: q/k rows in interleaved RoPE order); the HF folder and GGUF writers in
 * test/helpers turn them into each format's own layout.
 *
 * Deterministic (a seeded generator), so a test that writes the same family twice gets the same bytes.
 */
import path from 'node:path';
import { mulberry32 } from '../../bench/lib/rng.js';
import type { LlamaConfig, LlamaLayer, LlamaWeights, Matrix } from '../../src/model/types.js';
import { SHARED } from './paths.js';

export type Family = 'llama3' | 'qwen2' | 'qwen3' | 'llama2';

export interface FamilySpec {
  family: Family;
  /** The folder of ../shared/tokenizers holding the family's real tokenizer files. */
  tokenizerDir: string;
  config: LlamaConfig;
  /** Whether the LM head is tied to the embeddings (Qwen2 small models tie; Llama 3 8B does not). */
  tied: boolean;
}

const TOKENIZERS = path.join(SHARED, 'tokenizers');

/** Small enough to import in a second or two, big enough to have GQA (4 heads over 2 KV heads). */
const GEOMETRY = {
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
} as const;

export const FAMILIES: Record<Family, FamilySpec> = {
  // Llama 3.1+: byte-level BPE (128,256 ids), llama3 RoPE scaling, untied head.
  llama3: {
    family: 'llama3',
    tokenizerDir: path.join(TOKENIZERS, 'llama3'),
    tied: false,
    config: {
      architecture: 'llama',
      ...GEOMETRY,
      vocab_size: 128256,
      max_position_embeddings: 2048,
      rope_theta: 500000,
      rope_style: 'interleaved',
      rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 256 },
      rms_norm_eps: 1e-5,
      attention_bias: false,
      qk_norm: false,
      tie_word_embeddings: false,
      bos_token_id: 128000,
      eos_token_id: 128009,
    },
  },
  // Qwen2/2.5: QKV biases, tied embeddings, the Qwen byte-level BPE (151,936 rows, padded past the vocabulary).
  qwen2: {
    family: 'qwen2',
    tokenizerDir: path.join(TOKENIZERS, 'qwen3'),
    tied: true,
    config: {
      architecture: 'qwen2',
      ...GEOMETRY,
      vocab_size: 151936,
      max_position_embeddings: 2048,
      rope_theta: 1000000,
      rope_style: 'interleaved',
      rope_scaling: null,
      rms_norm_eps: 1e-6,
      attention_bias: true,
      qk_norm: false,
      tie_word_embeddings: true,
      bos_token_id: 151643,
      eos_token_id: 151645,
    },
  },
  // Qwen3: per-head q/k RMSNorm, no biases, head_dim not hidden/heads.
  qwen3: {
    family: 'qwen3',
    tokenizerDir: path.join(TOKENIZERS, 'qwen3'),
    tied: true,
    config: {
      architecture: 'qwen3',
      ...GEOMETRY,
      head_dim: 32,
      vocab_size: 151936,
      max_position_embeddings: 2048,
      rope_theta: 1000000,
      rope_style: 'interleaved',
      rope_scaling: null,
      rms_norm_eps: 1e-6,
      attention_bias: false,
      qk_norm: true,
      tie_word_embeddings: true,
      bos_token_id: 151643,
      eos_token_id: 151645,
    },
  },
  // Llama 2 / Mistral: SentencePiece (32,000 pieces), plain RoPE.
  llama2: {
    family: 'llama2',
    tokenizerDir: path.join(TOKENIZERS, 'llama2'),
    tied: false,
    config: {
      architecture: 'llama',
      ...GEOMETRY,
      vocab_size: 32000,
      max_position_embeddings: 2048,
      rope_theta: 10000,
      rope_style: 'interleaved',
      rope_scaling: null,
      rms_norm_eps: 1e-5,
      attention_bias: false,
      qk_norm: false,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
    },
  },
};

/**
 * Random weights of the family's architecture. Scales are those of a trained model's order of
 * magnitude (std 0.02 matrices, norms near 1) times `scale`, so logits are spread enough that greedy
 * decoding is not a sequence of near-ties between engines.
 */
export function randomFamilyWeights(
  family: Family,
  seed = 1,
  scale = 4,
  vocabSize?: number,
  /** Other sizes (K-quants need rows of 256 values); the family's features stay. */
  geometry: { [K in keyof typeof GEOMETRY]?: number } = {},
): LlamaWeights {
  const spec = FAMILIES[family];
  // A smaller vocabulary (the graph alone, no tokenizer) keeps a unit test quick.
  const c = { ...spec.config, ...geometry, vocab_size: vocabSize ?? spec.config.vocab_size };
  const rand = mulberry32(seed * 7919 + family.length);
  const normal = (): number => {
    const u = Math.max(rand(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
  const vec = (n: number, std: number, mean = 0) => Float32Array.from({ length: n }, () => mean + std * normal());
  const mat = (rows: number, cols: number): Matrix => ({ kind: 'f32', rows, cols, data: vec(rows * cols, 0.02 * scale) });
  const d = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  const ff = c.intermediate_size;
  const layers: LlamaLayer[] = Array.from({ length: c.num_hidden_layers }, () => {
    const layer: LlamaLayer = {
      attnNorm: vec(d, 0.1, 1),
      wq: mat(qDim, d),
      wk: mat(kvDim, d),
      wv: mat(kvDim, d),
      wo: mat(d, qDim),
      ffnNorm: vec(d, 0.1, 1),
      gate: mat(ff, d),
      down: mat(d, ff),
      up: mat(ff, d),
    };
    if (c.attention_bias) {
      layer.qBias = vec(qDim, 0.1);
      layer.kBias = vec(kvDim, 0.1);
      layer.vBias = vec(kvDim, 0.1);
    }
    if (c.qk_norm) {
      layer.qNorm = vec(c.head_dim, 0.1, 1);
      layer.kNorm = vec(c.head_dim, 0.1, 1);
    }
    return layer;
  });
  return {
    config: { ...c },
    tokEmbeddings: vec(c.vocab_size * d, 0.02 * scale * 10),
    layers,
    finalNorm: vec(d, 0.1, 1),
    output: spec.tied ? null : mat(c.vocab_size, d),
  };
}
