/**
 * Carry-on benchmark: what serving a carry-on costs on top of the base, through the real engine
 * worker and the real registry (`CarryOnRegistry` → `Engine.loadCarryOn` → worker session).
 *
 *   node --import tsx bench/carry-on.ts [--models stories,smol-f32,smol-q4] [--threads 1]
 *        [--loads 40] [--memory 20] [--ttft-pairs 30] [--ttft-prompt 16]
 *        [--ctx 128] [--decode 64] [--runs 5] [--streams 4]
 *
 * 1. Cold load of a ~1 MB carry-on: `registry.acquire` of a version that is not resident (what the
 *    first request for it waits for), unloaded again after each load so every load is cold; p50/p99
 *    over `--loads`. Then the first-request overhead: TTFT of a request whose carry-on is not loaded
 *    minus TTFT of one whose carry-on is resident (same prompt), medians of `--ttft-pairs` pairs.
 *    Plus where a load's time goes, in-process: file read, ORT session creation, first run.
 * 2. Decode overhead: tokens/s of base-only vs base + carry-on (α = 1; α = 0 skips the carry-on), at
 *    a `--ctx`-token prompt then `--decode` greedy tokens; one stream, and `--streams` concurrent
 *    streams each with a different carry-on. Runs alternate base / carry-on; medians. Plus the
 *    per-step split body / carry-on / merge / head, in-process.
 * 3. Memory per resident carry-on: process RSS (the engine worker shares the process) before and
 *    after loading `--memory` distinct carry-ons, after one request through each, and after
 *    unloading them, GC'd first, against the .onnx size. The baseline is read after a base-only
 *    `--ctx`-token request (the base's buffers grow with the prompt; that growth is reported apart),
 *    and a second set of `--memory` carry-ons, loaded and run the same way, gives the marginal cost
 *    of one more once every fixed cost is paid. In the child process the engine worker's heap is
 *    collected before each read too (bench/lib/worker-gc.ts).
 *
 * Bases: stories260K (real weights, hidden 64) and bench/lib's SmolLM2-135M-shaped random model
 * (hidden 576, 30 layers, vocab 49152) in F32 and Q4_0; artifacts are cached under bench/out/.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as ort from 'onnxruntime-node';

import { CarryOnRegistry, specOf, type CarryOnLease } from '../src/serving/carry-on-registry.js';
import { CarryOnSession, mergeRow } from '../src/engine/carry-on-session.js';
import { Engine } from '../src/engine/engine.js';
import type { SamplingParams } from '../src/engine/worker-messages.js';
import { readModelConfig } from '../src/model/package-files.js';
import { BENCH_OUT, STORIES_GGUF, modelPackage, releaseSyntheticCheckpoint, smolGguf } from './lib/artifacts.js';
import { openRunner } from './lib/breakdown.js';
import { makeBenchCarryOns, type BenchCarryOn, type CarryOnShape } from './lib/carry-ons.js';
import { randomIds } from './lib/rng.js';
import { intOption, modelsOption } from './lib/options.js';
import { WORKER_GC_ARGS, collectWorkerGarbage } from './lib/worker-gc.js';

// ---------------------------------------------------------------------------------------------
// Setup

interface ModelSpec {
  label: string;
  quant: string;
  gguf(log: (m: string) => void): Promise<string>;
  /** Sized so the .onnx is ~1 MB for this base's hidden size (RoPE tables included). */
  shape: CarryOnShape;
  /** Cold load and memory depend on the carry-on, not the base's quantisation: measured once per shape. */
  loadAndMemory: boolean;
}

const MODELS: Record<string, ModelSpec> = {
  stories: { label: 'stories260K', quant: 'f32', gguf: async () => STORIES_GGUF, shape: { width: 88, layers: 2, heads: 4 }, loadAndMemory: true },
  'smol-f32': { label: 'SmolLM2-135M-shape', quant: 'f32', gguf: (log) => smolGguf('f32', log), shape: { width: 64, layers: 2, heads: 4 }, loadAndMemory: true },
  'smol-q4': { label: 'SmolLM2-135M-shape', quant: 'q4_0', gguf: (log) => smolGguf('q4_0', log), shape: { width: 64, layers: 2, heads: 4 }, loadAndMemory: false },
};

