/**
 * ONNX graphs for a Llama-architecture model, split in two so a carry-on module can edit the
 * final hidden state between them without the vocabulary projection running twice.
 *
 * ## Body model (`buildBodyModel`)
 *
 * The package's body is the *pooled* variant (models/README.md has its I/O table): it reads a KV
 * pool `[batch, kv_heads, kv_capacity, head_dim]` in place up to each row's `past_lengths` and
 * outputs only this call's keys and values (`new.{i}.*`). What follows specifies the *reference*
 * variant (`attention: 'reference'`), which carry-on graphs share and tests compare against.
 *
 * Inputs
 * - `input_ids`      int64   [batch, sequence]
 * - `position_ids`   int64   [batch, sequence]  RoPE position of each token; must be in
 *                                               [0, max_position_embeddings). With left padding,
 *                                               the first real token of each row gets 0.
 * - `attention_mask` int64   [batch, total_sequence]  1 = attend, 0 = padding;
 *                                               total_sequence = past_sequence + sequence.
 * - `past_key_values.{i}.key`, `past_key_values.{i}.value` for each layer i
 *                    float32 [batch, num_key_value_heads, past_sequence, head_dim]
 *                    (past_sequence may be 0: pass empty tensors for the first call).
 *
 * Outputs
 * - `hidden_states`  float32 [batch, sequence, hidden_size]  last layer's output AFTER the
 *                                               final RMSNorm (what the LM head consumes).
 * - `present.{i}.key`, `present.{i}.value`
 *                    float32 [batch, num_key_value_heads, total_sequence, head_dim]
 *                    (past concatenated with this call's keys/values; feed back as past).
 * - optional `hidden_states.layer.{k}` float32 [batch, sequence, hidden_size] for each k in
 *                    `extraLayerOutputs`: the residual stream after block k, before the final norm.
 *
 * Semantics (llama2.c / Llama; Qwen2 and Qwen3 differ only where noted)
 * - x = embed[input_ids]; per layer: h = RMSNorm(x) * attn_norm, q/k/v = h W^T (+ b_q/b_k/b_v
 *   for Qwen2), q and k RMSNorm'd per head with q_norm/k_norm (Qwen3), then RoPE on q and k
 *   with adjacent-pair rotation (pair j = elements 2j, 2j+1 of a head, angle = position *
 *   inv_freq[j], inv_freq[j] = theta^(-2j/head_dim) rescaled by `rope_scaling` when the config
 *   has one), tables computed in float32 exactly as llama2.c does.
 * - q has heads·head_dim features, which need not equal hidden_size (Qwen3): Wq is
 *   [heads·head_dim, hidden], Wo [hidden, heads·head_dim].
 * - Grouped-query attention: num_attention_heads / num_key_value_heads query heads share a KV
 *   head (query head h uses KV head floor(h / group)). Scores = q k^T / sqrt(head_dim).
 * - Query at index past_sequence + s may attend key index t iff t <= past_sequence + s (causal,
 *   in index space, so left-padded batches share one index space) AND attention_mask[b, t] == 1.
 *   A query row with no attendable key (a pad position) yields finite garbage, never NaN.
 * - x += Wo(attention); h = RMSNorm(x) * ffn_norm; x += down(silu(gate h) * up h).
 * - RMSNorm(x) = x * 1/sqrt(mean(x^2) + eps), in float32.
 * - past_sequence is read from the shape of `past_key_values.0.key` at run time.
 *
 * ## Head model (`buildHeadModel`)
 *
 * - input  `hidden_states` float32 [batch, sequence, hidden_size]
 * - output `logits`        float32 [batch, sequence, vocab_size]
 * - Weight: `output`, or the token embedding when tied.
 *
 * ## Operators
 *
 * ai.onnx opset 17, plus ORT's contrib ops where one op replaces many (per-op overhead dominates
 * small graphs such as carry-ons): SimplifiedLayerNormalization (RMSNorm), com.microsoft
 * RotaryEmbedding (interleaved), FusedMatMul (q·kᵀ without transposing the pool), and MatMulNBits
 * (4-bit, block 32) for matrices kept in ggml Q4_0 form. CUDA implements all of them; an execution
 * provider that lacks one runs that node on the CPU.
 */
import { TensorNames } from './tensor-names.js';
import { attr, DataType, GraphBuilder, type Dim, type ModelOptions } from '../formats/onnx-builder.js';
import { checkQuantMatrix, quantizedLinear } from './quantized-linear.js';
import type { LlamaConfig, LlamaLayer, LlamaWeights, Matrix, RopeScaling } from './types.js';

// ---- Tensor names: the engine must use these rather than string literals. ----

