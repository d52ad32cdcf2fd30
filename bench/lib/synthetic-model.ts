/**
 * A SmolLM2-135M-shaped Llama checkpoint with seeded random weights, for benchmarking only.
 * Throughput depends on the shapes, not on the values, so random weights make a faithful
 * stand-in for the real model without downloading it.
 */
import type { ImportedCheckpoint, LlamaConfig, LlamaLayer, Matrix, SentencePieceVocab } from '../../src/model/types.js';
import { mulberry32 } from './rng.js';

export const SMOL_CONFIG: LlamaConfig = {
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
  rope_style: 'interleaved',
  rope_scaling: null,
  attention_bias: false,
  qk_norm: false,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
  bos_token_id: 1,
  eos_token_id: 2,
};

const WEIGHT_STD = 0.02;

/** `config`: another shape on the same recipe (bench/structured-output.ts: the 152k vocabulary). */
export function smolCheckpoint(seed: number, config: LlamaConfig = SMOL_CONFIG): ImportedCheckpoint {
  const c = config;
  const normal = normalSampler(seed);
  const randomMatrix = (rows: number, cols: number): Matrix => ({ kind: 'f32', rows, cols, data: normal(rows * cols) });
  const ones = () => new Float32Array(c.hidden_size).fill(1);
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;

  const layers: LlamaLayer[] = [];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    layers.push({
      attnNorm: ones(),
      wq: randomMatrix(qDim, c.hidden_size),
      wk: randomMatrix(kvDim, c.hidden_size),
      wv: randomMatrix(kvDim, c.hidden_size),
      wo: randomMatrix(c.hidden_size, qDim),
      ffnNorm: ones(),
      gate: randomMatrix(c.intermediate_size, c.hidden_size),
      down: randomMatrix(c.hidden_size, c.intermediate_size),
      up: randomMatrix(c.intermediate_size, c.hidden_size),
    });
  }
  return {
    weights: { config: c, tokEmbeddings: normal(c.vocab_size * c.hidden_size), layers, finalNorm: ones(), output: null },
    vocab: syntheticVocab(c.vocab_size),
    source: { format: 'gguf', path: `synthetic:smollm2-135m-shape:seed=${seed}`, sha256: '' },
  };
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
