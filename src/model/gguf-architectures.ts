/**
 * The mapping between a GGUF model file's architecture metadata and tensors and our LlamaConfig /
 * LlamaWeights, both ways (llama.cpp's convert_hf_to_gguf.py names, src/llama-arch.cpp).
 */
import { copyBytes, GgmlType } from '../formats/ggml-quants.js';
import { GgufMetadataReader, gguf, shortestF32Decimal, type GgufFile, type GgufTensorInfo, type GgufTensorSpec, type GgufTypedValue } from '../formats/gguf-file.js';
import { dequantizeQ4_0 } from '../formats/ggml-quants.js';
import type { LlamaConfig, LlamaLayer, LlamaWeights, Matrix, SentencePieceVocab } from './types.js';

/** Types we keep quantized in memory; the engine multiplies with them directly. */
const KEEP_QUANTIZED: ReadonlySet<number> = new Set([GgmlType.Q4_0]);

export function configFromGguf(file: GgufFile, vocab: SentencePieceVocab, tied: boolean): LlamaConfig {
  const meta = new GgufMetadataReader(file);
  const hidden = meta.number('llama.embedding_length');
  const heads = meta.number('llama.attention.head_count');
  const headDim = meta.number('llama.attention.key_length', hidden / heads);
  if (!Number.isInteger(headDim)) throw new Error(`${file.path}: embedding_length ${hidden} not divisible by ${heads} heads`);
  if (meta.number('llama.attention.value_length', headDim) !== headDim) {
    throw new Error(`${file.path}: key_length != value_length is not supported`);
  }
  // Partial rotary embeddings have no representation in LlamaConfig: refuse rather than misrun.
  const ropeDims = meta.number('llama.rope.dimension_count', headDim);
  if (ropeDims !== headDim) throw new Error(`${file.path}: rope.dimension_count ${ropeDims} != head_dim ${headDim} is not supported`);
  if (file.metadata.has('llama.rope.scaling.type') && meta.string('llama.rope.scaling.type') !== 'none') {
    throw new Error(`${file.path}: RoPE scaling (${meta.string('llama.rope.scaling.type')}) is not supported`);
  }

  const vocabSize = vocab.tokens.length;
  const declared = meta.number('llama.vocab_size', vocabSize);
  if (declared !== vocabSize) throw new Error(`${file.path}: llama.vocab_size ${declared} != ${vocabSize} tokens`);

  return {
    architecture: 'llama',
    hidden_size: hidden,
    intermediate_size: meta.number('llama.feed_forward_length'),
    num_hidden_layers: meta.number('llama.block_count'),
    num_attention_heads: heads,
    num_key_value_heads: meta.number('llama.attention.head_count_kv', heads),
    head_dim: headDim,
    vocab_size: vocabSize,
    max_position_embeddings: meta.number('llama.context_length'),
    rope_theta: shortestF32Decimal(meta.number('llama.rope.freq_base', 10000)),
    rope_style: 'interleaved',
    rope_scaling: null,
    attention_bias: false,
    qk_norm: false,
    rms_norm_eps: shortestF32Decimal(meta.number('llama.attention.layer_norm_rms_epsilon')),
    tie_word_embeddings: tied,
    bos_token_id: vocab.bos,
    eos_token_id: vocab.eos,
  };
}

export function weightsFromGguf(file: GgufFile, config: LlamaConfig): LlamaWeights {
  const hidden = config.hidden_size;
  const kvDim = config.num_key_value_heads * config.head_dim;
  const qDim = config.num_attention_heads * config.head_dim;
  const ffn = config.intermediate_size;

  const vector = (name: string, length: number): Float32Array => {
    const info = file.requireTensor(name);
    expectDims(info, [length], file.path);
    return file.tensorF32(info);
  };
  const matrix = (name: string, rows: number, cols: number): Matrix => {
    const info = file.requireTensor(name);
    expectDims(info, [cols, rows], file.path);
    if (KEEP_QUANTIZED.has(info.type)) return { kind: 'q4_0', rows, cols, data: copyBytes(file.tensorBytes(info)) };
    return { kind: 'f32', rows, cols, data: file.tensorF32(info) };
  };

  const embeddings = file.requireTensor('token_embd.weight');
  expectDims(embeddings, [hidden, config.vocab_size], file.path);

  const layers: LlamaLayer[] = [];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `blk.${i}.`;
    layers.push({
      attnNorm: vector(`${p}attn_norm.weight`, hidden),
      wq: matrix(`${p}attn_q.weight`, qDim, hidden),
      wk: matrix(`${p}attn_k.weight`, kvDim, hidden),
      wv: matrix(`${p}attn_v.weight`, kvDim, hidden),
      wo: matrix(`${p}attn_output.weight`, hidden, qDim),
      ffnNorm: vector(`${p}ffn_norm.weight`, hidden),
      gate: matrix(`${p}ffn_gate.weight`, ffn, hidden),
      down: matrix(`${p}ffn_down.weight`, hidden, ffn),
      up: matrix(`${p}ffn_up.weight`, ffn, hidden),
    });
  }

  return {
    config,
    tokEmbeddings: file.tensorF32(embeddings),
    layers,
    finalNorm: vector('output_norm.weight', hidden),
    output: config.tie_word_embeddings ? null : matrix('output.weight', config.vocab_size, hidden),
  };
}