export const INPUT_IDS = TensorNames.inputIds;
export const POSITION_IDS = TensorNames.positionIds;
export const ATTENTION_MASK = TensorNames.attentionMask;
export const HIDDEN_STATES = TensorNames.hiddenStates;
export const LOGITS = TensorNames.logits;
export const pastKeyName = TensorNames.pastKey;
export const pastValueName = TensorNames.pastValue;
export const presentKeyName = TensorNames.presentKey;
export const presentValueName = TensorNames.presentValue;
export const layerHiddenStatesName = TensorNames.layerHidden;

/** Symbolic dimension names used in the models' input/output declarations. */
export const DIM_BATCH = 'batch';
export const DIM_SEQUENCE = 'sequence';
export const DIM_PAST_SEQUENCE = 'past_sequence';
export const DIM_TOTAL_SEQUENCE = 'total_sequence';
/** The pooled body's KV buffers: every row is a slot of this many positions. */
export const DIM_KV_CAPACITY = 'kv_capacity';
export const PAST_LENGTHS = TensorNames.pastLengths;
export const newKeyName = TensorNames.newKey;
export const newValueName = TensorNames.newValue;

/** ai.onnx 17; com.microsoft 1 for the contrib ops. */
export const ONNX_OPSET = 17;
export const MS_OPSET = 1;

export const MODEL_OPTIONS: ModelOptions = {
  irVersion: 8,
  opsets: [
    { domain: '', version: ONNX_OPSET },
    { domain: 'com.microsoft', version: MS_OPSET },
  ],
};

export interface BodyModelOptions {
  /**
   * 'pooled' (the package default): attention reads each row's keys and values from a KV pool
   * `[batch, kv_heads, kv_capacity, head_dim]` up to the row's `past_lengths`, and outputs only
   * this call's keys and values (`new.{i}.*`) for the caller to write into the pool. 'reference':
   * `attention_mask` and growing KV tensors (past concatenated into present); kept as the readable
   * specification and for parity checks.
   */
  attention?: 'pooled' | 'reference';
  /** MatMulNBits accuracy_level for Q4_0 matrices (4 = int8 activations, 1 = fp32). Default 4. */
  accuracyLevel?: number;
  /** Layers whose residual-stream output is also exposed as `hidden_states.layer.{k}`. */
  extraLayerOutputs?: number[];
}

export interface HeadModelOptions {
  accuracyLevel?: number;
}

const DEFAULT_ACCURACY_LEVEL = 4;

/**
 * Masked scores are replaced (Where, not added) with float32's lowest finite value. Finite so a
 * fully masked row (a left-pad query) softmaxes to a uniform, finite distribution instead of
 * NaN (-inf - -inf); replaced rather than added so nothing can overflow it to -inf; and its
 * exp() underflows to exactly 0 whenever the row has any real score, so padding contributes
 * nothing to real tokens.
 */
const MASKED_SCORE = -3.4028234663852886e38;

// ---------------------------------------------------------------------------------------------
// Public builders

export function buildBodyModel(weights: LlamaWeights, opts: BodyModelOptions = {}): Uint8Array {
  validateWeights(weights);
  const cfg = weights.config;
  const accuracyLevel = opts.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL;
  const extra = validateExtraLayers(opts.extraLayerOutputs ?? [], cfg.num_hidden_layers);

  const pooled = (opts.attention ?? 'pooled') === 'pooled';
  const g = new GraphBuilder('llama_body');
  declareBodyInputs(g, cfg, pooled);
  const shared = pooled ? buildPooledSharedTensors(g, cfg) : buildSharedTensors(g, cfg, { sequence: INPUT_IDS, pastKey: pastKeyName(0) });

  const embed = g.initializer('model.embed_tokens.weight', weights.tokEmbeddings, [cfg.vocab_size, cfg.hidden_size]);
  let x = g.op('Gather', [embed, INPUT_IDS], { axis: attr.int(0) });

  weights.layers.forEach((layer, i) => {
    g.scope = `model.layers.${i}`;
    x = decoderBlock(g, x, layer, cfg, shared, bodyBlockNames(i, pooled), accuracyLevel);
    if (extra.has(i)) {
      g.op('Identity', [x], undefined, layerHiddenStatesName(i));
      g.output(layerHiddenStatesName(i), DataType.FLOAT, [DIM_BATCH, DIM_SEQUENCE, cfg.hidden_size]);
    }
  });

  g.scope = 'model.norm';
  const normW = g.initializer('model.norm.weight', weights.finalNorm);
  rmsNorm(g, x, normW, cfg.rms_norm_eps, HIDDEN_STATES);
  g.output(HIDDEN_STATES, DataType.FLOAT, [DIM_BATCH, DIM_SEQUENCE, cfg.hidden_size]);

  declarePresentOutputs(g, cfg, pooled);
  return g.serialize({ ...MODEL_OPTIONS, docString: 'Llama body: embeddings .. final RMSNorm' });
}

