/**
 * Import of a Hugging Face model folder as `save_pretrained` writes it, for the Llama architecture
 * (`LlamaForCausalLM`, Llama 3.1+'s RoPE scaling included; `MistralForCausalLM`, the same graph
 * plus a sliding window) and its two Qwen variants (`Qwen2ForCausalLM`: q/k/v biases;
 * `Qwen3ForCausalLM`: per-head q/k RMSNorm, head_dim independent of hidden_size):
 * `config.json`; `model.safetensors`, or shards listed by `model.safetensors.index.json`, in F32,
 * F16 or BF16 (decoded to f32 here); `tokenizer.json` + `tokenizer_config.json` (copied into the
 * package as they are); optional `chat_template.jinja` and `generation_config.json`.
 *
 * transformers' convert_llama_weights_to_hf.py permutes the rows of q_proj and k_proj so that
 * RoPE rotates the two halves of each head (x[i], x[i + d/2]); our graph, like llama2.c and GGUF
 * llama (llama.cpp's converter undoes the permutation), rotates adjacent pairs (x[2i], x[2i+1]).
 * unpermuteRows undoes it, so a folder imports to exactly the weights of the Meta checkpoint.
 * Qwen checkpoints were trained with rotate-half RoPE, so their rows are natively in that order:
 * the same row permutation applied to q and k (and to their biases and norm weights) leaves every
 * q·k, hence the attention, unchanged, and lets one interleaved graph serve all three.
 */
import { createHash } from 'node:crypto';
import { sha256File } from '../core/file-digest.js';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { readSafetensors, type DecodedTensor } from '../formats/safetensors.js';
import { bf16ToF32, f16LookupTable } from '../formats/half.js';
import type { LlamaConfig, LlamaLayer, LlamaWeights, Matrix, ModelArchitecture, RopeScaling } from './types.js';

export const HF_FILES = {
  config: 'config.json',
  weights: 'model.safetensors',
  weightsIndex: 'model.safetensors.index.json',
  tokenizer: 'tokenizer.json',
  tokenizerConfig: 'tokenizer_config.json',
  chatTemplate: 'chat_template.jinja',
  generationConfig: 'generation_config.json',
} as const;

export const SUPPORTED_HF_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM'] as const;
type HfArchitecture = (typeof SUPPORTED_HF_ARCHITECTURES)[number];

const ARCHITECTURE: Record<HfArchitecture, ModelArchitecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
};

export interface HfFolderCheckpoint {
  weights: LlamaWeights;
  /** tokenizer.json, byte for byte. */
  tokenizerJson: Buffer;
  /** tokenizer_config.json, with `chat_template` from chat_template.jinja when the folder has one. */
  tokenizerConfig: Record<string, unknown>;
  /** The package's generation_config.json: the folder's, with the model's BOS/EOS (EOS may be a list). */
  generationConfig: Record<string, unknown>;
  source: { format: 'hf'; path: string; sha256: string };
}

/** A folder with config.json is a Hugging Face model folder (a model package has carryon-package.json too). */
export function isHfFolder(dir: string): boolean {
  return fs.existsSync(path.join(dir, HF_FILES.config));
}

const TokenId = z.number().int().nonnegative();

const HfLlamaConfig = z.object({
  architectures: z.array(z.string()).optional(),
  model_type: z.string().optional(),
  hidden_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive().nullish(),
  head_dim: z.number().int().positive().nullish(),
  vocab_size: z.number().int().positive(),
  max_position_embeddings: z.number().int().positive(),
  rope_theta: z.number().positive().nullish(),
  rope_scaling: z.record(z.string(), z.unknown()).nullish(),
  /** transformers 5 keeps RoPE settings here instead of rope_theta / rope_scaling. */
  rope_parameters: z.record(z.string(), z.unknown()).nullish(),
  rms_norm_eps: z.number().positive().nullish(),
  tie_word_embeddings: z.boolean().nullish(),
  attention_bias: z.boolean().nullish(),
  mlp_bias: z.boolean().nullish(),
  hidden_act: z.string().nullish(),
  sliding_window: z.number().int().positive().nullish(),
  /** Qwen2/Qwen3: whether sliding_window applies at all (false in the released models). */
  use_sliding_window: z.boolean().nullish(),
  /** Qwen2/Qwen3: layers below this index attend fully even when use_sliding_window is true. */
  max_window_layers: z.number().int().nonnegative().nullish(),
  /** transformers ≥ 4.53 spells the per-layer choice out. */
  layer_types: z.array(z.string()).nullish(),
  bos_token_id: TokenId.nullish(),
  eos_token_id: z.union([TokenId, z.array(TokenId).min(1)]).nullish(),
});
type HfLlamaConfig = z.infer<typeof HfLlamaConfig> & { architecture: HfArchitecture };

