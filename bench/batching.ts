/**
 * Continuous batching on the SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B shapes (CPU): the engine worker exactly as the gateway
 * drives it, against node-llama-cpp serving the same GGUF with its own batching.
 *
 *   node --import tsx bench/batching.ts [--models smol-f32,smol-q4,qwen-f32,qwen-q4,llama3-f32,llama3-q4] [--concurrency 1,8,32]
 *        [--decode 48] [--prompt 32] [--threads 1] [--long 2000] [--short 24] [--prefill-chunk 256] [--skip-llama]
 *        [--parts decode,carry-ons,ttft]   (which of 1–2 below, and 3, to run; 4 goes with decode)
 *
 * 1. Aggregate decode tokens/s with C concurrent streams (C prompts submitted together, greedy,
 *    `--decode` tokens each). Counted from the moment every stream has its first token to the
 *    last token, so it is decode only; ratio against C = 1 in the same run.
 * 2. 32 streams each on a different carry-on (1 MB-class, 2 blocks) vs 32 streams on the base.
 * 3. Time to first token of `--short`-token prompts sent one after another while a `--long`-token
 *    prompt is being prefilled (budget `--prefill-chunk` prompt tokens per step), vs an idle engine,
 *    with chunks in slices of `--prefill-slice-ms` and with whole chunks (slice 0), each on its own
 *    engine; and the long prompt's own prefill tokens/s in each.
 * 4. llama.cpp (node-llama-cpp 3, one context with C sequences, each decoding concurrently, which
 *    node-llama-cpp batches into one llama_decode per step) at the same C: ratio ours / llama.cpp.
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import type { Token } from 'node-llama-cpp';

import { CarryOnRegistry } from '../src/serving/carry-on-registry.js';
import { Engine } from '../src/engine/engine.js';
import { BENCH_OUT, shapeModel } from './lib/artifacts.js';
import type { ShapeName } from './lib/synthetic-model.js';
import { makeBenchCarryOns } from './lib/carry-ons.js';
import { intOption, modelsOption } from './lib/options.js';
import { mulberry32 } from './lib/rng.js';
import { greedy } from './lib/runners.js';
import { percentile, table } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'smol-f32,smol-q4' },
    concurrency: { type: 'string', default: '1,8,32' },
    decode: { type: 'string', default: '48' },
    prompt: { type: 'string', default: '32' },
    threads: { type: 'string', default: '1' },
    long: { type: 'string', default: '2000' },
    short: { type: 'string', default: '24' },
    'prefill-chunk': { type: 'string', default: '256' },
    'prefill-slice-ms': { type: 'string', default: '50' },
    'skip-llama': { type: 'boolean', default: false },
    parts: { type: 'string', default: 'decode,carry-ons,ttft' },
  },
});
const SPECS: Record<string, { shape: ShapeName; quant: 'f32' | 'q4_0' }> = {
  'smol-f32': { shape: 'smollm2-135m', quant: 'f32' },
  'smol-q4': { shape: 'smollm2-135m', quant: 'q4_0' },
  'qwen-f32': { shape: 'qwen2.5-0.5b', quant: 'f32' },
  'qwen-q4': { shape: 'qwen2.5-0.5b', quant: 'q4_0' },
  'llama3-f32': { shape: 'llama3.2-1b', quant: 'f32' },
  'llama3-q4': { shape: 'llama3.2-1b', quant: 'q4_0' },
};
const MODELS = modelsOption(values.models, SPECS);
const CONCURRENCY = values.concurrency.split(',').map((c) => intOption('concurrency', c, 1));
const DECODE = intOption('decode', values.decode, 2);
const PROMPT = intOption('prompt', values.prompt, 2);
const THREADS = intOption('threads', values.threads, 1);
const LONG = intOption('long', values.long, 2);
const SHORT = intOption('short', values.short, 2);
const PREFILL = intOption('prefill-chunk', values['prefill-chunk'], 1);
const SLICE_MS = intOption('prefill-slice-ms', values['prefill-slice-ms'], 0);
const PARTS = new Set(values.parts.split(','));
for (const part of PARTS) if (!['decode', 'carry-ons', 'ttft'].includes(part)) throw new Error(`--parts: unknown part ${part} (decode, carry-ons, ttft)`);
const log = (m: string) => process.stderr.write(`[batching ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

function prompts(count: number, length: number, vocab: number, seed: number): number[][] {
  const rnd = mulberry32(seed);
  return Array.from({ length: count }, () => [1, ...Array.from({ length: length - 1 }, () => 2 + Math.floor(rnd() * (vocab - 2)))]);
}

/** Per-stream token arrival times; decode throughput counts tokens after every stream has started. */
class Streams {
  readonly firsts: number[] = [];
  readonly times: number[][] = [];
  constructor(n: number) {
    for (let i = 0; i < n; i++) this.times.push([]);
  }
  tick(i: number): void {
    const t = performance.now();
    if (this.times[i].length === 0) this.firsts[i] = t;
    this.times[i].push(t);
  }
  decodeTps(): number {
    const start = Math.max(...this.firsts);
    const end = Math.max(...this.times.map((t) => t[t.length - 1]));
    const tokens = this.times.reduce((n, t) => n + t.filter((x) => x > start).length, 0);
    return tokens / ((end - start) / 1000);
  }
}

