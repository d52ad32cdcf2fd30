/**
 * Load benchmark of the whole gateway: the real process (`node --import tsx src/app/main.ts`) driven
 * over HTTP by the official `openai` SDK with streaming chat requests, closed loop.
 *
 *   node --import tsx bench/load.ts [--models stories,smol-q4] [--concurrency 1,4,16,64]
 *        [--duration-s 20] [--warmup-s 4] [--soak-s 600] [--soak-warmup-s 30] [--threads 1]
 *        [--skip-matrix]
 *
 * Matrix: per model, one gateway process; per concurrency C, C workers each send the next request
 * as soon as their stream ends. The first --warmup-s seconds of each point are not counted; then,
 * for --duration-s seconds, the window counts requests that complete in it, output tokens that
 * arrive in it (client: content chunks; server: carryon:generation_tokens_total), TTFT of requests
 * whose first token arrives in it and inter-token gaps that end in it. At the window's end the
 * in-flight streams are aborted (client disconnect; not an error) before the next point.
 *
 * Soak: a fresh gateway on stories260K, concurrency 16 for --soak-warmup-s + --soak-s seconds;
 * every 10 s VmRSS of the gateway process (/proc/<pid>/status) and, from /metrics,
 * carryon_process_nodejs_heap_size_used_bytes. Start = the sample at the end of the warm-up; the
 * slope is a least-squares fit over the samples from there on.
 */
import { setMaxListeners } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';

import { BENCH_OUT, STORIES_GGUF, modelPackage, smolGguf, releaseSyntheticCheckpoint } from './lib/artifacts.js';
import { metricValue, procCpuSeconds, procMemory, scrapeMetrics, startGateway, type GatewayProcess } from './lib/gateway-process.js';
import { linearFit, percentile, table } from './lib/stats.js';
import { modelsOption, numOption } from './lib/options.js';

interface ModelSpec {
  label: string;
  quant: string;
  maxTokens: number;
  gguf(log: (m: string) => void): Promise<string>;
}

const MODELS: Record<string, ModelSpec> = {
  stories: { label: 'stories260K', quant: 'f32', maxTokens: 64, gguf: async () => STORIES_GGUF },
  'smol-q4': { label: 'SmolLM2-135M-shape', quant: 'q4_0', maxTokens: 32, gguf: (log) => smolGguf('q4_0', log) },
  'smol-f32': { label: 'SmolLM2-135M-shape', quant: 'f32', maxTokens: 32, gguf: (log) => smolGguf('f32', log) },
};

/** Short TinyStories-style openings; request i uses PROMPTS[i % n] and seed i. */
const PROMPTS = [
  'Once upon a time, there was a little girl named Lily.',
  'One day, Tim went to the park with his mom.',
  'There was a big red ball in the garden.',
  'Sue liked to play with her dog in the sun.',
  'Once upon a time, a small bird lived in a tall tree.',
  'Ben found a shiny stone by the river.',
  'The cat was very hungry and looked for food.',
  'Lily and her friend wanted to build a sand castle.',
];

interface Options {
  models: string[];
  concurrency: number[];
  durationS: number;
  warmupS: number;
  maxWarmupS: number;
  soakS: number;
  soakWarmupS: number;
  soakConcurrency: number;
  sampleS: number;
  threads: number;
  skipMatrix: boolean;
}

