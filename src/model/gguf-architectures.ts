/**
 * The mapping between a GGUF model file's architecture metadata and tensors and our LlamaConfig /
 * LlamaWeights, both ways, for the architectures `llama`, `qwen2` and `qwen3` (key and tensor names
 * as llama.cpp's convert_hf_to_gguf.py writes them and src/llama-arch.cpp reads them).
 *
 * RoPE layout: our graph rotates adjacent pairs (x[2i], x[2i+1]). GGUF `llama` files are in that
 * order already (the converter undoes Hugging Face's q/k permutation, and llama.cpp runs llama with
 * normal RoPE). GGUF `qwen2`/`qwen3` files keep Hugging Face's rotate-half order (llama.cpp runs them
 * with NEOX RoPE), so their q/k rows, q/k biases and q/k norm vectors are un-permuted on import and
 * permuted back on export.
 */
import { copyBytes, dequantize, GgmlType } from '../formats/ggml-quants.js';
import {
  gguf,
  GgufMetadataReader,
  shortestF32Decimal,
  type GgufFile,
  type GgufTensorInfo,
  type GgufTensorSpec,
  type GgufTypedValue,
} from '../formats/gguf-file.js';
import { unpermuteRows } from './hf-folder.js';
import { GGML_BLOCKS } from './quantized-linear.js';
import type { LlamaConfig, LlamaLayer, LlamaWeights, Matrix, ModelArchitecture, QuantKind, RopeScaling } from './types.js';

export const GGUF_ARCHITECTURES: readonly ModelArchitecture[] = ['llama', 'qwen2', 'qwen3'];

/** Whether the file stores q/k in Hugging Face's rotate-half order (llama.cpp LLAMA_ROPE_TYPE_NEOX). */
const NEOX_ORDER: Record<ModelArchitecture, boolean> = { llama: false, qwen2: true, qwen3: true };

/**
 * Types kept quantized in memory, as the file has them: the graph multiplies with them directly
 * (src/model/quantized-linear.ts), so a Q4_K_M file is served at 4–6 bits, not expanded to f32.
 */
export const GGML_TYPE_OF: Readonly<Record<QuantKind, number>> = { q4_0: GgmlType.Q4_0, q8_0: GgmlType.Q8_0, q4_k: GgmlType.Q4_K, q6_k: GgmlType.Q6_K };
/** The same pairs read the other way: a tensor's ggml type to the kind it is kept as. */
const KEEP_QUANTIZED: ReadonlyMap<number, QuantKind> = new Map(
  (Object.entries(GGML_TYPE_OF) as [QuantKind, number][]).map(([kind, type]) => [type, kind]),
);

/** general.architecture, refused by name unless it is one the graph builds. */
export function architectureOf(file: GgufFile): ModelArchitecture {
  const value = file.metadata.get('general.architecture');
  const known: readonly unknown[] = GGUF_ARCHITECTURES;
  if (typeof value !== 'string' || !known.includes(value)) {
    throw new Error(
      `${file.path}: general.architecture is ${JSON.stringify(value)}; supported GGUF architectures: ${GGUF_ARCHITECTURES.join(', ')}`,
    );
  }
  return value as ModelArchitecture;
}

export interface TokenIds {
  vocabSize: number;
  bos: number;
  eos: number;
}