async function oursDecode(engine: Engine, ps: number[][], carryOnKeys: Array<string | null>): Promise<number> {
  const s = new Streams(ps.length);
  await Promise.all(
    ps.map(
      (p, i) =>
        new Promise<void>((resolve, reject) => {
          const key = carryOnKeys[i];
          engine.submit(p, greedy(DECODE), {
            onEvent: (ev) => {
              s.tick(i);
              if (ev.finish) resolve();
            },
            onError: (m) => reject(new Error(m)),
          }, key ? { key, alpha: 1 } : null);
        }),
    ),
  );
  return s.decodeTps();
}

/**
 * TTFTs (ms) of short prompts sent one after another (each as soon as the previous one has its
 * first token). With `longPrompt`, that prompt is submitted first and probing stops once it has
 * been read, so every probe competes with its prefill.
 */
async function probeTtfts(engine: Engine, shorts: number[][], longPrompt: number[] | null): Promise<number[]> {
  let longRead = false;
  const long = longPrompt
    ? new Promise<void>((resolve, reject) =>
        engine.submit(longPrompt, greedy(1), {
          onEvent: (ev) => {
            longRead = true;
            if (ev.finish) resolve();
          },
          onError: (m) => reject(new Error(m)),
        }),
      )
    : Promise.resolve();
  const ttfts: number[] = [];
  for (const p of shorts) {
    if (longPrompt && longRead) break;
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) =>
      engine.submit(p, greedy(1), { onEvent: () => resolve(), onError: (m) => reject(new Error(m)) }),
    );
    ttfts.push(performance.now() - t0);
  }
  await long;
  return ttfts;
}

let llamaInstance: import('node-llama-cpp').Llama | null = null;