function expectDims(info: GgufTensorInfo, expected: number[], where: string): void {
  if (info.dims.length !== expected.length || info.dims.some((d, i) => d !== expected[i])) {
    throw new Error(`${where}: tensor ${info.name} has ne=[${info.dims}], expected [${expected}]`);
  }
}

export function architectureTensors(weights: LlamaWeights, quant: 'f32' | 'q4_0'): GgufTensorSpec[] {
  const { config } = weights;
  const f32 = (name: string, data: Float32Array, dims: number[]): GgufTensorSpec => ({ name, dims, type: GgmlType.F32, data });
  const vector = (name: string, data: Float32Array): GgufTensorSpec => f32(name, data, [data.length]);
  const matrix = (name: string, m: Matrix): GgufTensorSpec => matrixTensor(name, m, quant);

  const tensors: GgufTensorSpec[] = [
    f32('token_embd.weight', weights.tokEmbeddings, [config.hidden_size, config.vocab_size]),
    vector('output_norm.weight', weights.finalNorm),
  ];
  if (weights.output) tensors.push(matrix('output.weight', weights.output));
  weights.layers.forEach((layer, i) => {
    const p = `blk.${i}.`;
    tensors.push(
      vector(`${p}attn_norm.weight`, layer.attnNorm),
      matrix(`${p}attn_q.weight`, layer.wq),
      matrix(`${p}attn_k.weight`, layer.wk),
      matrix(`${p}attn_v.weight`, layer.wv),
      matrix(`${p}attn_output.weight`, layer.wo),
      vector(`${p}ffn_norm.weight`, layer.ffnNorm),
      matrix(`${p}ffn_gate.weight`, layer.gate),
      matrix(`${p}ffn_down.weight`, layer.down),
      matrix(`${p}ffn_up.weight`, layer.up),
    );
  });
  return tensors;
}

function matrixTensor(name: string, m: Matrix, quant: 'f32' | 'q4_0'): GgufTensorSpec {
  const dims = [m.cols, m.rows];
  if (m.kind === 'q4_0') {
    return quant === 'q4_0'
      ? { name, dims, type: GgmlType.Q4_0, data: m.data }
      : { name, dims, type: GgmlType.F32, data: dequantizeQ4_0(m.data, m.rows * m.cols) };
  }
  const quantize = quant === 'q4_0' && m.cols % 32 === 0;
  return { name, dims, type: quantize ? GgmlType.Q4_0 : GgmlType.F32, data: m.data };
}

/** general.* and the architecture's hyperparameters, as convert_hf_to_gguf.py writes them. */
export function architectureMetadata(config: LlamaConfig, opts: { quant: 'f32' | 'q4_0'; name?: string }): Map<string, GgufTypedValue> {
  const LLAMA_FTYPE_ALL_F32 = 0;
  const LLAMA_FTYPE_MOSTLY_Q4_0 = 2;
  const m = new Map<string, GgufTypedValue>();
  m.set('general.architecture', gguf.str('llama'));
  if (opts.name !== undefined) m.set('general.name', gguf.str(opts.name));
  m.set('general.file_type', gguf.u32(opts.quant === 'q4_0' ? LLAMA_FTYPE_MOSTLY_Q4_0 : LLAMA_FTYPE_ALL_F32));
  m.set('llama.vocab_size', gguf.u32(config.vocab_size));
  m.set('llama.context_length', gguf.u32(config.max_position_embeddings));
  m.set('llama.embedding_length', gguf.u32(config.hidden_size));
  m.set('llama.block_count', gguf.u32(config.num_hidden_layers));
  m.set('llama.feed_forward_length', gguf.u32(config.intermediate_size));
  m.set('llama.rope.dimension_count', gguf.u32(config.head_dim));
  m.set('llama.rope.freq_base', gguf.f32(config.rope_theta));
  m.set('llama.attention.head_count', gguf.u32(config.num_attention_heads));
  m.set('llama.attention.head_count_kv', gguf.u32(config.num_key_value_heads));
  m.set('llama.attention.layer_norm_rms_epsilon', gguf.f32(config.rms_norm_eps));
  if (config.head_dim * config.num_attention_heads !== config.hidden_size) {
    m.set('llama.attention.key_length', gguf.u32(config.head_dim));
    m.set('llama.attention.value_length', gguf.u32(config.head_dim));
  }
  return m;
}