/** The files of the folder that the import reads, in a fixed order (for the source hash). */
function sourceFiles(dir: string): string[] {
  const files: string[] = [HF_FILES.config];
  if (fs.existsSync(path.join(dir, HF_FILES.weightsIndex))) {
    files.push(HF_FILES.weightsIndex, ...[...new Set(readIndex(dir).values())].sort());
  } else {
    files.push(HF_FILES.weights);
  }
  files.push(HF_FILES.tokenizer, HF_FILES.tokenizerConfig);
  for (const optional of [HF_FILES.chatTemplate, HF_FILES.generationConfig]) {
    if (fs.existsSync(path.join(dir, optional))) files.push(optional);
  }
  return files;
}

/**
 * sha256 over the names and sha256s of the files the import reads: a changed config, shard,
 * tokenizer or template makes CARRYON_MODEL=DIR import again, anything else in the folder does not.
 */
export async function hfFolderSha256(dir: string): Promise<string> {
  const all = createHash('sha256');
  for (const name of sourceFiles(dir)) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) throw new Error(`${dir}: missing ${name}`);
    all.update(`${name}\0${await sha256File(file)}\n`);
  }
  return all.digest('hex');
}

export async function hfFolderToCheckpoint(dir: string): Promise<HfFolderCheckpoint> {
  const raw = readJson(dir, HF_FILES.config);
  const hf = parseConfig(raw, dir);
  const config = toLlamaConfig(hf, dir);
  for (const name of [HF_FILES.tokenizer, HF_FILES.tokenizerConfig]) {
    if (!fs.existsSync(path.join(dir, name))) throw new Error(`${dir}: missing ${name} (the model's Hugging Face tokenizer)`);
  }
  const weights = readWeights(dir, config);
  const tokenizerJson = fs.readFileSync(path.join(dir, HF_FILES.tokenizer));
  const tokenizerConfig = readJson(dir, HF_FILES.tokenizerConfig);
  const templateFile = path.join(dir, HF_FILES.chatTemplate);
  // transformers prefers the separate file when both exist.
  if (fs.existsSync(templateFile)) tokenizerConfig.chat_template = fs.readFileSync(templateFile, 'utf8');
  else if (tokenizerConfig.chat_template !== undefined) tokenizerConfig.chat_template = pickChatTemplate(tokenizerConfig.chat_template, dir);

  const generation = fs.existsSync(path.join(dir, HF_FILES.generationConfig)) ? readJson(dir, HF_FILES.generationConfig) : {};
  const generationConfig = {
    ...generation,
    bos_token_id: generation.bos_token_id ?? config.bos_token_id,
    eos_token_id: generation.eos_token_id ?? hf.eos_token_id ?? config.eos_token_id,
    max_length: config.max_position_embeddings,
  };
  const sha256 = await hfFolderSha256(dir);
  return { weights, tokenizerJson, tokenizerConfig, generationConfig, source: { format: 'hf', path: dir, sha256 } };
}

function readJson(dir: string, name: string): Record<string, unknown> {
  const file = path.join(dir, name);
  if (!fs.existsSync(file)) throw new Error(`${dir}: missing ${name}`);
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: not JSON (${(err as Error).message})`, { cause: err });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${file}: not a JSON object`);
  return value as Record<string, unknown>;
}

function parseConfig(raw: Record<string, unknown>, dir: string): HfLlamaConfig {
  const archs = raw.architectures;
  const supported: readonly string[] = SUPPORTED_HF_ARCHITECTURES;
  if (!Array.isArray(archs) || archs.length !== 1 || typeof archs[0] !== 'string' || !supported.includes(archs[0])) {
    throw new Error(
      `${dir}/${HF_FILES.config}: architectures is ${JSON.stringify(archs)}; supported: ${SUPPORTED_HF_ARCHITECTURES.join(', ')}`,
    );
  }
  const parsed = HfLlamaConfig.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new Error(`${dir}/${HF_FILES.config}: ${issues}`);
  }
  return { ...parsed.data, architecture: archs[0] as HfArchitecture };
}