const log = (msg: string) => process.stderr.write(`[load ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      models: { type: 'string', default: 'stories,smol-q4' },
      concurrency: { type: 'string', default: '1,4,16,64' },
      'duration-s': { type: 'string', default: '20' },
      'warmup-s': { type: 'string', default: '4' },
      'max-warmup-s': { type: 'string', default: '90' },
      'soak-s': { type: 'string', default: '600' },
      'soak-warmup-s': { type: 'string', default: '30' },
      'soak-concurrency': { type: 'string', default: '16' },
      'sample-s': { type: 'string', default: '10' },
      threads: { type: 'string', default: '1' },
      'skip-matrix': { type: 'boolean', default: false },
    },
  });
  const models = modelsOption(values.models, MODELS);
  return {
    models,
    concurrency: values.concurrency.split(',').filter(Boolean).map((c) => Math.round(numOption('concurrency', c, 1))),
    durationS: numOption('duration-s', values['duration-s'], 1),
    warmupS: numOption('warmup-s', values['warmup-s'], 0),
    maxWarmupS: numOption('max-warmup-s', values['max-warmup-s'], 0),
    soakS: numOption('soak-s', values['soak-s'], 0),
    soakWarmupS: numOption('soak-warmup-s', values['soak-warmup-s'], 0),
    soakConcurrency: Math.round(numOption('soak-concurrency', values['soak-concurrency'], 1)),
    sampleS: numOption('sample-s', values['sample-s'], 1),
    threads: Math.round(numOption('threads', values.threads, 1)),
    skipMatrix: values['skip-matrix'],
  };
}

// ---------------------------------------------------------------------------------------------
// One streaming request, timed on arrival of each chunk.

interface RequestTrace {
  sentAt: number;
  /** Arrival time of every chunk that carries generated content (performance.now() ms). */
  tokenAt: number[];
  doneAt: number;
  completionTokens: number | null;
  finishReason: string | null;
  aborted: boolean;
  error: string | null;
}

let requestCounter = 0;

async function streamOnce(client: OpenAI, model: string, maxTokens: number, signal: AbortSignal, keepTimes: boolean): Promise<RequestTrace> {
  const i = requestCounter++;
  const trace: RequestTrace = { sentAt: performance.now(), tokenAt: [], doneAt: NaN, completionTokens: null, finishReason: null, aborted: false, error: null };
  try {
    const stream = await client.chat.completions.create(
      {
        model,
        messages: [{ role: 'user', content: PROMPTS[i % PROMPTS.length] }],
        max_tokens: maxTokens,
        temperature: 1,
        seed: i,
        stream: true,
        stream_options: { include_usage: true },
      },
      { signal },
    );
    for await (const chunk of stream) {
      const now = performance.now();
      if (chunk.usage) trace.completionTokens = chunk.usage.completion_tokens;
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.finish_reason) trace.finishReason = choice.finish_reason;
      // One chunk per generated token (the gateway streams each engine step's token as it comes);
      // the role-only opening chunk and a bare finish chunk carry no content.
      if (choice.delta?.content) {
        // Without keepTimes (the soak) only the first arrival is kept.
        if (keepTimes || trace.tokenAt.length === 0) trace.tokenAt.push(now);
      }
    }
    trace.doneAt = performance.now();
    // The SDK ends the iteration quietly (no throw) when the signal aborts mid-stream.
    if (signal.aborted) trace.aborted = true;
    else if (!trace.finishReason) trace.error = 'stream ended without finish_reason';
    else if (trace.completionTokens === null) trace.error = 'stream ended without usage';
  } catch (err) {
    trace.doneAt = performance.now();
    if (signal.aborted) trace.aborted = true;
    else trace.error = err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err);
  }
  return trace;
}

// ---------------------------------------------------------------------------------------------
// Matrix point: closed loop at one concurrency.

interface PointResult {
  concurrency: number;
  warmupS: number;
  windowS: number;
  completed: number;
  clientTokens: number;
  serverTokens: number | null;
  ttft: number[];
  itl: number[];
  errors: number;
  errorSamples: string[];
  aborted: number;
  finishReasons: Record<string, number>;
  /** Content chunks per usage.completion_tokens over completed requests (1.00 = one chunk per token). */
  chunksPerToken: number;
  meanOutputTokens: number;
  gatewayCpu: number;
  clientCpu: number;
}

async function runPoint(gw: GatewayProcess, client: OpenAI, model: string, spec: ModelSpec, concurrency: number, singleMs: number, opts: Options): Promise<PointResult> {
  const traces: RequestTrace[] = [];
  const controller = new AbortController();
  setMaxListeners(0, controller.signal); // every in-flight request listens on it
  const t0 = performance.now();
  // Closed-loop workers that all start at once stay phase-locked (same-length requests, served
  // round-robin: they finish together and all prefill together again). Spread the starts over about
  // one request's duration at this concurrency (C × a lone request's latency, capped) instead.
  const staggerMs = Math.min(concurrency * singleMs, opts.maxWarmupS * 500);
  let firstDone = 0;
  let allDone: () => void = () => {};
  const everyWorkerDone = new Promise<void>((r) => (allDone = r));
  const worker = async (k: number) => {
    await sleep((k / concurrency) * staggerMs);
    let first = true;
    while (!controller.signal.aborted) {
      traces.push(await streamOnce(client, model, spec.maxTokens, controller.signal, true));
      if (first && ++firstDone === concurrency) allDone();
      first = false;
    }
  };
  const workers = Array.from({ length: concurrency }, (_, k) => worker(k));
  // Warm-up: at least --warmup-s, and until every worker has finished one request (steady state),
  // but no longer than --max-warmup-s.
  await sleep(opts.warmupS * 1000);
  await Promise.race([everyWorkerDone, sleep(Math.max(0, t0 + opts.maxWarmupS * 1000 - performance.now()))]);
  const windowStart = performance.now();
  const cpuStart = procCpuSeconds(gw.pid);
  const clientCpuStart = process.cpuUsage();
  const serverStart = metricValue(await scrapeMetrics(gw), 'carryon:generation_tokens_total');
  await sleep(Math.max(0, windowStart + opts.durationS * 1000 - performance.now()));
  // Read the counters before aborting, so the window's end is the same instant for all of them.
  const actualEnd = performance.now();
  const cpuEnd = procCpuSeconds(gw.pid);
  const clientCpuEnd = process.cpuUsage(clientCpuStart);
  const serverEnd = metricValue(await scrapeMetrics(gw), 'carryon:generation_tokens_total');
  controller.abort();
  await Promise.all(workers);

  const inWindow = (t: number) => t >= windowStart && t < actualEnd;
  const res: PointResult = {
    concurrency,
    warmupS: (windowStart - t0) / 1000,
    windowS: (actualEnd - windowStart) / 1000,
    completed: 0,
    clientTokens: 0,
    serverTokens: serverStart !== null && serverEnd !== null ? serverEnd - serverStart : null,
    ttft: [],
    itl: [],
    errors: 0,
    errorSamples: [],
    aborted: 0,
    finishReasons: {},
    chunksPerToken: NaN,
    meanOutputTokens: NaN,
    gatewayCpu: (cpuEnd - cpuStart) / ((actualEnd - windowStart) / 1000),
    clientCpu: (clientCpuEnd.user + clientCpuEnd.system) / 1e6 / ((actualEnd - windowStart) / 1000),
  };
  let chunkSum = 0;
  let tokenSum = 0;
  for (const t of traces) {
    if (t.error) {
      res.errors++;
      if (res.errorSamples.length < 3) res.errorSamples.push(t.error);
      continue;
    }
    if (t.aborted) res.aborted++;
    if (!t.aborted && inWindow(t.doneAt)) {
      res.completed++;
      res.finishReasons[t.finishReason!] = (res.finishReasons[t.finishReason!] ?? 0) + 1;
      chunkSum += t.tokenAt.length;
      tokenSum += t.completionTokens ?? 0;
    }
    for (let k = 0; k < t.tokenAt.length; k++) {
      if (!inWindow(t.tokenAt[k])) continue;
      res.clientTokens++;
      if (k === 0) res.ttft.push(t.tokenAt[0] - t.sentAt);
      else res.itl.push(t.tokenAt[k] - t.tokenAt[k - 1]);
    }
  }
  res.chunksPerToken = tokenSum > 0 ? chunkSum / tokenSum : NaN;
  res.meanOutputTokens = res.completed > 0 ? tokenSum / res.completed : NaN;
  return res;
}

/**
 * A few requests before anything is timed (first-run costs, JIT and ORT arenas, are not load
 * behaviour); returns the median end-to-end latency of a lone request, in ms.
 */
async function warmGateway(client: OpenAI, model: string, spec: ModelSpec): Promise<number> {
  const ctl = new AbortController();
  setMaxListeners(0, ctl.signal);
  const burst = await Promise.all(Array.from({ length: 4 }, () => streamOnce(client, model, spec.maxTokens, ctl.signal, true)));
  const alone: RequestTrace[] = [];
  for (let i = 0; i < 5; i++) alone.push(await streamOnce(client, model, spec.maxTokens, ctl.signal, true));
  const bad = [...burst, ...alone].find((t) => t.error);
  if (bad) throw new Error(`warm-up request failed: ${bad.error}`);
  const t = alone[0];
  const singleMs = percentile(alone.map((a) => a.doneAt - a.sentAt), 50);
  log(`warm-up ok: ${t.tokenAt.length} content chunks, usage.completion_tokens ${t.completionTokens}, finish ${t.finishReason}; lone request ${singleMs.toFixed(1)} ms`);
  return singleMs;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function gatewayEnv(pkg: string, opts: Options): Record<string, string> {
  return {
    CARRYON_MODEL: pkg,
    CARRYON_THREADS: String(opts.threads),
    // 64 concurrent streams must stay below the admission bound: all live, none queued, no 429.
    CARRYON_MAX_LIVE_SEQUENCES: String(Math.max(64, ...opts.concurrency, opts.soakConcurrency)),
    CARRYON_MAX_WAITING: '256',
    CARRYON_HARVEST: 'off',
  };
}

function newClient(gw: GatewayProcess): OpenAI {
  // No retries: an error must show up as an error, not as a slower request.
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: gw.adminKey, maxRetries: 0, timeout: 600_000 });
}

async function benchModel(key: string, pkg: string, opts: Options): Promise<PointResult[]> {
  const spec = MODELS[key];
  log(`${key}: starting gateway on ${pkg}`);
  const tBoot = performance.now();
  const gw = await startGateway(gatewayEnv(pkg, opts));
  log(`${key}: ready in ${((performance.now() - tBoot) / 1000).toFixed(1)} s (pid ${gw.pid}, RSS ${(procMemory(gw.pid).rss / 2 ** 20).toFixed(0)} MiB)`);
  const results: PointResult[] = [];
  try {
    const client = newClient(gw);
    const model = (await client.models.list()).data[0].id;
    const singleMs = await warmGateway(client, model, spec);
    for (const c of opts.concurrency) {
      const r = await runPoint(gw, client, model, spec, c, singleMs, opts);
      results.push(r);
      log(
        `${key} c=${c} (warm-up ${r.warmupS.toFixed(1)} s): ${(r.completed / r.windowS).toFixed(2)} req/s, ${((r.serverTokens ?? r.clientTokens) / r.windowS).toFixed(1)} tok/s, ` +
          `TTFT p50 ${percentile(r.ttft, 50).toFixed(1)} ms, ITL p50 ${percentile(r.itl, 50).toFixed(1)} ms, errors ${r.errors}` +
          (r.errorSamples.length ? ` (${r.errorSamples.join('; ')})` : ''),
      );
      // Let aborted sequences leave the engine before the next point starts.
      await new Promise((r) => setTimeout(r, 1500));
    }
    log(`${key}: gateway RSS after the matrix ${(procMemory(gw.pid).rss / 2 ** 20).toFixed(0)} MiB (peak ${(procMemory(gw.pid).hwm / 2 ** 20).toFixed(0)} MiB)`);
  } catch (err) {
    log(`${key}: gateway log tail:\n${gw.logTail()}`);
    throw err;
  } finally {
    const code = await gw.stop();
    if (code !== 0) log(`${key}: gateway exited with ${code}\n${gw.logTail()}`);
  }
  return results;
}

function printMatrix(key: string, results: PointResult[], opts: Options): void {
  const spec = MODELS[key];
  const base = results.find((r) => r.concurrency === 1) ?? results[0];
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const rps = (r: PointResult) => r.completed / r.windowS;
  const tps = (r: PointResult) => (r.serverTokens ?? r.clientTokens) / r.windowS;
  console.log(`\n### ${spec.label} ${spec.quant} (max_tokens ${spec.maxTokens}, ${opts.threads} ORT thread(s), ${opts.durationS} s window after a warm-up of >= ${opts.warmupS} s and until every worker finished a request)\n`);
  console.log(
    table(
      ['conc', 'warm-up s', 'req/s', 'out tok/s', 'client tok/s', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'ITL p99 ms', 'done', 'errors', 'mean out tok', 'gw CPU', 'bench CPU'],
      results.map((r) => [
        String(r.concurrency),
        f(r.warmupS),
        f(rps(r), 2),
        f(tps(r)),
        f(r.clientTokens / r.windowS),
        f(percentile(r.ttft, 50)),
        f(percentile(r.ttft, 99)),
        f(percentile(r.itl, 50), 2),
        f(percentile(r.itl, 99), 2),
        String(r.completed),
        String(r.errors),
        f(r.meanOutputTokens),
        `${Math.round(r.gatewayCpu * 100)}%`,
        `${Math.round(r.clientCpu * 100)}%`,
      ]),
    ),
  );
  console.log(`\nRatios vs concurrency ${base.concurrency} (same run):\n`);
  console.log(
    table(
      ['conc', 'req/s ×', 'tok/s ×', 'TTFT p50 ×', 'TTFT p99 ×', 'ITL p50 ×', 'ITL p99 ×', 'tok/s per stream'],
      results.map((r) => [
        String(r.concurrency),
        f(rps(r) / rps(base), 2),
        f(tps(r) / tps(base), 2),
        f(percentile(r.ttft, 50) / percentile(base.ttft, 50), 2),
        f(percentile(r.ttft, 99) / percentile(base.ttft, 99), 2),
        f(percentile(r.itl, 50) / percentile(base.itl, 50), 2),
        f(percentile(r.itl, 99) / percentile(base.itl, 99), 2),
        f(tps(r) / r.concurrency),
      ]),
    ),
  );
  const notes: string[] = [];
  for (const r of results) {
    if (Math.abs(r.chunksPerToken - 1) > 0.02) notes.push(`c=${r.concurrency}: ${r.chunksPerToken.toFixed(3)} content chunks per completion token (ITL is per chunk)`);
    if (r.errors) notes.push(`c=${r.concurrency}: ${r.errors} errors, e.g. ${r.errorSamples.join('; ')}`);
  }
  const fr = results.map((r) => `c=${r.concurrency} ${Object.entries(r.finishReasons).map(([k, v]) => `${k}:${v}`).join(' ')}`).join('; ');
  notes.push(`finish reasons of completed requests: ${fr}`);
  for (const n of notes) console.log(`note: ${n}`);
}

