/**
 * Decode benchmark: our engine (ONNX Runtime, through the real engine worker) against llama.cpp
 * (node-llama-cpp) on the same GGUF weights, the same thread count and the same prompts.
 *
 *   npm run bench:decode -- [--models stories,smol-f32,smol-q4,qwen-f32,qwen-q4,llama3-f32,llama3-q4]
 *                           [--contexts 128,512] [--decode 64]
 *                           [--runs 3] [--threads N] [--batch 512] [--breakdown]
 *
 * "ctx N" means an N-token prompt (BOS + random ids), prefilled, then `--decode` greedy tokens.
 * Per model and context: one warm-up run per engine, then `--runs` runs alternating between the
 * engines (so background load drifts hit both alike); the table shows medians.
 */
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel, type Llama } from 'node-llama-cpp';
import * as ort from 'onnxruntime-node';

import { readModelConfig } from '../src/model/package-files.js';
import { BENCH_OUT, STORIES_GGUF, modelPackage, releaseSyntheticCheckpoint, shapeGguf, smolGguf } from './lib/artifacts.js';
import { decodeBreakdown, openRunner } from './lib/breakdown.js';
import { randomIds } from './lib/rng.js';
import { startLlamaCpp, startOurs, type DecodeRunner, type RunResult } from './lib/runners.js';
import { intOption, modelsOption } from './lib/options.js';

interface ModelSpec {
  label: string;
  quant: string;
  gguf(log: (m: string) => void): Promise<string>;
  /** Real weights whose greedy output both engines must reproduce identically. */
  mustAgree: boolean;
}

const MODELS: Record<string, ModelSpec> = {
  stories: { label: 'stories260K', quant: 'f32', gguf: async () => STORIES_GGUF, mustAgree: true },
  'smol-f32': { label: 'SmolLM2-135M-shape', quant: 'f32', gguf: (log) => smolGguf('f32', log), mustAgree: false },
  'smol-q4': { label: 'SmolLM2-135M-shape', quant: 'q4_0', gguf: (log) => smolGguf('q4_0', log), mustAgree: false },
  'qwen-f32': { label: 'Qwen2.5-0.5B-shape', quant: 'f32', gguf: (log) => shapeGguf('qwen2.5-0.5b', 'f32', log), mustAgree: false },
  'qwen-q4': { label: 'Qwen2.5-0.5B-shape', quant: 'q4_0', gguf: (log) => shapeGguf('qwen2.5-0.5b', 'q4_0', log), mustAgree: false },
  'llama3-f32': { label: 'Llama-3.2-1B-shape', quant: 'f32', gguf: (log) => shapeGguf('llama3.2-1b', 'f32', log), mustAgree: false },
  'llama3-q4': { label: 'Llama-3.2-1B-shape', quant: 'q4_0', gguf: (log) => shapeGguf('llama3.2-1b', 'q4_0', log), mustAgree: false },
};

interface Options {
  models: string[];
  contexts: number[];
  decode: number;
  runs: number;
  threads: number;
  batch: number;
  breakdown: boolean;
}

interface Row {
  model: string;
  quant: string;
  ctx: number;
  ours: RunResult[];
  llama: RunResult[];
  agreement: string;
}

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      models: { type: 'string', default: Object.keys(MODELS).join(',') },
      contexts: { type: 'string', default: '128,512' },
      decode: { type: 'string', default: '64' },
      runs: { type: 'string', default: '3' },
      threads: { type: 'string', default: String(os.availableParallelism()) },
      // Prompt tokens per forward pass: our engine's prefillChunk and llama.cpp's batchSize alike.
      batch: { type: 'string', default: '512' },
      breakdown: { type: 'boolean', default: false },
    },
  });
  const models = modelsOption(values.models, MODELS);
  return {
    models,
    contexts: values.contexts.split(',').map((c) => intOption('contexts', c, 2)),
    decode: intOption('decode', values.decode, 2),
    runs: intOption('runs', values.runs, 1),
    threads: intOption('threads', values.threads, 1),
    batch: intOption('batch', values.batch, 1),
    breakdown: values.breakdown,
  };
}