function toLlamaConfig(hf: HfLlamaConfig, dir: string): LlamaConfig {
  const where = `${dir}/${HF_FILES.config}`;
  const unsupported = (what: string) => new Error(`${where}: ${what} is not supported`);
  const architecture = ARCHITECTURE[hf.architecture];
  // Qwen2 always has q/k/v biases (its config has no attention_bias key) and no o_proj bias.
  // Llama's and Qwen3's attention_bias would also put a bias on o_proj, which the graph lacks.
  if (architecture !== 'qwen2' && hf.attention_bias) throw unsupported('attention_bias: true');
  if (hf.mlp_bias) throw unsupported('mlp_bias: true');
  if (hf.hidden_act && hf.hidden_act !== 'silu') throw unsupported(`hidden_act ${JSON.stringify(hf.hidden_act)} (only silu)`);
  const heads = hf.num_attention_heads;
  const kvHeads = hf.num_key_value_heads ?? heads;
  // An explicit head_dim may make heads·head_dim differ from hidden_size (Qwen3: 16·128 vs 1024).
  const headDim = hf.head_dim ?? hf.hidden_size / heads;
  if (!Number.isInteger(headDim)) throw unsupported(`hidden_size ${hf.hidden_size} over ${heads} heads (no integer head_dim)`);
  if (headDim % 2 !== 0) throw unsupported(`odd head_dim ${headDim}`);
  if (heads % kvHeads !== 0) throw new Error(`${where}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const ropeTheta = hf.rope_theta ?? (typeof hf.rope_parameters?.rope_theta === 'number' ? hf.rope_parameters.rope_theta : 10000);
  // A sliding window changes attention only past `sliding_window` positions: serving at most that
  // many keeps the graph exact.
  const context = Math.min(hf.max_position_embeddings, slidingWindow(hf));
  const eos = hf.eos_token_id ?? 2;
  return {
    architecture,
    hidden_size: hf.hidden_size,
    intermediate_size: hf.intermediate_size,
    num_hidden_layers: hf.num_hidden_layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    vocab_size: hf.vocab_size,
    max_position_embeddings: context,
    rope_theta: ropeTheta,
    rope_style: 'interleaved',
    rope_scaling: ropeScaling(hf, where),
    attention_bias: architecture === 'qwen2',
    qk_norm: architecture === 'qwen3',
    // LlamaConfig's defaults, for keys an old config.json leaves out.
    rms_norm_eps: hf.rms_norm_eps ?? 1e-6,
    tie_word_embeddings: hf.tie_word_embeddings ?? false,
    bos_token_id: hf.bos_token_id ?? 1,
    eos_token_id: Array.isArray(eos) ? eos[0] : eos,
  };
}

/**
 * The context cap a sliding window imposes, Infinity when none. Mistral slides in every layer
 * whenever sliding_window is set. Qwen2/Qwen3 configs always carry a sliding_window, but
 * transformers applies it only with use_sliding_window true (false in the released models), and
 * then only in layers from max_window_layers on (default 28), or where layer_types says
 * 'sliding_attention'.
 */
function slidingWindow(hf: HfLlamaConfig): number {
  const window = hf.sliding_window;
  if (!window) return Infinity;
  if (ARCHITECTURE[hf.architecture] === 'llama') return window;
  const slides = hf.layer_types
    ? hf.layer_types.includes('sliding_attention')
    : hf.use_sliding_window === true && (hf.max_window_layers ?? 28) < hf.num_hidden_layers;
  return slides ? window : Infinity;
}

/** RoPE types the graph computes exactly (src/model/onnx-graph.ts ropeInverseFrequencies). */
const ROPE_TYPES = ['default', 'linear', 'llama3'];

/**
 * rope_scaling (transformers 4: `rope_type`, or `type` in older files) or rope_parameters
 * (transformers 5, which also holds rope_theta and says 'default' when there is no scaling).
 */
function ropeScaling(hf: HfLlamaConfig, where: string): RopeScaling | null {
  const [key, r] = hf.rope_scaling ? ['rope_scaling', hf.rope_scaling] : ['rope_parameters', hf.rope_parameters];
  if (!r) return null;
  const t = r.rope_type ?? r.type ?? 'default';
  const type = typeof t === 'string' ? t : JSON.stringify(t);
  if (!ROPE_TYPES.includes(type)) {
    const what = key === 'rope_scaling' ? `rope_scaling ${JSON.stringify(type)}` : `rope_parameters.rope_type ${JSON.stringify(type)}`;
    throw new Error(`${where}: ${what} is not supported (supported: ${ROPE_TYPES.join(', ')})`);
  }
  const num = (name: string): number => {
    const v = r[name];
    if (typeof v !== 'number' || !(v > 0)) throw new Error(`${where}: ${key}.${name} must be a positive number for ${type} RoPE, got ${JSON.stringify(v)}`);
    return v;
  };
  if (type === 'default') return null;
  if (type === 'linear') return { rope_type: 'linear', factor: num('factor') };
  const scaling = {
    rope_type: 'llama3' as const,
    factor: num('factor'),
    low_freq_factor: num('low_freq_factor'),
    high_freq_factor: num('high_freq_factor'),
    original_max_position_embeddings: num('original_max_position_embeddings'),
  };
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    throw new Error(`${where}: ${key}.high_freq_factor must exceed low_freq_factor for llama3 RoPE`);
  }
  return scaling;
}

function pickChatTemplate(value: unknown, dir: string): string {
  if (typeof value === 'string') return value;
  // Several named templates: [{ name, template }]; the chat endpoint uses 'default'.
  if (Array.isArray(value)) {
    const named = value as { name?: unknown; template?: unknown }[];
    const found = named.find((t) => t.name === 'default');
    if (typeof found?.template === 'string') return found.template;
  }
  throw new Error(`${dir}/${HF_FILES.tokenizerConfig}: chat_template is neither a string nor a list with a 'default' template`);
}

/** model.safetensors.index.json's weight_map: tensor name -> shard file. */
function readIndex(dir: string): Map<string, string> {
  const index = readJson(dir, HF_FILES.weightsIndex);
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new Error(`${dir}/${HF_FILES.weightsIndex}: no weight_map object`);
  }
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || file !== path.basename(file)) {
      throw new Error(`${dir}/${HF_FILES.weightsIndex}: weight_map.${name} is not a file name in the folder`);
    }
    out.set(name, file);
  }
  return out;
}

/** Every tensor of the folder, from model.safetensors or from the shards the index names. */
function readTensors(dir: string): Map<string, DecodedTensor> {
  const single = path.join(dir, HF_FILES.weights);
  const hasIndex = fs.existsSync(path.join(dir, HF_FILES.weightsIndex));
  if (!hasIndex && !fs.existsSync(single)) {
    const other = fs.readdirSync(dir).filter((f) => /\.(bin|pt|pth|ckpt)$/.test(f));
    const hint = other.length > 0 ? ` (found ${other.join(', ')}: only safetensors weights are read)` : '';
    throw new Error(`${dir}: missing ${HF_FILES.weights} or ${HF_FILES.weightsIndex}${hint}`);
  }
  const index = hasIndex ? readIndex(dir) : null;
  const files = index ? [...new Set(index.values())].sort() : [HF_FILES.weights];
  const tensors = new Map<string, DecodedTensor>();
  for (const name of files) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) throw new Error(`${dir}: missing weight shard ${name} (named by ${HF_FILES.weightsIndex})`);
    let decoded: ReturnType<typeof readSafetensors>;
    try {
      decoded = readSafetensors(file);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`, { cause: err });
    }
    for (const [tensor, t] of decoded.tensors) {
      if (index && index.get(tensor) !== name) continue; // the index is what save_pretrained meant
      if (tensors.has(tensor)) throw new Error(`${dir}: tensor ${tensor} appears in two files`);
      tensors.set(tensor, t);
    }
  }
  if (index) {
    for (const [tensor, file] of index) {
      if (!tensors.has(tensor)) throw new Error(`${dir}/${file}: missing tensor ${tensor} (listed in ${HF_FILES.weightsIndex})`);
    }
  }
  return tensors;
}