export function configFromGguf(file: GgufFile, tokens: TokenIds, tied: boolean): LlamaConfig {
  const arch = architectureOf(file);
  const meta = new GgufMetadataReader(file);
  const key = (name: string) => `${arch}.${name}`;
  const hidden = meta.number(key('embedding_length'));
  const heads = meta.number(key('attention.head_count'));
  const headDim = meta.number(key('attention.key_length'), hidden / heads);
  if (!Number.isInteger(headDim)) throw new Error(`${file.path}: embedding_length ${hidden} not divisible by ${heads} heads`);
  if (meta.number(key('attention.value_length'), headDim) !== headDim) {
    throw new Error(`${file.path}: key_length != value_length is not supported`);
  }
  // Partial rotary embeddings have no representation in LlamaConfig: refuse rather than misrun.
  const ropeDims = meta.number(key('rope.dimension_count'), headDim);
  if (ropeDims !== headDim) throw new Error(`${file.path}: rope.dimension_count ${ropeDims} != head_dim ${headDim} is not supported`);

  const declared = meta.number(key('vocab_size'), tokens.vocabSize);
  if (declared !== tokens.vocabSize) throw new Error(`${file.path}: ${key('vocab_size')} ${declared} != ${tokens.vocabSize} tokens`);
  const embeddings = file.requireTensor('token_embd.weight');
  expectDims(embeddings, [hidden, tokens.vocabSize], file.path);

  return {
    architecture: arch,
    hidden_size: hidden,
    intermediate_size: meta.number(key('feed_forward_length')),
    num_hidden_layers: meta.number(key('block_count')),
    num_attention_heads: heads,
    num_key_value_heads: meta.number(key('attention.head_count_kv'), heads),
    head_dim: headDim,
    vocab_size: tokens.vocabSize,
    max_position_embeddings: meta.number(key('context_length')),
    rope_theta: shortestF32Decimal(meta.number(key('rope.freq_base'), 10000)),
    rope_style: 'interleaved',
    rope_scaling: ropeScalingFromGguf(file, arch, headDim),
    // The tensors decide, as llama.cpp's loader does (it loads the biases and norms when present).
    attention_bias: file.tensor('blk.0.attn_q.bias') !== undefined,
    qk_norm: file.tensor('blk.0.attn_q_norm.weight') !== undefined,
    rms_norm_eps: shortestF32Decimal(meta.number(key('attention.layer_norm_rms_epsilon'))),
    tie_word_embeddings: tied,
    bos_token_id: tokens.bos,
    eos_token_id: tokens.eos,
  };
}

/**
 * `{arch}.rope.scaling.type` linear (+ factor), or llama3 scaling as convert_hf_to_gguf.py writes it:
 * a `rope_freqs.weight` tensor of head_dim/2 per-frequency divisors (llama.cpp's freq_factors).
 */
function ropeScalingFromGguf(file: GgufFile, arch: ModelArchitecture, headDim: number): RopeScaling | null {
  const meta = new GgufMetadataReader(file);
  const type = meta.string(`${arch}.rope.scaling.type`) ?? 'none';
  const freqs = file.tensor('rope_freqs.weight');
  if (type !== 'none' && type !== 'linear') throw new Error(`${file.path}: RoPE scaling ${JSON.stringify(type)} is not supported (none, linear, or rope_freqs factors)`);
  if (type === 'linear' && freqs) throw new Error(`${file.path}: both linear RoPE scaling and rope_freqs factors`);
  if (type === 'linear') {
    const factor = meta.number(`${arch}.rope.scaling.factor`);
    if (!(factor > 0)) throw new Error(`${file.path}: ${arch}.rope.scaling.factor must be positive`);
    return factor === 1 ? null : { rope_type: 'linear', factor: shortestF32Decimal(factor) };
  }
  if (!freqs) return null;
  expectDims(freqs, [headDim / 2], file.path);
  const factors = Array.from(file.tensorF32(freqs));
  if (!factors.every((f) => f > 0)) throw new Error(`${file.path}: rope_freqs.weight has a factor <= 0`);
  return { rope_type: 'factors', factors };
}

