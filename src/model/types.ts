/**
 * In-memory form of a Llama-architecture checkpoint, whatever file it came from.
 * Matrices follow the PyTorch / ggml convention: `rows` = output features, `cols` = input features,
 * row-major, so `y = W x` and each row is contiguous (this is also how ggml quantizes: along a row).
 */
/** The decoder families the graph builds: Llama (and Mistral, SmolLM2), Qwen2/2.5, Qwen3. */
export type ModelArchitecture = 'llama' | 'qwen2' | 'qwen3';

/**
 * RoPE frequency scaling (Hugging Face `rope_scaling` / `rope_parameters`). 'llama3' is Llama 3.1+'s
 * piecewise rescaling of the inverse frequencies; 'linear' divides positions by `factor`;
 * 'factors' divides each inverse frequency i by factors[i] (head_dim / 2 of them), which is how a
 * GGUF file carries llama3 scaling (the `rope_freqs.weight` tensor) and how llama.cpp applies it.
 */
export type RopeScaling =
  | { rope_type: 'llama3'; factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number }
  | { rope_type: 'linear'; factor: number }
  | { rope_type: 'factors'; factors: number[] };

export interface LlamaConfig {
  architecture: ModelArchitecture;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
  /** Context length the model was trained for (llama2.c `seq_len`, GGUF `llama.context_length`). */
  max_position_embeddings: number;
  rope_theta: number;
  /** Rotation pairs: 'interleaved' rotates (x[2i], x[2i+1]) as llama2.c and GGUF llama do. */
  rope_style: 'interleaved';
  /** null: plain RoPE with rope_theta. */
  rope_scaling: RopeScaling | null;
  rms_norm_eps: number;
  /** q, k and v projections have biases (Qwen2/2.5): LlamaLayer.qBias/kBias/vBias. */
  attention_bias: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3): LlamaLayer.qNorm/kNorm, eps rms_norm_eps. */
  qk_norm: boolean;
  tie_word_embeddings: boolean;
  bos_token_id: number;
  eos_token_id: number;
}

/**
 * ggml block formats kept as they are in the file and served quantized by MatMulNBits
 * (src/model/quantized-linear.ts): Q4_0 (what --quantize q4_0 writes), Q8_0, and the K-quants a
 * Q4_K_M download holds (Q4_K, Q6_K).
 */
export type QuantKind = 'q4_0' | 'q8_0' | 'q4_k' | 'q6_k';

export type Matrix =
  | { kind: 'f32'; rows: number; cols: number; data: Float32Array }
  /** ggml blocks kept as-is: each row is its own run of blocks (ggml quantizes along a row). */
  | { kind: QuantKind; rows: number; cols: number; data: Uint8Array };

export interface LlamaLayer {
  attnNorm: Float32Array;
  wq: Matrix;
  wk: Matrix;
  wv: Matrix;
  wo: Matrix;
  /**
   * Present exactly when config.attention_bias: [heads·head_dim], [kv·head_dim], [kv·head_dim].
   * Rows of wq/wk and entries of qBias/kBias/qNorm/kNorm are in the interleaved RoPE order (see
   * rope_style), whatever order the source file used.
   */
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  /** Present exactly when config.qk_norm: [head_dim] each, shared by every head. */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  ffnNorm: Float32Array;
  /** SwiGLU: down(silu(gate x) * up x). llama2.c calls them w1 (gate), w2 (down), w3 (up). */
  gate: Matrix;
  down: Matrix;
  up: Matrix;
}

export interface LlamaWeights {
  config: LlamaConfig;
  /** [vocab, hidden], always f32 (it feeds a Gather). */
  tokEmbeddings: Float32Array;
  layers: LlamaLayer[];
  finalNorm: Float32Array;
  /** LM head [vocab, hidden]; null when tied to tokEmbeddings. */
  output: Matrix | null;
}

/** SentencePiece-style vocabulary, as both llama2.c tokenizer.bin and GGUF carry it. */
export interface SentencePieceVocab {
  /** Pieces with the space written as U+2581, byte tokens as `<0xNN>`. */
  tokens: string[];
  scores: number[];
  /** SentencePiece piece types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte. */
  types: number[];
  bos: number;
  eos: number;
  unk: number;
  /** Whether the tokenizer prepends a space to the text (llama2.c and Llama SentencePiece: yes). */
  addSpacePrefix: boolean;
  /** Chat template from the source, when it has one (GGUF `tokenizer.chat_template`). */
  chatTemplate?: string;
}

/** Byte-level BPE vocabulary (GPT-2 style), as GGUF carries it with `tokenizer.ggml.model` gpt2. */
export interface BpeVocab {
  model: 'gpt2';
  /** Pieces in GPT-2's byte-to-unicode alphabet (a space is 'Ġ'); control and user-defined tokens as their text. */
  tokens: string[];
  /** GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused (padding), 6 byte. */
  types: number[];
  /** Merge rules as "left right", highest priority first. */
  merges: string[];
  /** llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`): which split regex precedes BPE. */
  pre: string;
  /** null when the file names no BOS token (Qwen files usually name one but do not add it). */
  bos: number | null;
  eos: number;
  /** Whether BOS is prepended to a text (tokenizer.ggml.add_bos_token, else the `pre` family's default). */
  addBos: boolean;
  /** Every token that ends a generation: EOS, EOT, EOM and the end-of-turn tokens llama.cpp detects by text. */
  endTokens: number[];
  chatTemplate?: string;
}

export interface ImportedCheckpoint {
  weights: LlamaWeights;
  /** A SentencePiece vocabulary (llama2.c, GGUF `llama` tokenizer) or a byte-level BPE one (GGUF `gpt2`). */
  vocab: SentencePieceVocab | BpeVocab;
  /** Where it came from, for the package's provenance record. */
  source: { format: 'llama2c' | 'gguf'; path: string; sha256: string };
}
