/**
 * Writes a model as a Hugging Face folder the way transformers' convert_llama_weights_to_hf.py
 * and `save_pretrained` do: HF tensor names, q_proj / k_proj rows permuted for rotate-half RoPE,
 * config.json with LlamaConfig's, Qwen2Config's or Qwen3Config's fields (by the weights'
 * config.architecture), safetensors in one file or shards with an index.
 *
 * Qwen checkpoints are natively rotate-half; our in-memory layout is interleaved (src/model/types.ts),
 * so the same permutation turns our q/k rows, q/k biases and q/k norm weights into what a Qwen
 * folder holds.
 * Independent of the importer under test (src/model/hf-folder.ts): only the file format writer and
 * the f16/bf16 encoders are shared.
 */
import fs from 'node:fs';
import path from 'node:path';
import { serializeSafetensors, type TensorInput } from '../../src/formats/safetensors.js';
import { f32ToBf16, f32ToF16 } from '../../src/formats/half.js';
import type { LlamaWeights, Matrix } from '../../src/model/types.js';

export type HfDtype = 'F32' | 'F16' | 'BF16';

export interface HfFolderOptions {
  dtype: HfDtype;
  /** 1: model.safetensors; more: model-0000i-of-0000n.safetensors + model.safetensors.index.json. */
  shards: number;
  /** A folder holding tokenizer.json and tokenizer_config.json (e.g. an imported package). */
  tokenizerFrom: string;
  /** Write lm_head.weight (a copy of the embeddings when the model is tied) and tie_word_embeddings false. */
  untie?: boolean;
  /** Merged into config.json last (null deletes a key). */
  config?: Record<string, unknown>;
  /** Tensors left out, to test refusals. */
  omit?: string[];
  chatTemplateJinja?: string;
  generationConfig?: Record<string, unknown>;
}

/**
 * transformers' `permute(w, n_heads, dim1, dim2)`:
 * `w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)`.
 * Output row r is (head, j, i) in the transposed (heads, 2, d/2) view; it reads (head, i, j) of the input view.
 */
export function hfPermute(w: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const half = headDim / 2;
  const rows = heads * headDim;
  if (w.length !== rows * cols) throw new Error(`hfPermute: ${w.length} values for [${rows}, ${cols}]`);
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    const [head, j, i] = [Math.floor(r / headDim), Math.floor((r % headDim) / half), r % half];
    const from = head * headDim + i * 2 + j;
    out.set(w.subarray(from * cols, (from + 1) * cols), r * cols);
  }
  return out;
}

function f32(m: Matrix): Float32Array {
  if (m.kind !== 'f32') throw new Error('hf-folder helper: f32 matrices only');
  return m.data;
}

function encode(data: Float32Array, shape: number[], dtype: HfDtype): TensorInput {
  if (dtype === 'F32') return { dtype, shape, data };
  const bits = dtype === 'F16' ? Uint16Array.from(data, f32ToF16) : Uint16Array.from(data, f32ToBf16);
  return { dtype, shape, data: bits };
}

/** The HF tensors of a Meta-layout (llama2.c / GGUF) checkpoint, in save_pretrained's order. */
export function hfTensors(w: LlamaWeights, untie = false): [string, Float32Array, number[]][] {
  const c = w.config;
  const d = c.hidden_size;
  const hd = c.head_dim;
  const qDim = c.num_attention_heads * hd;
  const kvDim = c.num_key_value_heads * hd;
  const ff = c.intermediate_size;
  const out: [string, Float32Array, number[]][] = [['model.embed_tokens.weight', w.tokEmbeddings, [c.vocab_size, d]]];
  const need = (v: Float32Array | undefined, what: string): Float32Array => {
    if (!v) throw new Error(`hf-folder helper: ${c.architecture} weights without ${what}`);
    return v;
  };
  w.layers.forEach((l, i) => {
    const p = `model.layers.${i}.`;
    out.push(
      [`${p}self_attn.q_proj.weight`, hfPermute(f32(l.wq), c.num_attention_heads, hd, d), [qDim, d]],
      [`${p}self_attn.k_proj.weight`, hfPermute(f32(l.wk), c.num_key_value_heads, hd, d), [kvDim, d]],
      [`${p}self_attn.v_proj.weight`, f32(l.wv), [kvDim, d]],
      [`${p}self_attn.o_proj.weight`, f32(l.wo), [d, qDim]],
    );
    if (c.attention_bias) {
      out.push(
        [`${p}self_attn.q_proj.bias`, hfPermute(need(l.qBias, 'qBias'), c.num_attention_heads, hd, 1), [qDim]],
        [`${p}self_attn.k_proj.bias`, hfPermute(need(l.kBias, 'kBias'), c.num_key_value_heads, hd, 1), [kvDim]],
        [`${p}self_attn.v_proj.bias`, need(l.vBias, 'vBias'), [kvDim]],
      );
    }
    if (c.qk_norm) {
      out.push(
        [`${p}self_attn.q_norm.weight`, hfPermute(need(l.qNorm, 'qNorm'), 1, hd, 1), [hd]],
        [`${p}self_attn.k_norm.weight`, hfPermute(need(l.kNorm, 'kNorm'), 1, hd, 1), [hd]],
      );
    }
    out.push(
      [`${p}mlp.gate_proj.weight`, f32(l.gate), [ff, d]],
      [`${p}mlp.down_proj.weight`, f32(l.down), [d, ff]],
      [`${p}mlp.up_proj.weight`, f32(l.up), [ff, d]],
      [`${p}input_layernorm.weight`, l.attnNorm, [d]],
      [`${p}post_attention_layernorm.weight`, l.ffnNorm, [d]],
    );
  });
  out.push(['model.norm.weight', w.finalNorm, [d]]);
  if (w.output) out.push(['lm_head.weight', f32(w.output), [c.vocab_size, d]]);
  else if (untie) out.push(['lm_head.weight', w.tokEmbeddings, [c.vocab_size, d]]);
  return out;
}

