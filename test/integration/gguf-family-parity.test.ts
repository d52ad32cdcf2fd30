/**
 * The engine on a GGUF of each family equals llama.cpp on the same file, greedy token for token:
 * Llama 3 (byte-level BPE, llama3 RoPE scaling carried as rope_freqs.weight, untied head), Qwen2
 * (q/k/v biases, tied head), Qwen3 (per-head q/k norms, head_dim != hidden/heads) and Llama 2
 * (SentencePiece). The GGUFs are written as convert_hf_to_gguf.py writes these families
 * (test/helpers/family-gguf.ts, random weights, real tokenizers); ours imports each through the
 * gateway's CARRYON_MODEL start-up import and serves it over a real socket.
 *
 * llama.cpp runs with an f32 KV cache and no flash attention (both round through f16 otherwise),
 * as test/integration/llama-cpp-parity.test.ts explains. Random weights make near-ties between the
 * top two logits; randomFamilyWeights' scale spreads the logits so that greedy decoding is decided
 * by the model, not by float rounding, and equality stays exact.
 *
 * Q4_0: both sides read the same 4-bit blocks, but llama.cpp quantizes the activations to Q8_0
 * before each Q4_0 product (its vec_dot_q4_0_q8_0) and we multiply them in f32, so logits differ by
 * that rounding and greedy paths part at the first close call. Measured (scale 4, 48 steps, first
 * differing step per prompt short/multilingual/code/paragraph/chat): qwen2 and qwen3 equal
 * throughout; llama3 -/-/6/-/33; llama2 -/5/22/-/11 (scale 8: llama3 1/29/7/20/-, scale 16 worse).
 * So Q4_0 compares the first Q4_STEPS tokens, all 48 for the Qwen families.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Llama, LlamaModel } from 'node-llama-cpp';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SamplingParams } from '../../src/engine/worker-messages.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { llamaCppGreedy, loadLlamaCpp, promptIdsWithBos } from '../helpers/llama-cpp.js';
import type { Family } from '../helpers/model-families.js';
import { SHARED } from '../helpers/paths.js';

const STEPS = 48;
const SCALE = { f32: 8, q4_0: 4 } as const;
const Q4_STEPS: Record<Family, number> = { llama3: 6, llama2: 5, qwen2: STEPS, qwen3: STEPS };

/** A chat as each family's template renders it (its BOS is the tokenizer's, added as for any prompt). */
const CHATS: Record<Family, string> = {
  llama3: '<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWrite a haiku about the sea.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  qwen2: '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n',
  qwen3: '<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
  llama2: '[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWrite a haiku about the sea. [/INST]',
};

function prompts(family: Family): [string, string][] {
  const text = fs.readFileSync(path.join(SHARED, 'data/tinystories/tinystories_val.txt'), 'utf8');
  const long = text.trimStart().slice(0, 900); // real story text, about 200 tokens
  return [
    ['short', 'Once upon a time'],
    ['multilingual', 'Bonjour le monde! 你好，世界 🌍🙂 Привет, как дела? こんにちは'],
    ['code', 'function fib(n) {\n  if (n < 2) return n;\n  return fib(n - 1) + fib(n - 2);\n}\n'],
    ['paragraph', long],
    ['chat', CHATS[family]],
  ];
}

const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, maxTokens, stopTokenIds: [], topLogprobs: -1,
});

let llama: Llama;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gguf-family-parity-'));

beforeAll(async () => {
  llama = await loadLlamaCpp();
});
afterAll(async () => {
  await llama?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Case {
  family: Family;
  quant: 'f32' | 'q4_0';
}

const CASES: Case[] = (['llama3', 'qwen2', 'qwen3', 'llama2'] as const).flatMap((family) => [
  { family, quant: 'f32' as const },
  { family, quant: 'q4_0' as const },
]);

describe.each(CASES)('$family $quant GGUF: greedy decoding equals llama.cpp', ({ family, quant }) => {
  const name = `tiny-${family}-${quant}`;
  const steps = quant === 'f32' ? STEPS : Q4_STEPS[family];
  let gw: TestGateway;
  let model: LlamaModel;
  let client: OpenAI;

  beforeAll(async () => {
    const file = path.join(tmp, `${name}.gguf`);
    await writeFamilyGguf(family, file, { quant, scale: SCALE[quant] });
    model = await llama.loadModel({ modelPath: file });
    gw = await startTestGateway({ CARRYON_MODEL: file, CARRYON_DATA_DIR: freshDataDir('gguf-family-') });
    client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  afterAll(async () => {
    await gw?.close();
    await model?.dispose();
  });

  it.each(prompts(family))(`%s prompt: engine token ids (${steps} steps)`, async (_what, prompt) => {
    const ids = promptIdsWithBos(model, prompt);
    const { engine } = gw.gateway.model();
    const ours = await new Promise<number[]>((resolve, reject) => {
      const out: number[] = [];
      engine.submit(ids, greedy(steps), {
        onEvent: (ev) => {
          if (ev.token >= 0) out.push(ev.token);
          if (ev.finish) resolve(out);
        },
        onError: (m) => reject(new Error(m)),
      });
    });
    const theirs = await llamaCppGreedy(model, ids, steps, 1024);
    expect(ours).toHaveLength(steps);
    expect(ours).toEqual(theirs);
  });

  it.each(prompts(family))('%s prompt: /v1/completions text, stopping where llama.cpp reaches an end token', async (_what, prompt) => {
    const ids = promptIdsWithBos(model, prompt);
    const res = await client.completions.create({ model: name, prompt, max_tokens: steps, temperature: 0 });
    const { tokenizer } = gw.gateway.model();
    expect(res.usage!.prompt_tokens).toBe(ids.length);
    const theirs = await llamaCppGreedy(model, ids, steps, 1024);
    const end = theirs.findIndex((t) => model.isEogToken(t as never));
    const expected = end >= 0 ? theirs.slice(0, end) : theirs;
    expect(res.usage!.completion_tokens).toBe(expected.length);
    // Decoded in the prompt's context: SentencePiece drops a leading space at the start of a text.
    expect(res.choices[0].text).toBe(tokenizer.decode([...ids, ...expected]).slice(tokenizer.decode(ids).length));
    expect(res.choices[0].finish_reason).toBe(end >= 0 ? 'stop' : 'length');
  });
});