export function buildHeadModel(weights: LlamaWeights, opts: HeadModelOptions = {}): Uint8Array {
  const cfg = weights.config;
  const lmHead = lmHeadMatrix(weights);
  checkMatrix('lm_head', lmHead, cfg.vocab_size, cfg.hidden_size);

  const g = new GraphBuilder('llama_head');
  const hidden = g.input(HIDDEN_STATES, DataType.FLOAT, [DIM_BATCH, DIM_SEQUENCE, cfg.hidden_size]);
  if (lmHead.kind !== 'f32') {
    quantizedLinear(g, hidden, lmHead, 'lm_head', opts.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL, LOGITS);
  } else {
    gemmHead(g, hidden, lmHead, cfg);
  }
  g.output(LOGITS, DataType.FLOAT, [DIM_BATCH, DIM_SEQUENCE, cfg.vocab_size]);
  return g.serialize({ ...MODEL_OPTIONS, docString: 'Llama LM head: hidden_states -> logits' });
}

/** The LM head matrix, falling back to the token embedding for tied models. */
function lmHeadMatrix(weights: LlamaWeights): Matrix {
  const { vocab_size, hidden_size } = weights.config;
  return weights.output ?? { kind: 'f32', rows: vocab_size, cols: hidden_size, data: weights.tokEmbeddings };
}

/** Gemm with transB takes the [vocab, hidden] matrix as stored, so no transposed copy is made. */
function gemmHead(g: GraphBuilder, hidden: string, m: Matrix & { kind: 'f32' }, cfg: LlamaConfig): void {
  const w = g.initializer('lm_head.weight', m.data, [m.rows, m.cols]);
  const flat = g.op('Reshape', [hidden, g.constI64([-1, cfg.hidden_size])]);
  const logits2d = g.op('Gemm', [flat, w], { transB: attr.int(1) });
  const batchSeq = g.op('Shape', [hidden], { start: attr.int(0), end: attr.int(2) });
  const outShape = g.op('Concat', [batchSeq, g.constI64([cfg.vocab_size])], { axis: attr.int(0) });
  g.op('Reshape', [logits2d, outShape], undefined, LOGITS);
}

// ---------------------------------------------------------------------------------------------
// Graph I/O

function declareBodyInputs(g: GraphBuilder, cfg: LlamaConfig, pooled: boolean): void {
  g.input(INPUT_IDS, DataType.INT64, [DIM_BATCH, DIM_SEQUENCE]);
  g.input(POSITION_IDS, DataType.INT64, [DIM_BATCH, DIM_SEQUENCE]);
  if (pooled) g.input(PAST_LENGTHS, DataType.INT64, [DIM_BATCH]);
  else g.input(ATTENTION_MASK, DataType.INT64, [DIM_BATCH, DIM_TOTAL_SEQUENCE]);
  const kvShape: Dim[] = [DIM_BATCH, cfg.num_key_value_heads, pooled ? DIM_KV_CAPACITY : DIM_PAST_SEQUENCE, cfg.head_dim];
  for (let i = 0; i < cfg.num_hidden_layers; i++) {
    g.input(pastKeyName(i), DataType.FLOAT, kvShape);
    g.input(pastValueName(i), DataType.FLOAT, kvShape);
  }
}

function declarePresentOutputs(g: GraphBuilder, cfg: LlamaConfig, pooled: boolean): void {
  const kvShape: Dim[] = [DIM_BATCH, cfg.num_key_value_heads, pooled ? DIM_SEQUENCE : DIM_TOTAL_SEQUENCE, cfg.head_dim];
  for (let i = 0; i < cfg.num_hidden_layers; i++) {
    g.output(pooled ? newKeyName(i) : presentKeyName(i), DataType.FLOAT, kvShape);
    g.output(pooled ? newValueName(i) : presentValueName(i), DataType.FLOAT, kvShape);
  }
}

// ---------------------------------------------------------------------------------------------
// Building blocks, exported so other Llama-style graphs (the carry-on module) are built from the
// very same operators as the base rather than from a copy that could drift.

/** The part of a config that one attention/MLP block and its RoPE/mask tensors depend on. */
export type BlockGeometry = Pick<
  LlamaConfig,
  'num_attention_heads' | 'num_key_value_heads' | 'head_dim' | 'rms_norm_eps' | 'rope_theta' | 'max_position_embeddings'
> & {
  /** Absent or null: plain RoPE (a carry-on's blocks have no scaling). */
  rope_scaling?: RopeScaling | null;
};

/**
 * Graph tensors the shared mask reads its lengths from: any [batch, sequence, ...] input, and the
 * first block's past key [batch, kv_heads, past_sequence, head_dim].
 */
export interface MaskSources {
  sequence: string;
  pastKey: string;
}

/** Names one decoder block uses: its initializer prefix and its KV-cache graph inputs/outputs. */
export interface BlockNames {
  prefix: string;
  pastKey: string;
  pastValue: string;
  presentKey: string;
  presentValue: string;
}