export function weightsFromGguf(file: GgufFile, config: LlamaConfig): LlamaWeights {
  const hidden = config.hidden_size;
  const hd = config.head_dim;
  const kvDim = config.num_key_value_heads * hd;
  const qDim = config.num_attention_heads * hd;
  const ffn = config.intermediate_size;
  const neox = NEOX_ORDER[config.architecture];

  const vector = (name: string, length: number): Float32Array => {
    const info = file.requireTensor(name);
    expectDims(info, [length], file.path);
    return file.tensorF32(info);
  };
  const matrix = (name: string, rows: number, cols: number): Matrix => {
    const info = file.requireTensor(name);
    expectDims(info, [cols, rows], file.path);
    const kind = KEEP_QUANTIZED.get(info.type);
    if (kind) return { kind, rows, cols, data: copyBytes(file.tensorBytes(info)) };
    return { kind: 'f32', rows, cols, data: file.tensorF32(info) };
  };
  /** q/k rows (and their biases, cols = 1) into interleaved order when the file has rotate-half order. */
  const rotary = (m: Matrix, heads: number): Matrix => (neox ? reorderRows(m, heads, hd, true) : m);
  const rotaryVector = (v: Float32Array, heads: number): Float32Array => (neox ? reorderVector(v, heads, hd, true) : v);

  const layers: LlamaLayer[] = [];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `blk.${i}.`;
    const layer: LlamaLayer = {
      attnNorm: vector(`${p}attn_norm.weight`, hidden),
      wq: rotary(matrix(`${p}attn_q.weight`, qDim, hidden), config.num_attention_heads),
      wk: rotary(matrix(`${p}attn_k.weight`, kvDim, hidden), config.num_key_value_heads),
      wv: matrix(`${p}attn_v.weight`, kvDim, hidden),
      wo: matrix(`${p}attn_output.weight`, hidden, qDim),
      ffnNorm: vector(`${p}ffn_norm.weight`, hidden),
      gate: matrix(`${p}ffn_gate.weight`, ffn, hidden),
      down: matrix(`${p}ffn_down.weight`, hidden, ffn),
      up: matrix(`${p}ffn_up.weight`, ffn, hidden),
    };
    if (config.attention_bias) {
      layer.qBias = rotaryVector(vector(`${p}attn_q.bias`, qDim), config.num_attention_heads);
      layer.kBias = rotaryVector(vector(`${p}attn_k.bias`, kvDim), config.num_key_value_heads);
      layer.vBias = vector(`${p}attn_v.bias`, kvDim);
    }
    if (config.qk_norm) {
      layer.qNorm = rotaryVector(vector(`${p}attn_q_norm.weight`, hd), 1);
      layer.kNorm = rotaryVector(vector(`${p}attn_k_norm.weight`, hd), 1);
    }
    layers.push(layer);
  }

  return {
    config,
    tokEmbeddings: file.tensorF32(file.requireTensor('token_embd.weight')),
    layers,
    finalNorm: vector('output_norm.weight', hidden),
    output: config.tie_word_embeddings ? null : matrix('output.weight', config.vocab_size, hidden),
  };
}

/**
 * q/k rows per head between rotate-half order (Hugging Face, GGUF qwen2/qwen3) and interleaved order
 * (ours): `toInterleaved` applies unpermuteRows, otherwise its inverse (Hugging Face's permute).
 * Works on whole rows as bytes, so a Q4_0 matrix (18 bytes per 32 columns, a row is whole blocks)
 * moves without requantizing. A vector is a matrix of one column.
 */
function reorderRows(m: Matrix, heads: number, headDim: number, toInterleaved: boolean): Matrix {
  const rowBytes = m.kind === 'f32' ? m.cols * 4 : (m.cols / GGML_BLOCKS[m.kind].elements) * GGML_BLOCKS[m.kind].bytes;
  // unpermuteRows on the row indices gives, for each interleaved row, the rotate-half row it takes.
  const order = unpermuteRows(Float32Array.from({ length: m.rows }, (_, r) => r), heads, headDim, 1);
  const src = new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  const out = new Uint8Array(src.length);
  order.forEach((rotateHalf, interleaved) => {
    const [from, to] = toInterleaved ? [rotateHalf, interleaved] : [interleaved, rotateHalf];
    out.set(src.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes);
  });
  return m.kind === 'f32' ? { ...m, data: new Float32Array(out.buffer) } : { ...m, data: out };
}

function reorderVector(v: Float32Array, heads: number, headDim: number, toInterleaved: boolean): Float32Array {
  return reorderRows({ kind: 'f32', rows: v.length, cols: 1, data: v }, heads, headDim, toInterleaved).data as Float32Array;
}