const ARCHITECTURE_NAMES: Record<ModelArchitecture, string> = { llama: 'Llama', qwen2: 'Qwen2', qwen3: 'Qwen3' };

/** Tensors save_pretrained may write that the model does not use. */
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

function readWeights(dir: string, c: LlamaConfig): LlamaWeights {
  const tensors = readTensors(dir);
  const used = new Set<string>();
  const take = (name: string, shape: number[]): Float32Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${dir}: missing tensor ${name}`);
    if (t.shape.join(',') !== shape.join(',')) throw new Error(`${dir}: tensor ${name} has shape [${t.shape}], expected [${shape}]`);
    used.add(name);
    return toF32(t, `${dir}: tensor ${name}`);
  };
  const matrix = (name: string, rows: number, cols: number): Matrix & { kind: 'f32' } => ({ kind: 'f32', rows, cols, data: take(name, [rows, cols]) });
  const d = c.hidden_size;
  const hd = c.head_dim;
  const qDim = c.num_attention_heads * hd;
  const kvDim = c.num_key_value_heads * hd;
  const ff = c.intermediate_size;
  // q/k rows (and with them q/k biases, one value per row, and the q/k norm weights, one head)
  // from the file's rotate-half order into the graph's interleaved order.
  const ropeRows = (name: string, heads: number, cols: number): Float32Array =>
    unpermuteRows(take(name, cols === 1 ? [heads * hd] : [heads * hd, cols]), heads, hd, cols);
  const layers: LlamaLayer[] = Array.from({ length: c.num_hidden_layers }, (_, i) => {
    const p = `model.layers.${i}.`;
    const layer: LlamaLayer = {
      attnNorm: take(`${p}input_layernorm.weight`, [d]),
      wq: { kind: 'f32', rows: qDim, cols: d, data: ropeRows(`${p}self_attn.q_proj.weight`, c.num_attention_heads, d) },
      wk: { kind: 'f32', rows: kvDim, cols: d, data: ropeRows(`${p}self_attn.k_proj.weight`, c.num_key_value_heads, d) },
      wv: matrix(`${p}self_attn.v_proj.weight`, kvDim, d),
      wo: matrix(`${p}self_attn.o_proj.weight`, d, qDim),
      ffnNorm: take(`${p}post_attention_layernorm.weight`, [d]),
      gate: matrix(`${p}mlp.gate_proj.weight`, ff, d),
      down: matrix(`${p}mlp.down_proj.weight`, d, ff),
      up: matrix(`${p}mlp.up_proj.weight`, ff, d),
    };
    if (c.attention_bias) {
      layer.qBias = ropeRows(`${p}self_attn.q_proj.bias`, c.num_attention_heads, 1);
      layer.kBias = ropeRows(`${p}self_attn.k_proj.bias`, c.num_key_value_heads, 1);
      layer.vBias = take(`${p}self_attn.v_proj.bias`, [kvDim]);
    }
    if (c.qk_norm) {
      layer.qNorm = unpermuteRows(take(`${p}self_attn.q_norm.weight`, [hd]), 1, hd, 1);
      layer.kNorm = unpermuteRows(take(`${p}self_attn.k_norm.weight`, [hd]), 1, hd, 1);
    }
    return layer;
  });
  const tokEmbeddings = take('model.embed_tokens.weight', [c.vocab_size, d]);
  const finalNorm = take('model.norm.weight', [d]);
  // A tied model may still carry lm_head.weight (a copy of the embeddings): not used.
  const output = c.tie_word_embeddings ? null : matrix('lm_head.weight', c.vocab_size, d);
  if (c.tie_word_embeddings && tensors.has('lm_head.weight')) used.add('lm_head.weight');
  const extra = [...tensors.keys()].filter((n) => !used.has(n) && !IGNORED.test(n));
  if (extra.length > 0) {
    const list = extra.slice(0, 5).join(', ') + (extra.length > 5 ? `, … (${extra.length})` : '');
    throw new Error(`${dir}: tensors a ${ARCHITECTURE_NAMES[c.architecture]} model does not have: ${list}`);
  }
  return { config: c, tokEmbeddings, layers, finalNorm, output };
}

/** Decodes a weight to f32: F16 by table lookup, BF16 (the top half of an f32) by shifting. */
function toF32(t: DecodedTensor, what: string): Float32Array {
  switch (t.dtype) {
    case 'F32':
      return Float32Array.from(t.data as Float32Array);
    case 'F16': {
      const table = f16LookupTable();
      return Float32Array.from(t.data as Uint16Array, (bits) => table[bits]);
    }
    case 'BF16':
      return Float32Array.from(t.data as Uint16Array, bf16ToF32);
    default:
      throw new Error(`${what} is ${t.dtype}; weights must be F32, F16 or BF16`);
  }
}

/**
 * Inverse of transformers' `permute(w, n_heads)` (convert_llama_weights_to_hf.py): per head, HF row
 * j * (d/2) + i holds the Meta row 2i + j (j = 0, 1; i < d/2). Returns the rows in Meta order.
 */
export function unpermuteRows(w: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headDim + j * half + i) * cols;
        const to = (h * headDim + 2 * i + j) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}