/** GGUFs and packages are built before anything is timed, so imports never overlap a measurement. */
async function prepare(opts: Options): Promise<Map<string, { gguf: string; pkg: string }>> {
  const files = new Map<string, { gguf: string; pkg: string }>();
  for (const key of opts.models) files.set(key, { gguf: await MODELS[key].gguf(log), pkg: '' });
  releaseSyntheticCheckpoint();
  for (const [key, f] of files) f.pkg = await modelPackage(f.gguf, key, log);
  return files;
}

/** Same ids for both engines: BOS, then uniform ids above BOS/EOS (vocab 0..2 are unk/bos/eos). */
function promptFor(ctx: number, vocabSize: number, bos: number): number[] {
  return [bos, ...randomIds(1000 + ctx, ctx - 1, 3, vocabSize)];
}

async function benchModel(key: string, files: { gguf: string; pkg: string }, llama: Llama, opts: Options): Promise<Row[]> {
  const spec = MODELS[key];
  const config = readModelConfig(files.pkg);
  const longest = Math.max(...opts.contexts) + opts.decode;
  if (longest > config.max_position_embeddings) {
    throw new Error(`${key}: ctx + decode = ${longest} exceeds the model's ${config.max_position_embeddings} positions`);
  }
  const ours = await startOurs(files.pkg, opts.threads, opts.batch);
  const llamaCpp = await startLlamaCpp(llama, files.gguf, opts.threads, roundUp(longest, 256), opts.batch);
  log(`${key}: llama.cpp vocab check: ${llamaCpp.vocabCheck()}`);
  try {
    const rows: Row[] = [];
    for (const ctx of opts.contexts) {
      const prompt = promptFor(ctx, config.vocab_size, config.bos_token_id);
      rows.push(await benchContext(spec, ctx, prompt, ours, llamaCpp, opts));
    }
    return rows;
  } finally {
    await ours.close();
    await llamaCpp.close();
  }
}

async function benchContext(
  spec: ModelSpec,
  ctx: number,
  prompt: number[],
  ours: DecodeRunner,
  llamaCpp: DecodeRunner,
  opts: Options,
): Promise<Row> {
  // Warm-up: first-run costs (allocator growth, ORT arena, llama.cpp graph reservation) are not decode speed.
  const warmOurs = await ours.run(prompt, opts.decode);
  const warmLlama = await llamaCpp.run(prompt, opts.decode);
  const agreement = compareTokens(warmOurs.tokens, warmLlama.tokens);
  const row: Row = { model: spec.label, quant: spec.quant, ctx, ours: [], llama: [], agreement };
  for (let r = 0; r < opts.runs; r++) {
    // Alternate who goes first, so neither engine always runs right after the other's heat/caches.
    const order: Array<[DecodeRunner, RunResult[]]> = [[ours, row.ours], [llamaCpp, row.llama]];
    if (r % 2 === 1) order.reverse();
    for (const [runner, into] of order) into.push(await runner.run(prompt, opts.decode));
  }
  log(
    `${spec.label} ${spec.quant} ctx ${ctx}: ours tok/s [${fmtList(row.ours.map((x) => x.decodeTps))}] ` +
      `TTFT ms [${fmtList(row.ours.map((x) => x.ttftMs))}]; llama.cpp tok/s [${fmtList(row.llama.map((x) => x.decodeTps))}] ` +
      `TTFT ms [${fmtList(row.llama.map((x) => x.ttftMs))}]; greedy: ${agreement}`,
  );
  if (spec.mustAgree && !agreement.startsWith('identical')) {
    log(`SANITY CHECK FAILED: ${spec.label} greedy tokens differ between the engines (${agreement})`);
    process.exitCode = 1;
  }
  return row;
}

function compareTokens(a: number[], b: number[]): string {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  if (i === n && a.length === b.length) return `identical (${n}/${n})`;
  return `diverge at token ${i} of ${Math.max(a.length, b.length)} (ours ${a[i]}, llama.cpp ${b[i]})`;
}