function expectDims(info: GgufTensorInfo, expected: number[], where: string): void {
  if (info.dims.length !== expected.length || info.dims.some((d, i) => d !== expected[i])) {
    throw new Error(`${where}: tensor ${info.name} has ne=[${info.dims}], expected [${expected}]`);
  }
}

/**
 * The tensors of a checkpoint in GGUF names and layout, in convert_hf_to_gguf.py's order (rope_freqs
 * first for llama3 scaling, then embeddings, head, layers). Linear layers become Q4_0 for 'q4_0'
 * where the row length allows it; embeddings, norms and biases stay F32.
 */
export function architectureTensors(weights: LlamaWeights, quant: 'f32' | 'q4_0'): GgufTensorSpec[] {
  const { config } = weights;
  const neox = NEOX_ORDER[config.architecture];
  const hd = config.head_dim;
  const f32 = (name: string, data: Float32Array, dims: number[]): GgufTensorSpec => ({ name, dims, type: GgmlType.F32, data });
  const vector = (name: string, data: Float32Array): GgufTensorSpec => f32(name, data, [data.length]);
  const matrix = (name: string, m: Matrix): GgufTensorSpec => matrixTensor(name, m, quant);
  const rotary = (name: string, m: Matrix, heads: number): GgufTensorSpec => matrix(name, neox ? reorderRows(m, heads, hd, false) : m);
  const rotaryVector = (name: string, v: Float32Array, heads: number): GgufTensorSpec => vector(name, neox ? reorderVector(v, heads, hd, false) : v);

  const tensors: GgufTensorSpec[] = [];
  const scaling = config.rope_scaling;
  if (scaling?.rope_type === 'factors') tensors.push(vector('rope_freqs.weight', Float32Array.from(scaling.factors)));
  if (scaling?.rope_type === 'llama3') tensors.push(vector('rope_freqs.weight', llama3RopeFactors(config)));
  tensors.push(f32('token_embd.weight', weights.tokEmbeddings, [config.hidden_size, config.vocab_size]));
  tensors.push(vector('output_norm.weight', weights.finalNorm));
  if (weights.output) tensors.push(matrix('output.weight', weights.output));
  weights.layers.forEach((layer, i) => {
    const p = `blk.${i}.`;
    tensors.push(vector(`${p}attn_norm.weight`, layer.attnNorm));
    tensors.push(rotary(`${p}attn_q.weight`, layer.wq, config.num_attention_heads));
    tensors.push(rotary(`${p}attn_k.weight`, layer.wk, config.num_key_value_heads));
    tensors.push(matrix(`${p}attn_v.weight`, layer.wv));
    if (config.attention_bias) {
      if (!layer.qBias || !layer.kBias || !layer.vBias) throw new Error(`layer ${i}: attention_bias without q/k/v biases`);
      tensors.push(rotaryVector(`${p}attn_q.bias`, layer.qBias, config.num_attention_heads));
      tensors.push(rotaryVector(`${p}attn_k.bias`, layer.kBias, config.num_key_value_heads));
      tensors.push(vector(`${p}attn_v.bias`, layer.vBias));
    }
    if (config.qk_norm) {
      if (!layer.qNorm || !layer.kNorm) throw new Error(`layer ${i}: qk_norm without q/k norms`);
      tensors.push(rotaryVector(`${p}attn_q_norm.weight`, layer.qNorm, 1));
      tensors.push(rotaryVector(`${p}attn_k_norm.weight`, layer.kNorm, 1));
    }
    tensors.push(
      matrix(`${p}attn_output.weight`, layer.wo),
      vector(`${p}ffn_norm.weight`, layer.ffnNorm),
      matrix(`${p}ffn_gate.weight`, layer.gate),
      matrix(`${p}ffn_down.weight`, layer.down),
      matrix(`${p}ffn_up.weight`, layer.up),
    );
  });
  return tensors;
}

