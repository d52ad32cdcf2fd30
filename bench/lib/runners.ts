/**
 * The two engines behind one interface: feed a prompt, decode greedily for a fixed number of
 * tokens, and time it the same way on both sides.
 */
import { performance } from 'node:perf_hooks';
import type { Llama, LlamaContext, LlamaModel, Token } from 'node-llama-cpp';

import { Engine } from '../../src/engine/engine.js';
import type { SamplingParams } from '../../src/engine/worker-messages.js';

export interface RunResult {
  /** Submit → first generated token: prefill of the whole prompt plus one sampling. */
  ttftMs: number;
  /** (tokens − 1) / (first → last token): pure decode steps, prefill excluded. */
  decodeTps: number;
  tokens: number[];
}

export interface DecodeRunner {
  run(prompt: number[], decode: number): Promise<RunResult>;
  close(): Promise<void>;
}

/** Collects token arrival times; both engines are timed on the benchmark's main thread. */
class TokenClock {
  private readonly start = performance.now();
  private first = 0;
  private last = 0;
  readonly tokens: number[] = [];

  tick(token: number): void {
    const now = performance.now();
    if (this.tokens.length === 0) this.first = now;
    this.last = now;
    this.tokens.push(token);
  }

  result(): RunResult {
    if (this.tokens.length === 0) throw new Error('no token was generated');
    const decodeS = (this.last - this.first) / 1000;
    return {
      ttftMs: this.first - this.start,
      decodeTps: this.tokens.length > 1 ? (this.tokens.length - 1) / decodeS : NaN,
      tokens: this.tokens,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Ours: the real engine worker, exactly as the gateway drives it.

/** Greedy and never stopping early, so both engines decode exactly `maxTokens` tokens. */
export function greedy(maxTokens: number): SamplingParams {
  return {
    temperature: 0,
    topP: 1,
    topK: 0,
    seed: null,
    presencePenalty: 0,
    frequencyPenalty: 0,
    maxTokens,
    stopTokenIds: [],
    topLogprobs: -1,
  };
}

export async function startOurs(modelDir: string, threads: number, prefillChunk: number): Promise<DecodeRunner> {
  const engine = await Engine.start({ modelDir, provider: 'cpu', threads, prefillChunk });
  return {
    run: (prompt, decode) =>
      new Promise<RunResult>((resolve, reject) => {
        const clock = new TokenClock();
        engine.submit(prompt, greedy(decode), {
          onEvent(ev) {
            if (ev.token >= 0) clock.tick(ev.token);
            if (ev.finish) resolve(clock.result());
          },
          onError: (message) => reject(new Error(message)),
        });
      }),
    close: () => engine.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// llama.cpp through node-llama-cpp.

export interface LlamaCppRunner extends DecodeRunner {
  /** Tokenize → detokenize round trip, proving llama.cpp's SPM tokenizer accepts the vocab. */
  vocabCheck(): string;
}

export async function startLlamaCpp(
  llama: Llama,
  modelPath: string,
  threads: number,
  contextSize: number,
  batchSize: number,
): Promise<LlamaCppRunner> {
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  const context = await model.createContext({
    contextSize,
    batchSize,
    sequences: 1,
    // min = ideal: never fewer threads than ours, even if node-llama-cpp would rebalance.
    threads: { ideal: threads, min: threads },
  });
  if (context.idealThreads !== threads) {
    throw new Error(`llama.cpp context runs ${context.idealThreads} threads, asked for ${threads}`);
  }
  return {
    run: (prompt, decode) => runLlamaCpp(context, prompt, decode),
    vocabCheck: () => vocabRoundTrip(model),
    close: async () => {
      await context.dispose();
      await model.dispose();
    },
  };
}

async function runLlamaCpp(context: LlamaContext, prompt: number[], decode: number): Promise<RunResult> {
  // A fresh sequence per run: disposing the previous one removed its KV cells, so no run can
  // reuse another's prompt state (evaluate() itself never reuses a prefix; it only appends).
  const sequence = context.getSequence();
  try {
    if (sequence.nextTokenIndex !== 0) throw new Error('llama.cpp sequence starts with a non-empty KV cache');
    const clock = new TokenClock();
    // evaluate() is node-llama-cpp's lowest-level generation loop: one native decode + native
    // sampling per token. yieldEogToken keeps it going past EOS, as stopTokenIds: [] does for us.
    for await (const token of sequence.evaluate(prompt as Token[], { temperature: 0, yieldEogToken: true })) {
      clock.tick(token);
      if (clock.tokens.length >= decode) break;
    }
    return clock.result();
  } finally {
    await sequence.dispose();
  }
}

function vocabRoundTrip(model: LlamaModel): string {
  const text = 'hello world, tokens!';
  const ids = model.tokenize(text);
  const back = model.detokenize(ids);
  if (back.trim() !== text) throw new Error(`llama.cpp vocab round trip failed: ${JSON.stringify(back)}`);
  return `${ids.length} tokens, round trip ok`;
}