/** config.json's rope_scaling, as transformers writes Llama 3.1+'s (keys sorted, floats as floats). */
function hfRopeScaling(c: LlamaWeights['config']): Record<string, unknown> | null {
  const s = c.rope_scaling;
  if (!s) return null;
  if (s.rope_type === 'factors') throw new Error('hf-folder helper: a Hugging Face config has no per-frequency RoPE factors');
  return Object.fromEntries(Object.entries(s).sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * config.json as `save_pretrained` writes it (keys sorted): LlamaConfig.to_dict() of transformers
 * 4.46, Qwen2Config's of 4.46 (no attention_bias or head_dim key: Qwen2 always has q/k/v biases
 * and head_dim = hidden / heads; a sliding_window that use_sliding_window false switches off, as
 * Qwen2.5's configs have), Qwen3Config's of 4.51 (explicit head_dim, attention_bias false,
 * sliding_window null).
 */
export function hfConfig(w: LlamaWeights, tied: boolean, dtype: HfDtype): Record<string, unknown> {
  const c = w.config;
  const common = {
    attention_dropout: 0.0,
    bos_token_id: c.bos_token_id,
    eos_token_id: c.eos_token_id,
    hidden_act: 'silu',
    hidden_size: c.hidden_size,
    initializer_range: 0.02,
    intermediate_size: c.intermediate_size,
    max_position_embeddings: c.max_position_embeddings,
    num_attention_heads: c.num_attention_heads,
    num_hidden_layers: c.num_hidden_layers,
    num_key_value_heads: c.num_key_value_heads,
    rms_norm_eps: c.rms_norm_eps,
    rope_scaling: hfRopeScaling(c),
    rope_theta: c.rope_theta,
    tie_word_embeddings: tied,
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
    use_cache: true,
    vocab_size: c.vocab_size,
  };
  const byArchitecture = {
    llama: {
      architectures: ['LlamaForCausalLM'],
      attention_bias: false,
      head_dim: c.head_dim,
      mlp_bias: false,
      model_type: 'llama',
      pretraining_tp: 1,
      transformers_version: '4.46.0',
    },
    qwen2: {
      architectures: ['Qwen2ForCausalLM'],
      max_window_layers: c.num_hidden_layers,
      model_type: 'qwen2',
      sliding_window: c.max_position_embeddings,
      transformers_version: '4.46.0',
      use_sliding_window: false,
    },
    qwen3: {
      architectures: ['Qwen3ForCausalLM'],
      attention_bias: false,
      head_dim: c.head_dim,
      max_window_layers: c.num_hidden_layers,
      model_type: 'qwen3',
      sliding_window: null,
      transformers_version: '4.51.0',
      use_sliding_window: false,
    },
  }[c.architecture];
  const all: Record<string, unknown> = { ...common, ...byArchitecture };
  return Object.fromEntries(Object.keys(all).sort().map((k) => [k, all[k]]));
}

export function writeHfFolder(dir: string, w: LlamaWeights, o: HfFolderOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  const tied = w.output === null && !o.untie;
  const config: Record<string, unknown> = { ...hfConfig(w, tied, o.dtype), ...o.config };
  for (const [k, v] of Object.entries(config)) if (v === null && o.config && k in o.config) delete config[k];
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));

  const tensors = hfTensors(w, o.untie).filter(([name]) => !o.omit?.includes(name));
  if (o.shards === 1) {
    const all = Object.fromEntries(tensors.map(([n, data, shape]) => [n, encode(data, shape, o.dtype)]));
    fs.writeFileSync(path.join(dir, 'model.safetensors'), serializeSafetensors(all, { format: 'pt' }));
  } else {
    const per = Math.ceil(tensors.length / o.shards);
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (let s = 0; s < o.shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(o.shards).padStart(5, '0')}.safetensors`;
      const part = tensors.slice(s * per, (s + 1) * per);
      const enc = Object.fromEntries(part.map(([n, data, shape]) => [n, encode(data, shape, o.dtype)]));
      fs.writeFileSync(path.join(dir, file), serializeSafetensors(enc, { format: 'pt' }));
      for (const [n, data] of part) {
        weightMap[n] = file;
        totalSize += data.length * (o.dtype === 'F32' ? 4 : 2);
      }
    }
    const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  }
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(o.tokenizerFrom, f), path.join(dir, f));
  if (o.chatTemplateJinja !== undefined) fs.writeFileSync(path.join(dir, 'chat_template.jinja'), o.chatTemplateJinja);
  if (o.generationConfig) fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify(o.generationConfig, null, 2));
}