interface Options {
  models: string[];
  /** Internal: run only the memory measurement for this model, print it as JSON (see measureMemoryInChild). */
  memoryChild: string | null;
  threads: number;
  loads: number;
  memory: number;
  ttftPairs: number;
  ttftPrompt: number;
  ctx: number;
  decode: number;
  runs: number;
  streams: number;
}

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      models: { type: 'string', default: Object.keys(MODELS).join(',') },
      threads: { type: 'string', default: '1' },
      loads: { type: 'string', default: '40' },
      memory: { type: 'string', default: '20' },
      'ttft-pairs': { type: 'string', default: '30' },
      'ttft-prompt': { type: 'string', default: '16' },
      'memory-child': { type: 'string' },
      ctx: { type: 'string', default: '128' },
      decode: { type: 'string', default: '64' },
      runs: { type: 'string', default: '5' },
      streams: { type: 'string', default: '4' },
    },
  });
  const models = modelsOption(values.models, MODELS);
  return {
    models,
    memoryChild: values['memory-child'] ?? null,
    threads: intOption('threads', values.threads, 1),
    loads: intOption('loads', values.loads, 1),
    memory: intOption('memory', values.memory, 1),
    ttftPairs: intOption('ttft-pairs', values['ttft-pairs'], 1),
    ttftPrompt: intOption('ttft-prompt', values['ttft-prompt'], 1),
    ctx: intOption('ctx', values.ctx, 2),
    decode: intOption('decode', values.decode, 2),
    runs: intOption('runs', values.runs, 1),
    streams: intOption('streams', values.streams, 2),
  };
}

/** The V8 GC, exposed at runtime when node was not started with --expose-gc. */
function exposeGc(): () => void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) return g;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}
const gc = exposeGc();

const execFileAsync = promisify(execFile);
const LOAD_AT_START = os.loadavg();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function greedy(maxTokens: number): SamplingParams {
  return { temperature: 0, topP: 1, topK: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, maxTokens, stopTokenIds: [], topLogprobs: -1 };
}

/** BOS, then uniform ids above BOS/EOS, as bench/decode.ts. */
function promptFor(seed: number, length: number, vocabSize: number, bos: number): number[] {
  return [bos, ...randomIds(seed, length - 1, 3, vocabSize)];
}

// ---------------------------------------------------------------------------------------------
// Requests through the engine

interface Timed {
  submitAt: number;
  firstAt: number;
  lastAt: number;
  tokens: number;
  /** Gaps between consecutive tokens of this sequence: one engine step each. */
  gaps: number[];
}

function request(engine: Engine, prompt: number[], maxTokens: number, carryOn: { key: string; alpha: number } | null, submitAt = performance.now()): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const t: Timed = { submitAt, firstAt: 0, lastAt: 0, tokens: 0, gaps: [] };
    engine.submit(
      prompt,
      greedy(maxTokens),
      {
        onEvent(ev) {
          const now = performance.now();
          if (ev.token >= 0) {
            if (t.tokens === 0) t.firstAt = now;
            else t.gaps.push(now - t.lastAt);
            t.lastAt = now;
            t.tokens++;
          }
          if (ev.finish) resolve(t);
        },
        onError: (m) => reject(new Error(m)),
      },
      carryOn,
    );
  });
}

interface DecodeRun {
  /** Aggregate decode tokens/s over the span from the first first-token to the last token. */
  tps: number;
  /** Streams / median engine step: every step advances each stream by one token. Robust to preemption spikes. */
  stepTps: number;
  ttftMs: number;
}

/** Streams submitted together (their prompts are all prefilled in the first step). */
async function decodeRun(engine: Engine, prompts: number[][], decode: number, keys: Array<string | null>): Promise<DecodeRun> {
  const start = performance.now();
  const runs = await Promise.all(prompts.map((p, i) => request(engine, p, decode, keys[i] ? { key: keys[i], alpha: 1 } : null, start)));
  const first = Math.min(...runs.map((r) => r.firstAt));
  const last = Math.max(...runs.map((r) => r.lastAt));
  const tokens = runs.reduce((n, r) => n + r.tokens - 1, 0);
  const step = median(runs.flatMap((r) => r.gaps));
  return { tps: tokens / ((last - first) / 1000), stepTps: (prompts.length * 1000) / step, ttftMs: median(runs.map((r) => r.firstAt - r.submitAt)) };
}

// ---------------------------------------------------------------------------------------------
// Results

interface LoadResult {
  model: string;
  shape: CarryOnShape;
  fileBytes: number;
  parameters: number;
  firstInProcessMs: number;
  loadsMs: number[];
  ttftResident: number[];
  ttftCold: number[];
  /** Load → unload cycles run by the load and first-request measurements, and the RSS change over them. */
  cycles: number;
  cyclesRssDelta: number;
  where: { readMs: number; createAllMs: number; createBufferMs: number; createDisabledMs: number; firstRunMs: number; steadyRunMs: number };
}

interface DecodeResult {
  model: string;
  quant: string;
  streams: number;
  base: DecodeRun[];
  co: DecodeRun[];
}

interface StepSplit {
  model: string;
  quant: string;
  bodyMs: number;
  carryOnMs: number;
  /** The same carry-on step repeated back to back (caches warm), no base body in between. */
  carryOnHotMs: number;
  mergeMs: number;
  headMs: number;
}