/**
 * llama3 RoPE scaling as per-frequency divisors, computed as convert_hf_to_gguf.py's
 * LlamaModel.generate_extra_tensors does (in f32, as its torch tensors are).
 */
export function llama3RopeFactors(config: LlamaConfig): Float32Array {
  const s = config.rope_scaling;
  if (s?.rope_type !== 'llama3') throw new Error('llama3RopeFactors: rope_scaling is not llama3');
  const dim = config.head_dim;
  const f = Math.fround;
  const lowFreqWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highFreqWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = f(1 / f(f(config.rope_theta) ** f((2 * i) / dim)));
    const wavelen = f(f(2 * Math.PI) / freq);
    if (wavelen < highFreqWavelen) out[i] = 1;
    else if (wavelen > lowFreqWavelen) out[i] = s.factor;
    else {
      const smooth = f(f(f(s.original_max_position_embeddings / wavelen) - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor));
      out[i] = 1 / ((1 - smooth) / s.factor + smooth);
    }
  }
  return out;
}

function matrixTensor(name: string, m: Matrix, quant: 'f32' | 'q4_0'): GgufTensorSpec {
  const dims = [m.cols, m.rows];
  if (m.kind !== 'f32') {
    const type = GGML_TYPE_OF[m.kind];
    return quant === 'f32'
      ? { name, dims, type: GgmlType.F32, data: dequantize(type, m.data, m.rows * m.cols, name) }
      : { name, dims, type, data: m.data };
  }
  const quantize = quant === 'q4_0' && m.cols % 32 === 0;
  return { name, dims, type: quantize ? GgmlType.Q4_0 : GgmlType.F32, data: m.data };
}

/** general.* and the architecture's hyperparameters, as convert_hf_to_gguf.py writes them. */
export function architectureMetadata(config: LlamaConfig, opts: { quant: 'f32' | 'q4_0'; name?: string }): Map<string, GgufTypedValue> {
  const LLAMA_FTYPE_ALL_F32 = 0;
  const LLAMA_FTYPE_MOSTLY_Q4_0 = 2;
  const arch = config.architecture;
  const key = (name: string) => `${arch}.${name}`;
  const m = new Map<string, GgufTypedValue>();
  m.set('general.architecture', gguf.str(arch));
  if (opts.name !== undefined) m.set('general.name', gguf.str(opts.name));
  m.set('general.file_type', gguf.u32(opts.quant === 'q4_0' ? LLAMA_FTYPE_MOSTLY_Q4_0 : LLAMA_FTYPE_ALL_F32));
  // LlamaModel writes vocab_size and rope.dimension_count; the Qwen converters do not.
  if (arch === 'llama') m.set(key('vocab_size'), gguf.u32(config.vocab_size));
  m.set(key('context_length'), gguf.u32(config.max_position_embeddings));
  m.set(key('embedding_length'), gguf.u32(config.hidden_size));
  m.set(key('block_count'), gguf.u32(config.num_hidden_layers));
  m.set(key('feed_forward_length'), gguf.u32(config.intermediate_size));
  if (arch === 'llama') m.set(key('rope.dimension_count'), gguf.u32(config.head_dim));
  m.set(key('rope.freq_base'), gguf.f32(config.rope_theta));
  m.set(key('attention.head_count'), gguf.u32(config.num_attention_heads));
  m.set(key('attention.head_count_kv'), gguf.u32(config.num_key_value_heads));
  m.set(key('attention.layer_norm_rms_epsilon'), gguf.f32(config.rms_norm_eps));
  if (config.head_dim * config.num_attention_heads !== config.hidden_size) {
    m.set(key('attention.key_length'), gguf.u32(config.head_dim));
    m.set(key('attention.value_length'), gguf.u32(config.head_dim));
  }
  if (config.rope_scaling?.rope_type === 'linear') {
    m.set(key('rope.scaling.type'), gguf.str('linear'));
    m.set(key('rope.scaling.factor'), gguf.f32(config.rope_scaling.factor));
  }
  return m;
}