// ---------------------------------------------------------------------------------------------
// Soak.

interface Sample {
  t: number;
  rss: number;
  heapUsed: number | null;
  completed: number;
  errors: number;
  serverTokens: number | null;
  running: number | null;
}

async function soak(pkg: string, opts: Options): Promise<void> {
  const spec = MODELS.stories;
  log(`soak: starting gateway (stories260K), concurrency ${opts.soakConcurrency}, ${opts.soakWarmupS} s warm-up + ${opts.soakS} s`);
  const gw = await startGateway(gatewayEnv(pkg, opts));
  const bootRss = procMemory(gw.pid).rss;
  const client = newClient(gw);
  const model = (await client.models.list()).data[0].id;
  const singleMs = await warmGateway(client, model, spec);
  const controller = new AbortController();
  setMaxListeners(0, controller.signal);
  let completed = 0;
  let errors = 0;
  const errorSamples: string[] = [];
  const samples: Sample[] = [];
  const t0 = performance.now();
  const totalMs = (opts.soakWarmupS + opts.soakS) * 1000;
  const cpu0 = procCpuSeconds(gw.pid);

  const sample = async (): Promise<Sample> => {
    const mem = procMemory(gw.pid);
    let heapUsed: number | null = null;
    let serverTokens: number | null = null;
    let running: number | null = null;
    try {
      const text = await scrapeMetrics(gw);
      heapUsed = metricValue(text, 'carryon_process_nodejs_heap_size_used_bytes');
      serverTokens = metricValue(text, 'carryon:generation_tokens_total');
      running = metricValue(text, 'carryon:num_requests_running');
    } catch (err) {
      log(`soak: /metrics scrape failed: ${(err as Error).message}`);
    }
    return { t: (performance.now() - t0) / 1000, rss: mem.rss, heapUsed, completed, errors, serverTokens, running };
  };

  const worker = async (k: number) => {
    await sleep((k / opts.soakConcurrency) * Math.min(opts.soakConcurrency * singleMs, 10_000));
    while (!controller.signal.aborted) {
      const tr = await streamOnce(client, model, spec.maxTokens, controller.signal, false);
      if (tr.error) {
        errors++;
        if (errorSamples.length < 3) errorSamples.push(tr.error);
      } else if (!tr.aborted) completed++;
    }
  };
  let idle: Sample;
  try {
    const workers = Array.from({ length: opts.soakConcurrency }, (_, k) => worker(k));
    samples.push(await sample());
    for (let k = 1; (k * opts.sampleS * 1000) <= totalMs; k++) {
      await new Promise((r) => setTimeout(r, Math.max(0, t0 + k * opts.sampleS * 1000 - performance.now())));
      const s = await sample();
      samples.push(s);
      const prev = samples[samples.length - 2];
      log(
        `soak t=${s.t.toFixed(0)} s: RSS ${(s.rss / 2 ** 20).toFixed(1)} MiB, heap used ${s.heapUsed === null ? '-' : (s.heapUsed / 2 ** 20).toFixed(1) + ' MiB'}, ` +
          `${((s.completed - prev.completed) / (s.t - prev.t)).toFixed(1)} req/s, errors ${s.errors}`,
      );
    }
    controller.abort();
    await Promise.all(workers);
    // Informational: the same process 10 s after the load stopped.
    await new Promise((r) => setTimeout(r, 10_000));
    idle = await sample();
  } finally {
    controller.abort();
    const cpuS = procCpuSeconds(gw.pid) - cpu0;
    const code = await gw.stop();
    if (code !== 0) log(`soak: gateway exited with ${code}\n${gw.logTail()}`);
    log(`soak: gateway CPU ${cpuS.toFixed(0)} s over ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  const dump = path.join(BENCH_OUT, `load-soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(dump, JSON.stringify({ opts, bootRss, samples, idle, completed, errors }, null, 1));
  log(`soak samples written to ${path.relative(process.cwd(), dump)}`);
  printSoak(samples, idle, bootRss, completed, errors, errorSamples, opts);
}

function printSoak(samples: Sample[], idle: Sample | null, bootRss: number, completed: number, errors: number, errorSamples: string[], opts: Options): void {
  const MiB = 2 ** 20;
  const f = (x: number | null, d = 1) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(d));
  const start = samples.find((s) => s.t >= opts.soakWarmupS - 0.5) ?? samples[0];
  const measured = samples.filter((s) => s.t >= start.t);
  const end = measured[measured.length - 1];
  console.log(`\n### Soak: stories260K, concurrency ${opts.soakConcurrency}, ${opts.soakWarmupS} s warm-up + ${opts.soakS} s, sampled every ${opts.sampleS} s\n`);
  console.log(`gateway RSS right after /health/ready: ${(bootRss / MiB).toFixed(1)} MiB`);
  console.log(
    table(
      ['t s', 'RSS MiB', 'heap used MiB', 'req/s (interval)', 'out tok/s (interval)', 'running', 'errors'],
      samples.map((s, i) => {
        const p = samples[i - 1];
        return [
          f(s.t, 0) + (s === start ? ' (start)' : ''),
          f(s.rss / MiB),
          s.heapUsed === null ? '-' : f(s.heapUsed / MiB),
          p ? f((s.completed - p.completed) / (s.t - p.t)) : '-',
          p && s.serverTokens !== null && p.serverTokens !== null ? f((s.serverTokens - p.serverTokens) / (s.t - p.t), 0) : '-',
          f(s.running, 0),
          String(s.errors),
        ];
      }),
    ),
  );
  const minutes = measured.map((s) => (s.t - start.t) / 60);
  const rows: string[][] = [];
  const verdict = (series: number[], name: string) => {
    const fit = linearFit(minutes, series.map((v) => v / MiB));
    const spanMin = minutes[minutes.length - 1] - minutes[0];
    const rise = fit.slope * spanMin;
    const lo = fit.slope - 2 * fit.slopeSe;
    const hi = fit.slope + 2 * fit.slopeSe;
    // "Beyond noise": the slope's ~95% interval excludes zero AND the fitted rise over the whole
    // soak is more than 3 residual SDs (a real trend, not a few MiB of allocator jitter).
    const beyond = lo > 0 && rise > 3 * fit.residualSd;
    rows.push([
      name,
      f(series[0] / MiB),
      f(series[series.length - 1] / MiB),
      f((series[series.length - 1] - series[0]) / MiB),
      `${f(fit.slope, 3)} [${f(lo, 3)}, ${f(hi, 3)}]`,
      f(rise),
      f(fit.residualSd, 2),
      beyond ? 'YES: grows beyond noise' : 'no',
    ]);
  };
  // GC sawtooth dominates single samples; the floor (minimum) of each minute is what a leak raises.
  const perMin = Math.max(2, Math.round(60 / opts.sampleS));
  const floors = (series: number[]) => {
    const out: number[] = [];
    for (let i = 0; i + perMin <= series.length; i += perMin) out.push(Math.min(...series.slice(i, i + perMin)));
    return out;
  };
  const floorFit = (series: number[], name: string) => {
    const fl = floors(series);
    if (fl.length < 3) return;
    const fit = linearFit(fl.map((_, i) => i), fl.map((v) => v / MiB));
    const lo = fit.slope - 2 * fit.slopeSe;
    rows.push([
      `${name}, per-minute floor`,
      f(fl[0] / MiB),
      f(fl[fl.length - 1] / MiB),
      f((fl[fl.length - 1] - fl[0]) / MiB),
      `${f(fit.slope, 3)} [${f(lo, 3)}, ${f(fit.slope + 2 * fit.slopeSe, 3)}]`,
      f(fit.slope * (fl.length - 1)),
      f(fit.residualSd, 2),
      lo > 0 && fit.slope * (fl.length - 1) > 3 * fit.residualSd ? 'YES: grows beyond noise' : 'no',
    ]);
  };
  const rss = measured.map((s) => s.rss);
  verdict(rss, 'RSS');
  floorFit(rss, 'RSS');
  const heaps = measured.map((s) => s.heapUsed);
  if (heaps.every((h): h is number => h !== null)) {
    verdict(heaps, 'JS heap used (main thread)');
    floorFit(heaps, 'JS heap used');
  }
  console.log(`\nMemory from the end of the warm-up (t = ${start.t.toFixed(0)} s) to the end (t = ${end.t.toFixed(0)} s), ${measured.length} samples:\n`);
  console.log(table(['series', 'start MiB', 'end MiB', 'Δ MiB', 'slope MB/min [±2 SE]', 'fitted rise MiB', 'resid SD MiB', 'beyond noise?'], rows));
  console.log('(MB here = MiB; "beyond noise" = the slope\'s ±2 SE interval is above 0 and the fitted rise exceeds 3 residual SDs;');
  console.log(' the per-minute floor rows fit the minimum of each minute\'s samples, which the GC sawtooth does not move.)');
  if (idle) console.log(`10 s after the load stopped: RSS ${(idle.rss / MiB).toFixed(1)} MiB, heap used ${idle.heapUsed === null ? '-' : (idle.heapUsed / MiB).toFixed(1) + ' MiB'}`);
  const dur = end.t - samples[0].t;
  console.log(`requests completed: ${completed} (${(completed / dur).toFixed(1)} req/s), errors: ${errors}${errorSamples.length ? ` (${errorSamples.join('; ')})` : ''}`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOptions();
  const keys = opts.skipMatrix ? [] : opts.models;
  const ggufs = new Map<string, string>();
  for (const key of new Set([...keys, ...(opts.soakS > 0 ? ['stories'] : [])])) ggufs.set(key, await MODELS[key].gguf(log));
  releaseSyntheticCheckpoint();
  const pkgs = new Map<string, string>();
  for (const [key, gguf] of ggufs) pkgs.set(key, await modelPackage(gguf, key, log));

  const cpus = os.cpus();
  console.log(`cpu: ${cpus[0]?.model ?? 'unknown'} (${cpus.length} logical cores), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM; node ${process.version}`);
  console.log(`gateway: CARRYON_THREADS=${opts.threads}, CARRYON_MAX_LIVE_SEQUENCES=${gatewayEnv('', opts).CARRYON_MAX_LIVE_SEQUENCES}, CARRYON_MAX_WAITING=256; client: openai SDK, streaming chat, temperature 1, seed per request`);
  console.log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  const all: Array<[string, PointResult[]]> = [];
  for (const key of keys) {
    const results = await benchModel(key, pkgs.get(key)!, opts);
    all.push([key, results]);
    printMatrix(key, results, opts);
    console.log(`load average now: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  }
  const errorsBelowBound = all.flatMap(([, rs]) => rs).reduce((a, r) => a + r.errors, 0);
  if (keys.length) {
    console.log(`\nerrors below the admission bound (all points): ${errorsBelowBound}${errorsBelowBound ? '  <-- FAILED: expected 0' : ''}`);
    if (errorsBelowBound) process.exitCode = 1;
  }
  if (opts.soakS > 0) await soak(pkgs.get('stories')!, opts);
  console.log(`\nload average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (cpus.length <= 2) {
    console.log(
      `note: ${cpus.length} logical cores shared by the gateway (engine worker + HTTP event loop), this load generator and ` +
        'any other process on the machine: throughput saturates on CPU, and latencies include the bench client\'s own work.',
    );
  }
}

await main();