interface MemoryResult {
  model: string;
  /** Which malloc behaviour the process ran with (see measureMemoryInChild). */
  allocator: string;
  n: number;
  fileBytes: number;
  rssBefore: number;
  rssLoaded: number;
  rssUsed: number;
  /** After one request each with a prompt of `longPrompt` tokens: the session arenas grow with the chunk. */
  rssUsedLong: number;
  longPrompt: number;
  rssUnloaded: number;
  /** After loading the same N again (no requests). */
  rssReloaded: number;
  /** RSS growth of a base-only `longPrompt`-token request before any carry-on: the base's, read into rssBefore. */
  baseLongDelta: number;
  /**
   * After loading N more carry-ons and one short and one long request through each: their RSS over
   * rssUsedLong is the marginal cost of N more resident carry-ons, with every fixed cost (the base's
   * buffers, the worker's garbage high-water) already paid.
   */
  rssMoreUsedLong: number | null;
  /** Worker threads whose heaps were collected before each read (see bench/lib/worker-gc.ts); 0: none. */
  workersCollected: number;
}

// ---------------------------------------------------------------------------------------------
// 1. Cold load and first-request overhead; 3. memory (both on one fresh engine per base)

/** Set in the memory child (started with WORKER_GC_ARGS): how many worker heaps the last read collected. */
let workerGc = false;
let workersCollected = 0;

async function rss(): Promise<number> {
  if (workerGc) workersCollected = await collectWorkerGarbage();
  gc();
  await sleep(150);
  gc();
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    xs.push(process.memoryUsage().rss);
    await sleep(20);
  }
  return median(xs);
}

async function measureMemory(engine: Engine, registry: CarryOnRegistry, cos: BenchCarryOn[], n: number, longPrompt: number, vocab: number, bos: number, model: string, allocator: string): Promise<MemoryResult> {
  const set = cos.slice(0, n);
  const more = cos.slice(n, 2 * n);
  const prompt = promptFor(7, 8, vocab, bos);
  const long = promptFor(8, longPrompt, vocab, bos);
  // The base's own buffers grow with the prompt: pay that before the baseline, and report it apart.
  const rssBaseShort = await rss();
  await request(engine, long, 2, null);
  const rssBefore = await rss();
  const baseLongDelta = rssBefore - rssBaseShort;
  for (const c of set) (await registry.acquire(c.record)).release();
  const rssLoaded = await rss();
  // One short request through each: ORT sizes its per-session arena and prepacks on first run.
  for (const c of set) {
    const lease = await registry.acquire(c.record);
    await request(engine, prompt, 2, { key: lease.key, alpha: 1 });
    lease.release();
  }
  const rssUsed = await rss();
  for (const c of set) {
    const lease = await registry.acquire(c.record);
    await request(engine, long, 2, { key: lease.key, alpha: 1 });
    lease.release();
  }
  const rssUsedLong = await rss();
  // N more, the same way: fixed costs were paid by the first N, so this is what one more costs.
  let rssMoreUsedLong: number | null = null;
  if (more.length === n) {
    for (const c of more) (await registry.acquire(c.record)).release();
    for (const p of [prompt, long]) {
      for (const c of more) {
        const lease = await registry.acquire(c.record);
        await request(engine, p, 2, { key: lease.key, alpha: 1 });
        lease.release();
      }
    }
    rssMoreUsedLong = await rss();
    for (const c of more) registry.retireVersion(c.record);
  }
  for (const c of set) registry.retireVersion(c.record);
  await sleep(300); // unloads are fire-and-forget messages to the worker
  const rssUnloaded = await rss();
  // Load the same N again: if RSS barely moves, what the unload left in RSS is the allocator keeping
  // freed memory for reuse, not sessions that were never freed.
  for (const c of set) (await registry.acquire(c.record)).release();
  const rssReloaded = await rss();
  for (const c of set) registry.retireVersion(c.record);
  await sleep(300);
  return {
    model, allocator, n, fileBytes: median(set.map((c) => c.graphBytes)), rssBefore, rssLoaded, rssUsed, rssUsedLong, longPrompt, rssUnloaded, rssReloaded,
    baseLongDelta, rssMoreUsedLong, workersCollected,
  };
}

