import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { LlamaConfig } from './types.js';

/** File names inside a model package folder (documented in models/README.md). */
export const PACKAGE_FILES = {
  config: 'config.json',
  generationConfig: 'generation_config.json',
  tokenizer: 'tokenizer.json',
  tokenizerConfig: 'tokenizer_config.json',
  body: 'body.onnx',
  head: 'head.onnx',
  manifest: 'carryon-package.json',
} as const;

/** 3: the body reads a KV pool in place and outputs only new keys/values (1 had growing KV tensors; 2 was a GroupQueryAttention body). */
export const PACKAGE_FORMAT_VERSION = 3;

/** config.json: Hugging Face LlamaConfig keys, plus the few our graphs need to be explicit about. */
export const ModelConfigFile = z.object({
  architectures: z.array(z.string()).optional(),
  model_type: z.enum(['llama', 'qwen2', 'qwen3']),
  hidden_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive(),
  head_dim: z.number().int().positive(),
  vocab_size: z.number().int().positive(),
  max_position_embeddings: z.number().int().positive(),
  rope_theta: z.number().positive(),
  rope_style: z.literal('interleaved'),
  /** Written only when set, so a Llama package's config.json (and so its fingerprint) is as before. */
  rope_scaling: z
    .discriminatedUnion('rope_type', [
      z.object({
        rope_type: z.literal('llama3'),
        factor: z.number().positive(),
        low_freq_factor: z.number().positive(),
        high_freq_factor: z.number().positive(),
        original_max_position_embeddings: z.number().int().positive(),
      }),
      z.object({ rope_type: z.literal('linear'), factor: z.number().positive() }),
      z.object({ rope_type: z.literal('factors'), factors: z.array(z.number().positive()).min(1) }),
    ])
    .optional(),
  rms_norm_eps: z.number().positive(),
  attention_bias: z.boolean().optional(),
  qk_norm: z.boolean().optional(),
  tie_word_embeddings: z.boolean(),
  bos_token_id: z.number().int().nonnegative(),
  eos_token_id: z.number().int().nonnegative(),
});

export const PackageManifest = z.object({
  format_version: z.literal(PACKAGE_FORMAT_VERSION),
  name: z.string(),
  /** sha256 over config.json, body.onnx and head.onnx: carry-ons bind to it. */
  fingerprint: z.string().regex(/^[0-9a-f]{64}$/),
  quantization: z.enum(['f32', 'q4_0', 'q8_0', 'q4_k', 'q6_k', 'mixed']),
  /** 'hf': a Hugging Face model folder (file is the folder's name; sha256 as hfFolderSha256 computes it). */
  source: z.object({ format: z.enum(['llama2c', 'gguf', 'hf']), file: z.string(), sha256: z.string() }),
  created_at: z.string(),
  /** Layers whose residual stream the body can also output (besides the final one). */
  extra_layer_outputs: z.array(z.number().int().nonnegative()),
});
export type PackageManifest = z.infer<typeof PackageManifest>;

const HF_ARCHITECTURE: Record<LlamaConfig['architecture'], string> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
};

export function toConfigFile(c: LlamaConfig): z.infer<typeof ModelConfigFile> {
  return {
    architectures: [HF_ARCHITECTURE[c.architecture]],
    model_type: c.architecture,
    hidden_size: c.hidden_size,
    intermediate_size: c.intermediate_size,
    num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads,
    num_key_value_heads: c.num_key_value_heads,
    head_dim: c.head_dim,
    vocab_size: c.vocab_size,
    max_position_embeddings: c.max_position_embeddings,
    rope_theta: c.rope_theta,
    rope_style: c.rope_style,
    ...(c.rope_scaling ? { rope_scaling: c.rope_scaling } : {}),
    rms_norm_eps: c.rms_norm_eps,
    ...(c.attention_bias ? { attention_bias: true } : {}),
    ...(c.qk_norm ? { qk_norm: true } : {}),
    tie_word_embeddings: c.tie_word_embeddings,
    bos_token_id: c.bos_token_id,
    eos_token_id: c.eos_token_id,
  };
}

export function readModelConfig(dir: string): LlamaConfig {
  const raw: unknown = JSON.parse(fs.readFileSync(path.join(dir, PACKAGE_FILES.config), 'utf8'));
  const { model_type, rope_scaling, attention_bias, qk_norm, architectures: _names, ...c } = ModelConfigFile.parse(raw);
  return { architecture: model_type, ...c, rope_scaling: rope_scaling ?? null, attention_bias: attention_bias ?? false, qk_norm: qk_norm ?? false };
}

export function readManifest(dir: string): PackageManifest {
  const raw = JSON.parse(fs.readFileSync(path.join(dir, PACKAGE_FILES.manifest), 'utf8')) as { format_version?: unknown };
  if (raw.format_version !== PACKAGE_FORMAT_VERSION) {
    throw new Error(
      `${dir} is a model package of format ${String(raw.format_version)}; this gateway reads format ${PACKAGE_FORMAT_VERSION}: ` +
        're-import its checkpoint (`carryon import SRC OUT`; a CARRYON_MODEL checkpoint file is re-imported on start)',
    );
  }
  return PackageManifest.parse(raw);
}