async function llamaDecode(modelPath: string, ps: number[][]): Promise<number> {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  llamaInstance ??= await getLlama({ gpu: false, build: 'never', maxThreads: 0, logLevel: LlamaLogLevel.error });
  const llama = llamaInstance;
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  const context = await model.createContext({
    contextSize: ps.length * (PROMPT + DECODE + 16),
    sequences: ps.length,
    batchSize: Math.max(512, ps.length * PROMPT),
    threads: { ideal: THREADS, min: THREADS },
    flashAttention: false,
  });
  try {
    const s = new Streams(ps.length);
    await Promise.all(
      ps.map(async (p, i) => {
        const seq = context.getSequence();
        let n = 0;
        for await (const _ of seq.evaluate(p as Token[], { temperature: 0, yieldEogToken: true })) {
          s.tick(i);
          if (++n >= DECODE) break;
        }
      }),
    );
    return s.decodeTps();
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

async function main(): Promise<void> {
  const lines: string[] = [];
  for (const key of MODELS) {
    const { shape, quant } = SPECS[key];
    const { gguf, pkg } = await shapeModel(shape, quant, key, log);
    const engine = await Engine.start({ modelDir: pkg, provider: 'cpu', threads: THREADS, prefillChunk: PREFILL });
    const vocab = engine.info.vocabSize;
    try {
      // Warm-up: first runs allocate.
      await oursDecode(engine, prompts(2, PROMPT, vocab, 99), [null, null]);

      if (PARTS.has('decode')) lines.push(...(await decodeSection(engine, key, gguf, vocab)));
      if (PARTS.has('carry-ons')) lines.push(...(await carryOnSection(engine, key, pkg, vocab)));
      if (PARTS.has('ttft')) lines.push(...(await ttftSection(key, pkg, vocab)));
    } finally {
      await engine.close();
    }
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  console.log(`cpu: ${cpu} (${os.cpus().length} logical cores); threads ${THREADS}; load average at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  console.log(lines.join('\n'));
}

/** 1 and 4: aggregate decode tokens/s at each concurrency, ours and llama.cpp's. */
async function decodeSection(engine: Engine, key: string, gguf: string, vocab: number): Promise<string[]> {
  const lines: string[] = [];
  const rows: string[][] = [];
  const ours = new Map<number, number>();
  const llama = new Map<number, number>();
  for (const c of CONCURRENCY) {
    const ps = prompts(c, PROMPT, vocab, c);
    ours.set(c, await oursDecode(engine, ps, ps.map(() => null)));
    log(`${key} C=${c}: ours ${ours.get(c)!.toFixed(1)} tok/s`);
    if (!values['skip-llama']) {
      llama.set(c, await llamaDecode(gguf, ps));
      log(`${key} C=${c}: llama.cpp ${llama.get(c)!.toFixed(1)} tok/s`);
    }
  }
  const one = ours.get(CONCURRENCY[0])!;
  for (const c of CONCURRENCY) {
    const l = llama.get(c);
    rows.push([String(c), ours.get(c)!.toFixed(1), `${(ours.get(c)! / one).toFixed(2)}x`, l ? l.toFixed(1) : '–', l ? `${(ours.get(c)! / l).toFixed(2)}x` : '–']);
  }
  lines.push(`### ${key}: aggregate decode tokens/s (prompt ${PROMPT}, ${DECODE} greedy tokens per stream, ${THREADS} thread(s))`, '');
  lines.push(table(['streams', 'ours tok/s', `vs ${CONCURRENCY[0]} stream`, 'llama.cpp tok/s', 'ours / llama.cpp'], rows), '');
  return lines;
}

/** 2: 32 streams, each its own carry-on, vs the same 32 on the base. */
async function carryOnSection(engine: Engine, key: string, pkg: string, vocab: number): Promise<string[]> {
  const lines: string[] = [];
  const n = Math.max(...CONCURRENCY);
  const cos = await makeBenchCarryOns(pkg, path.join(BENCH_OUT, 'carry-ons', `${key}-batching`), { width: 64, layers: 2, heads: 4 }, n);
  const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 2 ** 40, pinned: new Set(), log: () => {} });
  const leases = await Promise.all(cos.map((c) => registry.acquire(c.record)));
  const ps = prompts(n, PROMPT, vocab, 7);
  const baseTps = await oursDecode(engine, ps, ps.map(() => null));
  const coTps = await oursDecode(engine, ps, leases.map((l) => l.key));
  const baseTps2 = await oursDecode(engine, ps, ps.map(() => null));
  for (const l of leases) l.release();
  const baseMean = (baseTps + baseTps2) / 2;
  lines.push(`### ${key}: ${n} streams, each on a different carry-on (${(cos[0].graphBytes / 1e6).toFixed(2)} MB, ${cos[0].parameters.toLocaleString()} params) vs the base`, '');
  lines.push(table(['run', 'tok/s', 'ratio'], [
    ['base (mean of before/after)', baseMean.toFixed(1), '1.00x'],
    [`${n} different carry-ons`, coTps.toFixed(1), `${(coTps / baseMean).toFixed(2)}x`],
  ]), '');
  return lines;
}

/** 3: TTFT under a long prefill, sliced chunks vs whole ones, each on its own engine. */
async function ttftSection(key: string, pkg: string, vocab: number): Promise<string[]> {
  const lines: string[] = [];
  const shorts = prompts(60, SHORT, vocab, 5);
  const long = prompts(1, LONG, vocab, 6)[0];
  const ttftRows: string[][] = [];
  for (const sliceMs of [...new Set([0, SLICE_MS])]) {
    const e = await Engine.start({ modelDir: pkg, provider: 'cpu', threads: THREADS, prefillChunk: PREFILL, prefillSliceMs: sliceMs });
    try {
      await oursDecode(e, prompts(2, PROMPT, vocab, 99), [null, null]);
      const idle = await probeTtfts(e, shorts.slice(0, 20), null);
      const t0 = performance.now();
      const busy = await probeTtfts(e, shorts, long);
      const wall = (performance.now() - t0) / 1000;
      const longTps = LONG / wall;
      const allTps = (LONG + busy.length * SHORT) / wall;
      const label = sliceMs === 0 ? 'whole chunks' : `slices of ${sliceMs} ms`;
      log(`${key} ${label}: idle p50 ${percentile(idle, 50).toFixed(1)} ms, busy p99 ${percentile(busy, 99).toFixed(1)} ms, long prefill ${longTps.toFixed(1)} tok/s, all prompts ${allTps.toFixed(1)} tok/s`);
      ttftRows.push([label, 'idle', String(idle.length), percentile(idle, 50).toFixed(1), percentile(idle, 99).toFixed(1), '–', '–']);
      ttftRows.push([
        label, `while a ${LONG}-token prompt is prefilled`, String(busy.length), percentile(busy, 50).toFixed(1), percentile(busy, 99).toFixed(1), longTps.toFixed(1), allTps.toFixed(1),
      ]);
    } finally {
      await e.close();
    }
  }
  lines.push(`### ${key}: TTFT of ${SHORT}-token prompts, sent one after another (prefill budget ${PREFILL} tokens per step)`, '');
  lines.push(table(['chunks', 'engine state', 'probes', 'p50 ms', 'p99 ms', 'long prompt tok/s', 'all prompt tok/s'], ttftRows, 2), '');
  return lines;
}

await main();