async function measureLoads(engine: Engine, registry: CarryOnRegistry, cos: BenchCarryOn[], opts: Options, vocab: number, bos: number, spec: ModelSpec, firstInProcessMs: number): Promise<LoadResult> {
  const pool = cos.slice(0, Math.max(1, cos.length - 1));
  const rssBeforeCycles = await rss();
  const loadsMs: number[] = [];
  for (let i = 0; i < opts.loads; i++) {
    const c = pool[i % pool.length];
    const t0 = performance.now();
    const lease = await registry.acquire(c.record);
    loadsMs.push(performance.now() - t0);
    lease.release();
    registry.retireVersion(c.record); // idle → unloaded now, so the next acquire is a cold load
    await sleep(5);
  }

  // First-request overhead: the same prompt, carry-on cold (acquire → load → first run) vs resident.
  const resident = cos[cos.length - 1];
  const prompt = promptFor(11, opts.ttftPrompt, vocab, bos);
  {
    const lease = await registry.acquire(resident.record);
    await request(engine, prompt, 1, { key: lease.key, alpha: 1 }); // the resident one has run before
    lease.release();
  }
  const ttftCold: number[] = [];
  const ttftResident: number[] = [];
  for (let i = 0; i < opts.ttftPairs; i++) {
    const order: Array<'cold' | 'resident'> = i % 2 ? ['resident', 'cold'] : ['cold', 'resident'];
    for (const which of order) {
      const c = which === 'cold' ? pool[i % pool.length] : resident;
      const t0 = performance.now();
      const lease = await registry.acquire(c.record);
      const t = await request(engine, prompt, 1, { key: lease.key, alpha: 1 }, t0);
      lease.release();
      (which === 'cold' ? ttftCold : ttftResident).push(t.firstAt - t0);
      if (which === 'cold') registry.retireVersion(c.record);
      await sleep(5);
    }
  }
  const rssAfterCycles = await rss();
  const where = await loadBreakdown(cos[0]);
  return {
    model: spec.label,
    shape: spec.shape,
    fileBytes: cos[0].graphBytes,
    parameters: cos[0].parameters,
    firstInProcessMs,
    loadsMs,
    ttftResident,
    ttftCold,
    where,
    cycles: opts.loads + opts.ttftPairs,
    cyclesRssDelta: rssAfterCycles - rssBeforeCycles,
  };
}

/** Where a load's time goes, in this thread (the worker does the same calls): medians of 10. */
async function loadBreakdown(c: BenchCarryOn): Promise<LoadResult['where']> {
  const opts = (level: 'all' | 'disabled'): ort.InferenceSession.SessionOptions => ({
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: level,
  });
  const read: number[] = [];
  const createAll: number[] = [];
  const createBuffer: number[] = [];
  const createDisabled: number[] = [];
  const firstRun: number[] = [];
  const steadyRun: number[] = [];
  const spec = specOf(c.record);
  for (let i = 0; i < 10; i++) {
    let t0 = performance.now();
    const bytes = fs.readFileSync(c.graphPath);
    read.push(performance.now() - t0);
    t0 = performance.now();
    const fromBuffer = await ort.InferenceSession.create(bytes, opts('all'));
    createBuffer.push(performance.now() - t0);
    await fromBuffer.release();
    t0 = performance.now();
    const plain = await ort.InferenceSession.create(c.graphPath, opts('disabled'));
    createDisabled.push(performance.now() - t0);
    await plain.release();
    // What the worker runs: CarryOnSession.load (path, 'all'), then one token.
    t0 = performance.now();
    const s = await CarryOnSession.load(spec);
    createAll.push(performance.now() - t0);
    const cache = s.newCache();
    const body = { hidden: new Float32Array(spec.hiddenSize).fill(0.1), layers: new Map<number, Float32Array>() };
    t0 = performance.now();
    await s.forward([5], body, cache);
    firstRun.push(performance.now() - t0);
    t0 = performance.now();
    await s.forward([6], body, cache);
    steadyRun.push(performance.now() - t0);
    await s.release();
  }
  return {
    readMs: median(read),
    createAllMs: median(createAll),
    createBufferMs: median(createBuffer),
    createDisabledMs: median(createDisabled),
    firstRunMs: median(firstRun),
    steadyRunMs: median(steadyRun),
  };
}

// ---------------------------------------------------------------------------------------------
// 2. Decode overhead