function bodyBlockNames(i: number, pooled: boolean): BlockNames {
  return {
    prefix: `model.layers.${i}`,
    pastKey: pastKeyName(i),
    pastValue: pastValueName(i),
    presentKey: pooled ? newKeyName(i) : presentKeyName(i),
    presentValue: pooled ? newValueName(i) : presentValueName(i),
  };
}

// ---------------------------------------------------------------------------------------------
// Tensors computed once and shared by every layer

export type SharedTensors = ReferenceSharedTensors | PooledSharedTensors;

/** The pooled body's: RoPE per token as in the reference, and the two masks its attention needs. */
export interface PooledSharedTensors {
  kind: 'pooled';
  cos: string;
  sin: string;
  /** bool [batch, 1, 1, kv_capacity]: key t of the pool is row b's past (t < past_lengths[b]). */
  pastAllowed: string;
  /** bool [group * sequence, sequence]: causal among this call's tokens, per query-head group. */
  newAllowed: string;
  scoreScale: string;
}

export interface ReferenceSharedTensors {
  kind: 'reference';
  /** RoPE tables [max_position_embeddings, head_dim/2], looked up at `position_ids` by RotaryEmbedding. */
  cos: string;
  sin: string;
  /** bool [batch, 1, 1, sequence, total_sequence]: may this query attend this key. */
  allowed: string;
  /** sqrt(head_dim) as an f32 scalar, divided (not multiplied) as llama2.c does. */
  scoreScale: string;
}

/**
 * RoPE cos/sin gathered at `position_ids` (a graph input every caller must declare) and the
 * causal+padding mask. Leaves `g.scope` at ''.
 */
export function buildSharedTensors(g: GraphBuilder, cfg: BlockGeometry, sources: MaskSources): SharedTensors {
  const { cos, sin } = ropeForPositions(g, cfg);
  g.scope = 'mask';
  const allowed = attentionMask(g, sources);
  g.scope = '';
  return { kind: 'reference', cos, sin, allowed, scoreScale: g.constF32([Math.sqrt(cfg.head_dim)], []) };
}

/** The RoPE tables every layer's RotaryEmbedding reads: [max_position_embeddings, head_dim/2]. */
function ropeForPositions(g: GraphBuilder, cfg: BlockGeometry): { cos: string; sin: string } {
  g.scope = 'rope';
  const { cos, sin } = ropeTables(cfg);
  const half = cfg.head_dim / 2;
  const tableDims = [cfg.max_position_embeddings, half];
  const cosTable = g.initializer('rope.cos_cached', cos, tableDims);
  const sinTable = g.initializer('rope.sin_cached', sin, tableDims);
  g.scope = '';
  return { cos: cosTable, sin: sinTable };
}

/** RoPE as the reference, and masks over the pool (by `past_lengths`) and over this call's tokens. */
function buildPooledSharedTensors(g: GraphBuilder, cfg: BlockGeometry): PooledSharedTensors {
  const { cos, sin } = ropeForPositions(g, cfg);
  g.scope = 'mask';
  const scalar = (t: string): string => g.op('Squeeze', [t, g.constI64([0])]);
  const zero = g.constI64([0], []);
  const one = g.constI64([1], []);
  const capacity = scalar(g.op('Shape', [pastKeyName(0)], { start: attr.int(2), end: attr.int(3) }));
  const keyIdx = g.op('Range', [zero, capacity, one]); // [C]
  const lengths = g.op('Unsqueeze', [PAST_LENGTHS, g.constI64([1])]); // [B, 1]
  const past = g.op('Less', [keyIdx, lengths]); // [B, C]
  const pastAllowed = g.op('Unsqueeze', [past, g.constI64([1, 2])]); // [B, 1, 1, C]
  const seqLen = g.op('Shape', [INPUT_IDS], { start: attr.int(1), end: attr.int(2) });
  const idx = g.op('Range', [zero, scalar(seqLen), one]);
  const causal = g.op('LessOrEqual', [idx, g.op('Unsqueeze', [idx, g.constI64([1])])]); // [S(query), S(key)]
  const group = cfg.num_attention_heads / cfg.num_key_value_heads;
  const newAllowed = g.op('Tile', [causal, g.constI64([group, 1])]); // [G*S, S], rows g-major
  g.scope = '';
  return { kind: 'pooled', cos, sin, pastAllowed, newAllowed, scoreScale: g.constF32([Math.sqrt(cfg.head_dim)], []) };
}

/**
 * cos/sin of position * freq for every position and rotation pair, reproducing llama2.c's
 * float32 arithmetic (`1.0f / powf(theta, i / (float)head_size)`, `pos * freq`, cosf/sinf) so
 * the rotation is bit-close to llama2.c and llama.cpp rather than to a float64 reference.
 * transformers computes its default inverse frequencies the same way in float32, so this is also
 * what a Hugging Face model computes; `rope_scaling` then rescales them (ropeInverseFrequencies).
 */
