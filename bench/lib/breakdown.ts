/**
 * Where our decode step spends its time: the model runner driven in-process (no worker, no
 * messages), timing the body graph, the LM head and the argmax separately. Whatever the engine
 * run costs beyond their sum is step-loop / worker / message overhead.
 */
import { performance } from 'node:perf_hooks';

import { ModelRunner } from '../../src/engine/model-runner.js';

export interface StepBreakdown {
  bodyMs: number;
  headMs: number;
  argmaxMs: number;
  /** Bytes of past K/V fed into the body per decode step, on average (and returned again as present). */
  kvBytes: number;
  /** One JS copy of that many bytes: the floor of what each KV round trip through JS costs. */
  kvCopyMs: number;
}

export async function openRunner(modelDir: string, threads: number, prefillChunk: number): Promise<ModelRunner> {
  return ModelRunner.create({ modelDir, provider: 'cpu', threads, prefillChunk });
}

export async function decodeBreakdown(
  runner: ModelRunner,
  prompt: number[],
  decode: number,
  prefillChunk: number,
): Promise<StepBreakdown> {
  const cache = runner.newCache();
  for (let i = 0; i < prompt.length; i += prefillChunk) await runner.forwardBody(prompt.slice(i, i + prefillChunk), cache);
  const d = runner.config.hidden_size;
  let last = prompt[prompt.length - 1];
  let body = 0;
  let head = 0;
  let pick = 0;
  for (let step = 0; step < decode; step++) {
    const t0 = performance.now();
    const { hidden } = await runner.forwardBody([last], cache);
    const t1 = performance.now();
    const logits = await runner.forwardHead(hidden.subarray(0, d), 1);
    const t2 = performance.now();
    last = argmax(logits);
    const t3 = performance.now();
    body += t1 - t0;
    head += t2 - t1;
    pick += t3 - t2;
  }
  const c = runner.config;
  const meanPast = prompt.length + (decode - 1) / 2;
  const kvBytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * meanPast;
  return { bodyMs: body / decode, headMs: head / decode, argmaxMs: pick / decode, kvBytes, kvCopyMs: copyCost(kvBytes) };
}

/** Median of a few copies: the first touches fresh pages, and the machine is noisy. */
function copyCost(bytes: number): number {
  const n = Math.round(bytes / 4);
  const src = new Float32Array(n).fill(1);
  const dst = new Float32Array(n);
  const times: number[] = [];
  for (let i = 0; i < 15; i++) {
    const t0 = performance.now();
    dst.set(src);
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[times.length >> 1];
}

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}