async function measureDecode(engine: Engine, registry: CarryOnRegistry, cos: BenchCarryOn[], opts: Options, vocab: number, bos: number, spec: ModelSpec): Promise<DecodeResult[]> {
  const leases: CarryOnLease[] = [];
  for (let i = 0; i < opts.streams; i++) leases.push(await registry.acquire(cos[i].record)); // resident and held
  try {
    const out: DecodeResult[] = [];
    for (const streams of [1, opts.streams]) {
      const prompts = Array.from({ length: streams }, (_, i) => promptFor(1000 + opts.ctx + i, opts.ctx, vocab, bos));
      const baseKeys = prompts.map(() => null);
      const coKeys = prompts.map((_, i) => leases[i].key);
      const row: DecodeResult = { model: spec.label, quant: spec.quant, streams, base: [], co: [] };
      // Warm-up: arena growth and first-run costs are not decode speed.
      await decodeRun(engine, prompts, Math.min(8, opts.decode), baseKeys);
      await decodeRun(engine, prompts, Math.min(8, opts.decode), coKeys);
      for (let r = 0; r < opts.runs; r++) {
        const order: Array<['base' | 'co', Array<string | null>]> = [['base', baseKeys], ['co', coKeys]];
        if (r % 2 === 1) order.reverse();
        for (const [which, keys] of order) row[which].push(await decodeRun(engine, prompts, opts.decode, keys));
      }
      log(
        `${spec.label} ${spec.quant} x${streams}: base tok/s [${row.base.map((x) => x.tps.toFixed(1)).join(', ')}], ` +
          `+carry-on [${row.co.map((x) => x.tps.toFixed(1)).join(', ')}]`,
      );
      out.push(row);
    }
    return out;
  } finally {
    for (const l of leases) l.release();
  }
}

/** One decode step split into body / carry-on / merge / head, in-process (no worker, no messages). */
async function stepSplit(pkg: string, c: BenchCarryOn, opts: Options, spec: ModelSpec): Promise<StepSplit> {
  const runner = await openRunner(pkg, opts.threads, 256);
  const session = await CarryOnSession.load(specOf(c.record));
  try {
    const cfg = runner.config;
    const d = cfg.hidden_size;
    const once = async (decode: number) => {
      const prompt = promptFor(1000 + opts.ctx, opts.ctx, cfg.vocab_size, cfg.bos_token_id);
      const cache = runner.newCache();
      const coCache = session.newCache();
      const pre = await runner.forwardBody(prompt, cache);
      await session.forward(prompt, pre, coCache);
      let last = prompt[prompt.length - 1];
      const acc = { body: [] as number[], co: [] as number[], merge: [] as number[], head: [] as number[], hot: [] as number[] };
      for (let i = 0; i < decode; i++) {
        const t0 = performance.now();
        const body = await runner.forwardBody([last], cache);
        const t1 = performance.now();
        const { delta, gate } = await session.forward([last], body, coCache);
        const t2 = performance.now();
        const x = mergeRow(body.hidden.subarray(0, d), delta.subarray(0, d), gate.subarray(0, d), 1);
        const t3 = performance.now();
        const logits = await runner.forwardHead(x, 1);
        const t4 = performance.now();
        last = argmax(logits);
        acc.body.push(t1 - t0);
        acc.co.push(t2 - t1);
        acc.merge.push(t3 - t2);
        acc.head.push(t4 - t3);
      }
      // Hot: the last step's input again, on copies of the cache, back to back.
      const body = await runner.forwardBody([last], cache);
      for (let i = 0; i < 20; i++) {
        const copy = { length: coCache.length, tensors: new Map(coCache.tensors), secondary: [] };
        const t0 = performance.now();
        await session.forward([last], body, copy);
        acc.hot.push(performance.now() - t0);
      }
      return acc;
    };
    await once(4);
    const acc = await once(opts.decode);
    return {
      model: spec.label,
      quant: spec.quant,
      bodyMs: median(acc.body),
      carryOnMs: median(acc.co),
      carryOnHotMs: median(acc.hot),
      mergeMs: median(acc.merge),
      headMs: median(acc.head),
    };
  } finally {
    await session.release();
    await runner.release();
  }
}

/**
 * The same measurement in a fresh child process whose glibc allocator serves every block of 128 KiB
 * or more with its own mmap (MALLOC_MMAP_THRESHOLD_ fixes the threshold glibc otherwise raises as
 * blocks are freed). In this process, loading a large base frees hundreds of MB of parse buffers
 * that glibc keeps; carry-ons loaded later reuse them without RSS moving, so the RSS delta reads
 * near 0. With the fixed threshold, a carry-on's tensors are fresh mappings and RSS counts them.
 */
async function measureMemoryInChild(key: string, opts: Options): Promise<MemoryResult> {
  const args = [...process.execArgv, ...WORKER_GC_ARGS, fileURLToPath(import.meta.url), '--memory-child', key, '--memory', String(opts.memory), '--threads', String(opts.threads), '--ctx', String(opts.ctx)];
  const env = { ...process.env, MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };
  const { stdout } = await execFileAsync(process.execPath, args, { env, maxBuffer: 1 << 20 });
  const line = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as MemoryResult;
}

