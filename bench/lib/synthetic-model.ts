/**
 * Seeded random-weight checkpoints of real models' exact shapes, for benchmarking only: SmolLM2-135M
 * (llama), Qwen2.5-0.5B (qwen2: q/k/v biases, 152k vocabulary, tied) and Llama-3.2-1B (llama with
 * llama3 RoPE scaling, 128k vocabulary, tied). Throughput depends on the shapes, not on the values,
 * so random weights make a faithful stand-in for the real models without downloading them.
 */
import type { ImportedCheckpoint, LlamaConfig, LlamaLayer, Matrix, SentencePieceVocab } from '../../src/model/types.js';
import { mulberry32 } from './rng.js';

const COMMON = {
  rope_style: 'interleaved',
  rope_scaling: null,
  attention_bias: false,
  qk_norm: false,
  bos_token_id: 1,
  eos_token_id: 2,
} as const;

export const SMOL_CONFIG: LlamaConfig = {
  ...COMMON,
  architecture: 'llama',
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  head_dim: 64,
  vocab_size: 49152,
  max_position_embeddings: 2048,
  rope_theta: 100000,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

/** Qwen/Qwen2.5-0.5B's config.json. */
export const QWEN25_05B_CONFIG: LlamaConfig = {
  ...COMMON,
  architecture: 'qwen2',
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  head_dim: 64,
  vocab_size: 151936,
  max_position_embeddings: 32768,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  attention_bias: true,
  tie_word_embeddings: true,
};

/** meta-llama/Llama-3.2-1B's config.json. */
export const LLAMA32_1B_CONFIG: LlamaConfig = {
  ...COMMON,
  architecture: 'llama',
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 16,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 64,
  vocab_size: 128256,
  max_position_embeddings: 131072,
  rope_theta: 500000,
  rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

export const SHAPES = {
  'smollm2-135m': { label: 'SmolLM2-135M-shape', config: SMOL_CONFIG },
  'qwen2.5-0.5b': { label: 'Qwen2.5-0.5B-shape', config: QWEN25_05B_CONFIG },
  'llama3.2-1b': { label: 'Llama-3.2-1B-shape', config: LLAMA32_1B_CONFIG },
} as const;
export type ShapeName = keyof typeof SHAPES;

const WEIGHT_STD = 0.02;

export function syntheticCheckpoint(shape: ShapeName, seed: number): ImportedCheckpoint {
  const c = SHAPES[shape].config;
  const normal = normalSampler(seed);
  const randomMatrix = (rows: number, cols: number): Matrix => ({ kind: 'f32', rows, cols, data: normal(rows * cols) });
  const ones = (n = c.hidden_size) => new Float32Array(n).fill(1);
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;

  const layers: LlamaLayer[] = [];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const layer: LlamaLayer = {
      attnNorm: ones(),
      wq: randomMatrix(qDim, c.hidden_size),
      wk: randomMatrix(kvDim, c.hidden_size),
      wv: randomMatrix(kvDim, c.hidden_size),
      wo: randomMatrix(c.hidden_size, qDim),
      ffnNorm: ones(),
      gate: randomMatrix(c.intermediate_size, c.hidden_size),
      down: randomMatrix(c.hidden_size, c.intermediate_size),
      up: randomMatrix(c.intermediate_size, c.hidden_size),
    };
    if (c.attention_bias) Object.assign(layer, { qBias: normal(qDim), kBias: normal(kvDim), vBias: normal(kvDim) });
    if (c.qk_norm) Object.assign(layer, { qNorm: ones(c.head_dim), kNorm: ones(c.head_dim) });
    layers.push(layer);
  }
  return {
    weights: { config: c, tokEmbeddings: normal(c.vocab_size * c.hidden_size), layers, finalNorm: ones(), output: null },
    vocab: syntheticVocab(c.vocab_size),
    source: { format: 'gguf', path: `synthetic:${shape}-shape:seed=${seed}`, sha256: '' },
  };
}

/** The SmolLM2-135M shape (the default benchmark model). */
export function smolCheckpoint(seed: number): ImportedCheckpoint {
  return syntheticCheckpoint('smollm2-135m', seed);
}

/** Box-Muller over a seeded uniform source: N(0, WEIGHT_STD^2) values. */
function normalSampler(seed: number): (n: number) => Float32Array {
  const uniform = mulberry32(seed);
  return (n) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u1 = 1 - uniform(); // (0, 1]: log(0) would be -Infinity
      const r = Math.sqrt(-2 * Math.log(u1)) * WEIGHT_STD;
      const theta = 2 * Math.PI * uniform();
      out[i] = r * Math.cos(theta);
      if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  };
}

/**
 * A SentencePiece-style vocab llama.cpp's SPM tokenizer accepts: <unk>, <s>, </s>, the 256 byte
 * tokens (byte fallback needs all of them, and llama.cpp looks up <0x0A> as its newline token),
 * then unique letter pieces with and without the U+2581 word prefix, scored in descending order.
 */
export function syntheticVocab(size: number): SentencePieceVocab {
  const tokens = ['<unk>', '<s>', '</s>'];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6);
  }
  for (const piece of letterPieces()) {
    if (tokens.length >= size) break;
    tokens.push(piece);
    types.push(1);
  }
  if (tokens.length < size) throw new Error(`syntheticVocab: only ${tokens.length} pieces for ${size}`);
  const scores = tokens.map((_, i) => (types[i] === 1 ? -i : 0));
  return { tokens, scores, types, bos: 1, eos: 2, unk: 0, addSpacePrefix: true };
}

/** "▁a", "a", "▁b", "b", ..., "▁aa", "aa", ...: shortest first, so short pieces score highest. */
function* letterPieces(): Generator<string> {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  let words = [''];
  for (;;) {
    words = words.flatMap((w) => [...letters].map((l) => w + l));
    for (const w of words) {
      yield `\u2581${w}`;
      yield w;
    }
  }
}