/** Optional: per-step cost of our body graph vs LM head at each context, in-process. */
async function breakdown(key: string, pkg: string, opts: Options): Promise<void> {
  const config = readModelConfig(pkg);
  const runner = await openRunner(pkg, opts.threads, opts.batch);
  try {
    for (const ctx of opts.contexts) {
      const prompt = promptFor(ctx, config.vocab_size, config.bos_token_id);
      await decodeBreakdown(runner, prompt, 4, opts.batch); // warm-up
      const b = await decodeBreakdown(runner, prompt, opts.decode, opts.batch);
      console.log(
        `  ${key.padEnd(9)} ctx ${String(ctx).padStart(4)}: body ${b.bodyMs.toFixed(2)} ms, head ${b.headMs.toFixed(2)} ms, ` +
          `argmax ${b.argmaxMs.toFixed(2)} ms per step; past KV ${(b.kvBytes / 2 ** 20).toFixed(1)} MiB per step ` +
          `(one plain JS copy of it: ${b.kvCopyMs.toFixed(2)} ms)`,
      );
    }
  } finally {
    await runner.release();
  }
}

// ---------------------------------------------------------------------------------------------
// Output

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function fmtList(xs: number[]): string {
  return xs.map((x) => x.toFixed(1)).join(', ');
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function printTable(rows: Row[]): void {
  const header = ['model', 'quant', 'ctx', 'ours tok/s', 'llama.cpp tok/s', 'tok/s ours/llama', 'ours TTFT ms', 'llama.cpp TTFT ms', 'TTFT llama/ours'];
  const body = rows.map((r) => {
    const ot = median(r.ours.map((x) => x.decodeTps));
    const lt = median(r.llama.map((x) => x.decodeTps));
    const of = median(r.ours.map((x) => x.ttftMs));
    const lf = median(r.llama.map((x) => x.ttftMs));
    return [r.model, r.quant, String(r.ctx), ot.toFixed(1), lt.toFixed(1), `${(ot / lt).toFixed(2)}x`, of.toFixed(1), lf.toFixed(1), `${(lf / of).toFixed(2)}x`];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((w, i) => (i < 2 ? ':' : '-') + '-'.repeat(w) + (i < 2 ? '-' : ':')).join('|')}|`);
  for (const b of body) console.log(line(b));
  console.log('\nBoth ratios are "ours relative to llama.cpp": > 1.00x means our engine is better');
  console.log('(tok/s: ours / llama.cpp; TTFT: llama.cpp / ours, since lower TTFT is better).');
}

function printMachine(opts: Options, llama: Llama): void {
  const cpus = os.cpus();
  const rel = llama.llamaCppRelease;
  console.log(`cpu: ${cpus[0]?.model ?? 'unknown'} (${cpus.length} logical cores), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM`);
  console.log(`threads: ${opts.threads} for both engines (ORT intraOpNumThreads; llama.cpp context threads)`);
  console.log(`node ${process.version}; onnxruntime-node ${ort.env.versions.node ?? ort.env.versions.common}; llama.cpp ${rel.release} (node-llama-cpp, ${llama.buildType} CPU build)`);
  console.log(`prompt = ctx tokens; prefill chunk / batch ${opts.batch}; decode ${opts.decode} greedy tokens; median of ${opts.runs} runs after 1 warm-up`);
  if (opts.threads >= cpus.length) {
    // Both runtimes spin-wait at their per-op barriers; with every core taken, any other process
    // (or the bench's own main thread) preempting one worker stalls the other, so timings swing.
    console.log(`note: threads (${opts.threads}) >= logical cores (${cpus.length}); results are very sensitive to other load`);
  }
  console.log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}

async function main(): Promise<void> {
  const opts = parseOptions();
  log(`artifacts under ${path.relative(process.cwd(), BENCH_OUT) || BENCH_OUT}`);
  const files = await prepare(opts);
  // maxThreads 0: node-llama-cpp then uses exactly the context's thread count instead of capping it.
  const llama = await getLlama({ gpu: false, build: 'never', maxThreads: 0, logLevel: LlamaLogLevel.error });
  const rows: Row[] = [];
  for (const key of opts.models) rows.push(...(await benchModel(key, files.get(key)!, llama, opts)));

  console.log('');
  printMachine(opts, llama);
  console.log('');
  printTable(rows);
  console.log('\nGreedy token agreement (warm-up runs; stories260K must be identical, random-weight models are informational):');
  for (const r of rows) console.log(`  ${r.model} ${r.quant} ctx ${r.ctx}: ${r.agreement}`);
  if (opts.breakdown) {
    console.log('\nOur decode step, in-process (body graph incl. KV feed/return, LM head, argmax):');
    for (const key of opts.models) await breakdown(key, files.get(key)!.pkg, opts);
  }
  await llama.dispose();
}

await main();