async function memoryChild(key: string, opts: Options): Promise<void> {
  const spec = MODELS[key];
  const pkg = await modelPackage(await spec.gguf(log), key, log);
  const cfg = readModelConfig(pkg);
  const cos = await makeBenchCarryOns(pkg, path.join(BENCH_OUT, 'carry-ons', `${key}-memory`), spec.shape, 2 * opts.memory + 1);
  workerGc = true;
  const engine = await Engine.start({ modelDir: pkg, provider: 'cpu', threads: opts.threads, prefillChunk: 256 });
  const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 2 ** 40, pinned: new Set(), log: () => {} });
  try {
    await warmEngine(engine, registry, cos[cos.length - 1], cfg.vocab_size, cfg.bos_token_id);
    const allocator = `MALLOC_MMAP_THRESHOLD_=128K, child, worker GC'd`;
    const m = await measureMemory(engine, registry, cos, opts.memory, opts.ctx, cfg.vocab_size, cfg.bos_token_id, spec.label, allocator);
    process.stdout.write(`${JSON.stringify(m)}\n`);
  } finally {
    await engine.close();
  }
}

/** A base request, and the process's first carry-on load and run (one-time ORT costs); returns that load's ms. */
async function warmEngine(engine: Engine, registry: CarryOnRegistry, c: BenchCarryOn, vocab: number, bos: number): Promise<number> {
  const warmPrompt = promptFor(3, 8, vocab, bos);
  await request(engine, warmPrompt, 2, null);
  const t0 = performance.now();
  const lease = await registry.acquire(c.record);
  const ms = performance.now() - t0;
  await request(engine, warmPrompt, 2, { key: lease.key, alpha: 1 });
  lease.release();
  registry.retireVersion(c.record);
  return ms;
}

// ---------------------------------------------------------------------------------------------
// Per base

async function benchModel(key: string, pkg: string, opts: Options, results: { loads: LoadResult[]; memory: MemoryResult[]; decode: DecodeResult[]; split: StepSplit[] }): Promise<void> {
  const spec = MODELS[key];
  const cfg = readModelConfig(pkg);
  if (opts.ctx + opts.decode > cfg.max_position_embeddings) throw new Error(`${key}: ctx + decode exceeds ${cfg.max_position_embeddings} positions`);
  const count = Math.max(opts.memory, opts.streams) + 1;
  const cos = await makeBenchCarryOns(pkg, path.join(BENCH_OUT, 'carry-ons', key), spec.shape, count);
  log(`${key}: ${count} carry-ons ${spec.shape.width}x${spec.shape.layers}, ${(cos[0].graphBytes / 1024).toFixed(0)} KiB each`);

  if (spec.loadAndMemory) {
    log(`${key}: memory in a child process (${opts.memory} carry-ons)`);
    results.memory.push(await measureMemoryInChild(key, opts));
  }
  const engine = await Engine.start({ modelDir: pkg, provider: 'cpu', threads: opts.threads, prefillChunk: 256 });
  const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 2 ** 40, pinned: new Set(), log: () => {} });
  try {
    const firstInProcessMs = await warmEngine(engine, registry, cos[cos.length - 1], cfg.vocab_size, cfg.bos_token_id);

    if (spec.loadAndMemory) {
      log(`${key}: memory (${opts.memory} carry-ons)`);
      results.memory.push(await measureMemory(engine, registry, cos, opts.memory, opts.ctx, cfg.vocab_size, cfg.bos_token_id, spec.label, 'glibc default, this process'));
      log(`${key}: ${opts.loads} cold loads, ${opts.ttftPairs} first-request pairs`);
      results.loads.push(await measureLoads(engine, registry, cos, opts, cfg.vocab_size, cfg.bos_token_id, spec, firstInProcessMs));
    }
    log(`${key}: decode`);
    results.decode.push(...(await measureDecode(engine, registry, cos, opts, cfg.vocab_size, cfg.bos_token_id, spec)));
  } finally {
    await engine.close();
  }
  log(`${key}: step split`);
  results.split.push(await stepSplit(pkg, cos[0], opts, spec));
}

// ---------------------------------------------------------------------------------------------
// Output

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Nearest-rank percentile. */
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