function ropeTables(cfg: BlockGeometry): { cos: Float32Array; sin: Float32Array } {
  const f = Math.fround;
  const half = cfg.head_dim / 2;
  const freqs = ropeInverseFrequencies(cfg);
  const cos = new Float32Array(cfg.max_position_embeddings * half);
  const sin = new Float32Array(cos.length);
  for (let pos = 0; pos < cfg.max_position_embeddings; pos++) {
    for (let j = 0; j < half; j++) {
      const angle = f(pos * freqs[j]);
      cos[pos * half + j] = Math.cos(angle);
      sin[pos * half + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * The inverse frequency of each rotation pair, float32 as transformers computes them (its RoPE
 * init functions run in float32): theta^(-2j/head_dim), then
 * - 'linear': divided by `factor` (`_compute_linear_scaling_rope_parameters`; dividing the
 *   frequency is dividing the position);
 * - 'llama3': `_compute_llama3_parameters`: wavelengths longer than
 *   original_max_position_embeddings / low_freq_factor are divided by `factor`, shorter than
 *   original / high_freq_factor kept, and the band between interpolated smoothly;
 * - 'factors': divided by factors[j], as llama.cpp applies GGUF's `rope_freqs.weight`.
 * None of them scales attention (transformers' attention_factor is 1 for all three).
 */
function ropeInverseFrequencies(cfg: BlockGeometry): number[] {
  const f = Math.fround;
  const half = cfg.head_dim / 2;
  const theta = f(cfg.rope_theta);
  const base = Array.from({ length: half }, (_, j) => f(1 / f(Math.pow(theta, f((2 * j) / cfg.head_dim)))));
  const s = cfg.rope_scaling;
  if (!s) return base;
  switch (s.rope_type) {
    case 'linear':
      return base.map((fr) => f(fr / s.factor));
    case 'factors':
      if (s.factors.length !== half) throw new Error(`rope_scaling factors: expected ${half} (head_dim / 2), got ${s.factors.length}`);
      return base.map((fr, j) => f(fr / s.factors[j]));
    case 'llama3': {
      const { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } = s;
      const lowWavelen = old / low;
      const highWavelen = old / high;
      return base.map((fr) => {
        const wavelen = f((2 * Math.PI) / fr);
        if (wavelen < highWavelen) return fr;
        if (wavelen > lowWavelen) return f(fr / factor);
        const smooth = f((old / wavelen - low) / (high - low));
        // transformers: (1 - smooth) * inv_freq / factor + smooth * inv_freq, left to right.
        return f(f(f(f(1 - smooth) * fr) / factor) + f(smooth * fr));
      });
    }
  }
}

/**
 * Causal (in index space) AND attention_mask. The past length comes from the first layer's past
 * key shape, so one graph serves prefill (past 0) and decode.
 */
function attentionMask(g: GraphBuilder, sources: MaskSources): string {
  const scalar = (t: string): string => g.op('Squeeze', [t, g.constI64([0])]);
  const seqLen = g.op('Shape', [sources.sequence], { start: attr.int(1), end: attr.int(2) });
  const pastLen = g.op('Shape', [sources.pastKey], { start: attr.int(2), end: attr.int(3) });
  const totalLen = scalar(g.op('Add', [pastLen, seqLen]));
  const one = g.constI64([1], []);
  const queryIdx = g.op('Range', [scalar(pastLen), totalLen, one]);
  const keyIdx = g.op('Range', [g.constI64([0], []), totalLen, one]);
  const queryCol = g.op('Unsqueeze', [queryIdx, g.constI64([1])]);
  const causal = g.op('LessOrEqual', [keyIdx, queryCol]); // [S, T]
  const notPad = g.op('Cast', [ATTENTION_MASK], { to: attr.int(DataType.BOOL) }); // [B, T]
  const notPad5 = g.op('Unsqueeze', [notPad, g.constI64([1, 2, 3])]); // [B, 1, 1, 1, T]
  return g.op('And', [causal, notPad5]); // [B, 1, 1, S, T]
}

// ---------------------------------------------------------------------------------------------
// Decoder layer

/**
 * One pre-norm Llama block on the residual stream x: x + attn(norm x), then + mlp(norm x).
 * Initializers are named `${names.prefix}.<hf name>`; the caller sets `g.scope`.
 */
export function decoderBlock(
  g: GraphBuilder,
  x: string,
  layer: LlamaLayer,
  cfg: BlockGeometry,
  shared: SharedTensors,
  names: BlockNames,
  accuracyLevel: number,
): string {
  const p = names.prefix;
  const linear = (input: string, m: Matrix, name: string): string =>
    linearLayer(g, input, m, `${p}.${name}`, accuracyLevel);

  const attnNorm = g.initializer(`${p}.input_layernorm.weight`, layer.attnNorm);
  const h = rmsNorm(g, x, attnNorm, cfg.rms_norm_eps);
  const attn =
    shared.kind === 'pooled'
      ? pooledAttention(g, h, layer, cfg, shared, names, linear)
      : selfAttention(g, h, layer, cfg, shared, names, linear);
  x = g.op('Add', [x, linear(attn, layer.wo, 'self_attn.o_proj')]);

  const ffnNorm = g.initializer(`${p}.post_attention_layernorm.weight`, layer.ffnNorm);
  const h2 = rmsNorm(g, x, ffnNorm, cfg.rms_norm_eps);
  const gate = linear(h2, layer.gate, 'mlp.gate_proj');
  const up = linear(h2, layer.up, 'mlp.up_proj');
  const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
  return g.op('Add', [x, linear(g.op('Mul', [silu, up]), layer.down, 'mlp.down_proj')]);
}

/**
 * q and k (after RoPE) [B, S, heads, hd] and v [B, S, kv_heads, hd]: what both attentions start from.
 * Each projection adds its bias when the layer has one (Qwen2), and q and k are RMS-normalised per
 * head when the layer has q/k norms (Qwen3: after the projection, before RoPE, as modeling_qwen3).
 */
function projectQkv(
  g: GraphBuilder,
  h: string,
  layer: LlamaLayer,
  cfg: BlockGeometry,
  rope: { cos: string; sin: string },
  names: BlockNames,
  linear: (input: string, m: Matrix, name: string) => string,
): { q: string; k: string; v: string } {
  const { num_attention_heads: nHeads, num_key_value_heads: nKv, head_dim: hd } = cfg;
  const p = names.prefix;
  const project = (m: Matrix, bias: Float32Array | undefined, name: string): string => {
    const y = linear(h, m, `self_attn.${name}`);
    return bias ? g.op('Add', [y, g.initializer(`${p}.self_attn.${name}.bias`, bias)]) : y;
  };
  const headNorm = (t: string, weight: Float32Array | undefined, heads: number, name: string): string => {
    if (!weight) return t;
    const perHead = g.op('Reshape', [t, g.constI64([0, 0, heads, hd])]);
    const normed = rmsNorm(g, perHead, g.initializer(`${p}.self_attn.${name}.weight`, weight), cfg.rms_norm_eps);
    return g.op('Reshape', [normed, g.constI64([0, 0, heads * hd])]);
  };
  const q = headNorm(project(layer.wq, layer.qBias, 'q_proj'), layer.qNorm, nHeads, 'q_norm');
  const k = headNorm(project(layer.wk, layer.kBias, 'k_proj'), layer.kNorm, nKv, 'k_norm');
  return {
    q: applyRope(g, q, nHeads, hd, rope),
    k: applyRope(g, k, nKv, hd, rope),
    v: g.op('Reshape', [project(layer.wv, layer.vBias, 'v_proj'), g.constI64([0, 0, nKv, hd])]),
  };
}

/** Returns the attention output before Wo: [batch, sequence, heads * head_dim]. */
function selfAttention(
  g: GraphBuilder,
  h: string,
  layer: LlamaLayer,
  cfg: BlockGeometry,
  shared: ReferenceSharedTensors,
  names: BlockNames,
  linear: (input: string, m: Matrix, name: string) => string,
): string {
  const { num_attention_heads: nHeads, num_key_value_heads: nKv, head_dim: hd } = cfg;
  const group = nHeads / nKv;
  const { q, k, v } = projectQkv(g, h, layer, cfg, shared, names, linear);

  const toHeadMajor = (t: string): string => g.op('Transpose', [t], { perm: attr.ints([0, 2, 1, 3]) });
  const axis2 = { axis: attr.int(2) };
  const presentK = g.node('Concat', [names.pastKey, toHeadMajor(k)], { attrs: axis2, outputs: [names.presentKey] })[0];
  const presentV = g.node('Concat', [names.pastValue, toHeadMajor(v)], { attrs: axis2, outputs: [names.presentValue] })[0];

  // GQA without copying K/V: group the query heads by their KV head and let MatMul broadcast
  // the KV head over the group axis. Query head h = kv * group + g, as in llama2.c.
  const qGrouped = g.op('Transpose', [g.op('Reshape', [q, g.constI64([0, 0, nKv, group, hd])])], {
    perm: attr.ints([0, 2, 3, 1, 4]),
  }); // [B, KV, G, S, hd]
  const unsqueeze2 = (t: string): string => g.op('Unsqueeze', [t, g.constI64([2])]);
  const kT = g.op('Transpose', [unsqueeze2(presentK)], { perm: attr.ints([0, 1, 2, 4, 3]) }); // [B,KV,1,hd,T]

  const scores = g.op('Div', [g.op('MatMul', [qGrouped, kT]), shared.scoreScale]); // [B,KV,G,S,T]
  const masked = g.op('Where', [shared.allowed, scores, g.constF32([MASKED_SCORE], [])]);
  const probs = g.op('Softmax', [masked], { axis: attr.int(-1) });
  const context = g.op('MatMul', [probs, unsqueeze2(presentV)]); // [B, KV, G, S, hd]

  const bySeq = g.op('Transpose', [context], { perm: attr.ints([0, 3, 1, 2, 4]) }); // [B,S,KV,G,hd]
  return g.op('Reshape', [bySeq, g.constI64([0, 0, nHeads * hd])]);
}

/**
 * The reference attention, reading the past from the KV pool in place: scores against the pool
 * (masked beyond each row's `past_lengths`) and against this call's keys are softmaxed together,
 * and the context is the two weighted sums added. Nothing is concatenated, so the pool is only
 * read (a graph input is never copied); this call's keys (after RoPE) and values are outputs the
 * caller appends to the pool. The query heads of one KV head are stacked (rows g·S + s) so each
 * MatMul's batch dimensions [batch, kv_heads] match the pool's exactly.
 */
function pooledAttention(
  g: GraphBuilder,
  h: string,
  layer: LlamaLayer,
  cfg: BlockGeometry,
  shared: PooledSharedTensors,
  names: BlockNames,
  linear: (input: string, m: Matrix, name: string) => string,
): string {
  const { num_attention_heads: nHeads, num_key_value_heads: nKv, head_dim: hd } = cfg;
  const group = nHeads / nKv;
  const { q, k, v } = projectQkv(g, h, layer, cfg, shared, names, linear);
  const headMajor = { perm: attr.ints([0, 2, 1, 3]) };
  const kNew = g.op('Transpose', [k], headMajor, names.presentKey); // [B,KV,S,hd]
  const vNew = g.op('Transpose', [v], headMajor, names.presentValue);

  const qStacked = g.op('Reshape', [
    g.op('Transpose', [g.op('Reshape', [q, g.constI64([0, 0, nKv, group, hd])])], { perm: attr.ints([0, 2, 3, 1, 4]) }),
    g.constI64([0, 0, -1, hd]),
  ]); // [B, KV, G*S, hd]
  const scores = (keys: string, allowed: string): string => {
    const [raw] = g.node('FusedMatMul', [qStacked, keys], { domain: 'com.microsoft', attrs: { transB: attr.int(1) } });
    return g.op('Where', [allowed, g.op('Div', [raw, shared.scoreScale]), g.constF32([MASKED_SCORE], [])]);
  };
  const sPast = scores(names.pastKey, shared.pastAllowed); // [B, KV, G*S, C]
  const sNew = scores(kNew, shared.newAllowed); // [B, KV, G*S, S]
  const probs = g.op('Softmax', [g.op('Concat', [sPast, sNew], { axis: attr.int(-1) })], { axis: attr.int(-1) });
  const widths = g.op('Concat', [
    g.op('Shape', [sPast], { start: attr.int(3), end: attr.int(4) }),
    g.op('Shape', [sNew], { start: attr.int(3), end: attr.int(4) }),
  ], { axis: attr.int(0) });
  const [pPast, pNew] = g.node('Split', [probs, widths], { attrs: { axis: attr.int(-1) }, numOutputs: 2 });
  const context = g.op('Add', [g.op('MatMul', [pPast, names.pastValue]), g.op('MatMul', [pNew, vNew])]); // [B,KV,G*S,hd]

  const bySeq = g.op('Transpose', [g.op('Reshape', [context, g.constI64([0, 0, group, -1, hd])])], {
    perm: attr.ints([0, 3, 1, 2, 4]),
  }); // [B,S,KV,G,hd]
  return g.op('Reshape', [bySeq, g.constI64([0, 0, nHeads * hd])]);
}

/**
 * Adjacent-pair RoPE on a projection [B, S, heads*hd] -> [B, S, heads, hd]: each pair (a, b) =
 * (x[2j], x[2j+1]) becomes (a cos - b sin, a sin + b cos), with cos/sin looked up at
 * `position_ids`. ORT's RotaryEmbedding (interleaved) in one op rather than ten per projection:
 * a carry-on step is mostly per-op overhead, and greedy parity with llama.cpp holds.
 */
function applyRope(g: GraphBuilder, proj: string, heads: number, hd: number, shared: { cos: string; sin: string }): string {
  const [rotated] = g.node('RotaryEmbedding', [proj, POSITION_IDS, shared.cos, shared.sin], {
    domain: 'com.microsoft',
    attrs: { interleaved: attr.int(1) },
  });
  return g.op('Reshape', [rotated, g.constI64([0, 0, heads, hd])]);
}

/** llama2.c's RMSNorm, w * (x * 1/sqrt(mean(x^2) + eps)) in float32, as ORT's one fused op. */
export function rmsNorm(g: GraphBuilder, x: string, weight: string, eps: number, output?: string): string {
  return g.node('SimplifiedLayerNormalization', [x, weight], {
    attrs: { axis: attr.int(-1), epsilon: attr.float(eps) },
    outputs: output === undefined ? undefined : [output],
  })[0];
}

// ---------------------------------------------------------------------------------------------
// Linear layers

/**
 * y = x W^T for W [out, in]; f32 via MatMul on a stored [in, out] copy (initializer
 * `${name}.weight_t`), Q4_0 via MatMulNBits.
 */
export function linearLayer(g: GraphBuilder, x: string, m: Matrix, name: string, accuracyLevel: number): string {
  if (m.kind !== 'f32') return quantizedLinear(g, x, m, name, accuracyLevel);
  const wT = g.initializer(`${name}.weight_t`, transpose(m.data, m.rows, m.cols), [m.cols, m.rows]);
  return g.op('MatMul', [x, wT]);
}

function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validation: fail at build time with a message naming the tensor, not inside ORT at load time.

function validateWeights(weights: LlamaWeights): void {
  const cfg = weights.config;
  const { hidden_size: d, num_attention_heads: h, num_key_value_heads: kv, head_dim: hd } = cfg;
  if (hd % 2 !== 0) throw new Error(`head_dim must be even for RoPE, got ${hd}`);
  if (h % kv !== 0) throw new Error(`num_attention_heads (${h}) must be a multiple of num_key_value_heads (${kv})`);
  if (cfg.num_hidden_layers < 1 || weights.layers.length !== cfg.num_hidden_layers) {
    throw new Error(`expected ${cfg.num_hidden_layers} layers (at least 1), got ${weights.layers.length}`);
  }
  checkVector('tokEmbeddings', weights.tokEmbeddings, cfg.vocab_size * d);
  checkVector('finalNorm', weights.finalNorm, d);
  weights.layers.forEach((l, i) => {
    const p = `layers[${i}]`;
    checkVector(`${p}.attnNorm`, l.attnNorm, d);
    checkVector(`${p}.ffnNorm`, l.ffnNorm, d);
    checkMatrix(`${p}.wq`, l.wq, h * hd, d);
    checkMatrix(`${p}.wk`, l.wk, kv * hd, d);
    checkMatrix(`${p}.wv`, l.wv, kv * hd, d);
    checkMatrix(`${p}.wo`, l.wo, d, h * hd);
    // The graph adds whatever the layer has: a bias or norm the config does not announce (or the
    // reverse) is a reader bug, caught here rather than served as a different model.
    checkOptional(`${p}.qBias`, l.qBias, cfg.attention_bias, h * hd, 'attention_bias');
    checkOptional(`${p}.kBias`, l.kBias, cfg.attention_bias, kv * hd, 'attention_bias');
    checkOptional(`${p}.vBias`, l.vBias, cfg.attention_bias, kv * hd, 'attention_bias');
    checkOptional(`${p}.qNorm`, l.qNorm, cfg.qk_norm, hd, 'qk_norm');
    checkOptional(`${p}.kNorm`, l.kNorm, cfg.qk_norm, hd, 'qk_norm');
    checkMatrix(`${p}.gate`, l.gate, cfg.intermediate_size, d);
    checkMatrix(`${p}.up`, l.up, cfg.intermediate_size, d);
    checkMatrix(`${p}.down`, l.down, d, cfg.intermediate_size);
  });
}

function checkOptional(name: string, v: Float32Array | undefined, expected: boolean, length: number, flag: string): void {
  if (!expected) {
    if (v) throw new Error(`${name}: present, but the config has ${flag} false`);
    return;
  }
  if (!v) throw new Error(`${name}: missing (the config has ${flag} true)`);
  checkVector(name, v, length);
}

function checkVector(name: string, v: Float32Array, length: number): void {
  if (v.length !== length) throw new Error(`${name}: expected ${length} values, got ${v.length}`);
}

function checkMatrix(name: string, m: Matrix, rows: number, cols: number): void {
  if (m.rows !== rows || m.cols !== cols) {
    throw new Error(`${name}: expected [${rows}, ${cols}], got [${m.rows}, ${m.cols}]`);
  }
  if (m.kind === 'f32') {
    checkVector(name, m.data, rows * cols);
    return;
  }
  checkQuantMatrix(m, name);
}

function validateExtraLayers(layers: number[], numLayers: number): Set<number> {
  for (const k of layers) {
    if (!Number.isInteger(k) || k < 0 || k >= numLayers) {
      throw new Error(`extraLayerOutputs: ${k} is not a layer index in [0, ${numLayers})`);
    }
  }
  return new Set(layers);
}
