/**
 * llama.cpp (through node-llama-cpp) as the reference the parity tests compare the engine with: its
 * prebuilt CPU binding, its tokenizer with the BOS it prepends, and its greedy decoding.
 */
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel } from 'node-llama-cpp';

/** The prebuilt CPU binding (never built from source here), logging errors only. */
export function loadLlamaCpp(): Promise<Llama> {
  return getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
}

/** llama.cpp's token ids for `text`, no BOS; `parseSpecial`: text spelling a special token is that token. */
export function llamaCppTokenize(model: LlamaModel, text: string, parseSpecial: boolean): number[] {
  return Array.from(model.tokenize(text, parseSpecial), Number);
}

/**
 * A prompt as llama.cpp evaluates it: the model's BOS where its GGUF asks for one
 * (`tokenizer.ggml.add_bos_token`), then the text's ids.
 */
export function promptIdsWithBos(model: LlamaModel, text: string, parseSpecial = true): number[] {
  const bos = model.tokens.shouldPrependBosToken && model.tokens.bos !== null ? [Number(model.tokens.bos)] : [];
  return [...bos, ...llamaCppTokenize(model, text, parseSpecial)];
}

/**
 * llama.cpp's greedy continuation of `promptIds`: the first `steps` tokens it samples at temperature 0
 * (end tokens included; the caller cuts there if it wants to). Exact f32 attention, as ours: no f16
 * KV cache and no flash attention, both of which round through f16 and flip near-ties (see
 * test/integration/llama-cpp-parity.test.ts). A fresh context each call, disposed after.
 */
export async function llamaCppGreedy(model: LlamaModel, promptIds: readonly number[], steps: number, contextSize: number): Promise<number[]> {
  const ctx = await model.createContext({
    contextSize,
    threads: 1,
    flashAttention: false,
    experimentalKvCacheKeyType: 'F32',
    experimentalKvCacheValueType: 'F32',
  });
  try {
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(promptIds as never, { temperature: 0 })) {
      out.push(t);
      if (out.length >= steps) break;
    }
    return out;
  } finally {
    await ctx.dispose();
  }
}