function table(header: string[], rows: string[][], leftCols = 1): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((w, i) => (i < leftCols ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`);
  for (const r of rows) console.log(line(r));
}

const ms = (x: number) => x.toFixed(1);
const kib = (b: number) => (b / 1024).toFixed(0);
const mib = (b: number) => (b / 2 ** 20).toFixed(1);

function printLoads(loads: LoadResult[], opts: Options): void {
  console.log(`\n## 1. Cold load of a ~1 MB carry-on (registry.acquire → Engine.loadCarryOn → worker session; unloaded between loads)\n`);
  table(
    ['base', 'carry-on', 'params', '.onnx KiB', 'first in process ms', `p50 ms (n=${opts.loads})`, 'p90 ms', 'p99 ms', 'min ms', 'p50 < 30 ms'],
    loads.map((l) => [
      l.model,
      `W${l.shape.width} L${l.shape.layers} h${l.shape.heads}`,
      `${(l.parameters / 1000).toFixed(0)}K`,
      kib(l.fileBytes),
      ms(l.firstInProcessMs),
      ms(median(l.loadsMs)),
      ms(pct(l.loadsMs, 90)),
      ms(pct(l.loadsMs, 99)),
      ms(Math.min(...l.loadsMs)),
      median(l.loadsMs) < 30 ? 'yes' : 'NO',
    ]),
    2,
  );
  console.log(`\nFirst-request overhead: TTFT (acquire → first token, ${opts.ttftPrompt}-token prompt, 1 token) with the carry-on cold vs resident, ${opts.ttftPairs} alternating pairs\n`);
  table(
    ['base', 'TTFT resident p50 ms', 'TTFT cold p50 ms', 'overhead p50 ms', 'cold p90 ms', 'cold p99 ms', 'cold / resident'],
    loads.map((l) => {
      const r = median(l.ttftResident);
      const c = median(l.ttftCold);
      return [l.model, ms(r), ms(c), ms(c - r), ms(pct(l.ttftCold, 90)), ms(pct(l.ttftCold, 99)), `${(c / r).toFixed(2)}x`];
    }),
  );
  console.log(`\nWhere a load goes (same calls in this thread, medians of 10): read file, ORT create (path, opt 'all' = CarryOnSession.load),`);
  console.log(`create from the bytes (opt 'all'), create with optimisations disabled, then the session's first and second 1-token run\n`);
  table(
    ['base', 'read ms', 'create ms', 'create(bytes) ms', 'create(opt off) ms', '1st run ms', '2nd run ms'],
    loads.map((l) => [l.model, l.where.readMs.toFixed(2), ms(l.where.createAllMs), ms(l.where.createBufferMs), ms(l.where.createDisabledMs), l.where.firstRunMs.toFixed(2), l.where.steadyRunMs.toFixed(2)]),
  );
}

function printDecode(decode: DecodeResult[], split: StepSplit[], opts: Options): void {
  console.log(`\n## 2. Decode: base vs base + carry-on (α = 1), prompt ${opts.ctx} tokens, ${opts.decode} greedy tokens, median of ${opts.runs} runs`);
  console.log(`(streams > 1: that many concurrent sequences, each with its own carry-on; tok/s is the aggregate. "step" columns: streams / median`);
  console.log(`engine step, robust to other processes preempting a step; "wall" columns: decode tokens / wall time; overhead % = base tok/s / co tok/s - 1)\n`);
  table(
    ['model', 'quant', 'streams', 'base tok/s step', '+co tok/s step', 'co/base step', 'overhead % step', '≤ 5%', 'base tok/s wall', '+co tok/s wall', 'overhead % wall', 'base TTFT ms', '+co TTFT ms'],
    decode.map((r) => {
      const bs = median(r.base.map((x) => x.stepTps));
      const cs = median(r.co.map((x) => x.stepTps));
      const bw = median(r.base.map((x) => x.tps));
      const cw = median(r.co.map((x) => x.tps));
      const over = (bs / cs - 1) * 100;
      return [
        r.model,
        r.quant,
        String(r.streams),
        bs.toFixed(1),
        cs.toFixed(1),
        `${(cs / bs).toFixed(3)}x`,
        over.toFixed(1),
        over <= 5 ? 'yes' : 'no',
        bw.toFixed(1),
        cw.toFixed(1),
        ((bw / cw - 1) * 100).toFixed(1),
        ms(median(r.base.map((x) => x.ttftMs))),
        ms(median(r.co.map((x) => x.ttftMs))),
      ];
    }),
    2,
  );
  console.log(`\nOne decode step, in-process at ctx ~${opts.ctx} (medians over ${opts.decode} steps after a warm-up): overhead % = (carry-on + merge) / (body + head);`);
  console.log(`"carry-on hot" = the same carry-on step repeated back to back, with no base body evicting its weights from the caches in between\n`);
  table(
    ['model', 'quant', 'body ms', 'head ms', 'carry-on ms', 'carry-on hot ms', 'merge ms', 'overhead %'],
    split.map((s) => [
      s.model,
      s.quant,
      s.bodyMs.toFixed(2),
      s.headMs.toFixed(2),
      s.carryOnMs.toFixed(3),
      s.carryOnHotMs.toFixed(3),
      s.mergeMs.toFixed(3),
      (((s.carryOnMs + s.mergeMs) / (s.bodyMs + s.headMs)) * 100).toFixed(1),
    ]),
    2,
  );
}

function printMemory(mem: MemoryResult[], loads: LoadResult[]): void {
  console.log(`\n## 3. Memory per resident carry-on: process RSS (engine worker included), GC'd, median of 5 reads\n`);
  const long = mem[0]?.longPrompt ?? 0;
  console.log(`Δ per carry-on = (RSS - RSS before) / N, KiB, and as a multiple of the .onnx size: right after loading; after one 8-token`);
  console.log(`request through each (first runs); after one ${long}-token request through each (buffers grow with the prefill chunk);`);
  console.log(`"N more": N more carry-ons loaded and run the same way, their RSS over the "after ${long}-token" read, per carry-on: what one`);
  console.log(`more resident carry-on costs once the fixed costs are paid. "base ${long}-token MiB": what a base-only ${long}-token request added`);
  console.log(`before the baseline (the base's buffers, not a carry-on's; the baseline includes it)\n`);
  const cell = (delta: number, m: MemoryResult) => `${kib(delta / m.n)} (${(delta / m.n / m.fileBytes).toFixed(2)}x)`;
  table(
    ['base', 'allocator', 'N', '.onnx KiB', 'RSS before MiB', `base ${long}-token MiB`, 'loaded', 'after 8-token req', `after ${long}-token req`, `N more, after ${long}-token req`, 'after unload: Δ MiB total', 'N loaded again: Δ/co KiB'],
    [...mem].sort((a, b) => a.model.localeCompare(b.model) || a.allocator.localeCompare(b.allocator)).map((m) => [
      m.model,
      m.allocator,
      String(m.n),
      kib(m.fileBytes),
      mib(m.rssBefore),
      mib(m.baseLongDelta),
      cell(m.rssLoaded - m.rssBefore, m),
      cell(m.rssUsed - m.rssBefore, m),
      cell(m.rssUsedLong - m.rssBefore, m),
      m.rssMoreUsedLong === null ? '–' : cell(m.rssMoreUsedLong - m.rssUsedLong, m),
      mib(m.rssUnloaded - m.rssBefore),
      kib((m.rssReloaded - m.rssUnloaded) / m.n),
    ]),
    2,
  );
  console.log(`\n"glibc default, this process": the benchmark's own process, after the base's load freed its parse buffers; glibc keeps`);
  console.log(`that memory and hands it to the carry-ons, so for a large base RSS hardly moves. The child process fixes glibc's mmap`);
  console.log(`threshold at 128 KiB, so a carry-on's large tensors are fresh mappings and RSS counts them: the per-carry-on cost. It also`);
  console.log(`collects the engine worker's heap before each read ("worker GC'd"): ONNX Runtime's outputs are copied into new ArrayBuffers`);
  console.log(`every run and stay in RSS until V8 next collects that thread, which the main thread's gc() does not reach.`);
  console.log(`"N loaded again": RSS growth from loading the same N after the unload, relative to after the unload (≈ 0: freed memory is reused).`);
  if (loads.length === 0) return;
  console.log(`\nRSS over the cold-load measurements (each load unloaded again): growth there means unloads do not give memory back\n`);
  table(
    ['base', 'load/unload cycles', 'RSS Δ MiB', 'Δ per cycle KiB'],
    loads.map((l) => [l.model, String(l.cycles), mib(l.cyclesRssDelta), kib(l.cyclesRssDelta / l.cycles)]),
  );
}

function printMachine(opts: Options): void {
  const cpus = os.cpus();
  console.log(`cpu: ${cpus[0]?.model ?? 'unknown'} (${cpus.length} logical cores), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM; node ${process.version}; onnxruntime-node ${ort.env.versions.node ?? ort.env.versions.common}`);
  console.log(`threads: base ${opts.threads} intra-op (--threads); each carry-on session 1 intra-op thread, run on the engine worker after the base body`);
  console.log(
    `load average (1/5/15 min) at start: ${LOAD_AT_START.map((l) => l.toFixed(2)).join(' ')}, at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}` +
      (cpus.length <= 2 ? ' (a 2-core shared machine: timings are noisy)' : ''),
  );
}

async function main(): Promise<void> {
  const opts = parseOptions();
  if (opts.memoryChild) return memoryChild(opts.memoryChild, opts);
  log(`artifacts under ${path.relative(process.cwd(), BENCH_OUT) || BENCH_OUT}`);
  const ggufs = new Map<string, string>();
  for (const key of opts.models) ggufs.set(key, await MODELS[key].gguf(log));
  releaseSyntheticCheckpoint();
  const pkgs = new Map<string, string>();
  for (const key of opts.models) pkgs.set(key, await modelPackage(ggufs.get(key)!, key, log));

  const results = { loads: [] as LoadResult[], memory: [] as MemoryResult[], decode: [] as DecodeResult[], split: [] as StepSplit[] };
  for (const key of opts.models) await benchModel(key, pkgs.get(key)!, opts, results);

  console.log('');
  printMachine(opts);
  if (results.loads.length) printLoads(results.loads, opts);
  printDecode(results.decode, results.split, opts);
  if (results.memory.length) printMemory(results.memory, results.loads);
}

await main();
