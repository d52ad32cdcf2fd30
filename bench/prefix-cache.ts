/**
 * The prefix cache on the SmolLM2-135M shape (CPU): a long shared system prompt plus a short user
 * turn, with the cache and without it, in one run on one engine (a sequence without a cache
 * namespace neither looks up nor stores blocks: the engine as it was before the cache).
 *
 *   node --import tsx bench/prefix-cache.ts [--models smol-f32,smol-q4] [--system 1000] [--user 20]
 *        [--carry-ons 8] [--threads 1] [--prefill-chunk 256] [--reps 3] [--sections 1,2,3]
 *
 * 1. TTFT of the base, one request at a time: cold (no cache) vs warm (the system prompt cached by
 *    an earlier request, each request with its own user turn).
 * 2. TTFT of requests each on a different carry-on of one tenant (`--carry-ons` of them), one after
 *    another: cold; warm (the prefix cached by a base request: each carry-on reads the cached rows
 *    to build its own state); again (that state kept); and all at once, warm.
 * 3. Overhead where nothing is shared: 8 concurrent requests with distinct prompts (every lookup
 *    misses, every block is stored), end-to-end tokens/s with the cache on vs off, interleaved.
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import os from 'node:os';
import path from 'node:path';

import { CarryOnRegistry } from '../src/serving/carry-on-registry.js';
import { Engine } from '../src/engine/engine.js';
import { BENCH_OUT, shapeModel } from './lib/artifacts.js';
import { makeBenchCarryOns } from './lib/carry-ons.js';
import { intOption, modelsOption } from './lib/options.js';
import { mulberry32 } from './lib/rng.js';
import { greedy } from './lib/runners.js';
import { percentile, table } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'smol-f32' },
    system: { type: 'string', default: '1000' },
    user: { type: 'string', default: '20' },
    'carry-ons': { type: 'string', default: '8' },
    threads: { type: 'string', default: '1' },
    'prefill-chunk': { type: 'string', default: '256' },
    reps: { type: 'string', default: '3' },
    sections: { type: 'string', default: '1,2,3' },
  },
});
const SPECS = {
  'smol-f32': { shape: 'smollm2-135m', quant: 'f32' },
  'smol-q4': { shape: 'smollm2-135m', quant: 'q4_0' },
} as const;
const MODELS = modelsOption(values.models, SPECS) as Array<keyof typeof SPECS>;
const SYSTEM = intOption('system', values.system, 16);
const USER = intOption('user', values.user, 1);
const CARRY_ONS = intOption('carry-ons', values['carry-ons'], 1);
const THREADS = intOption('threads', values.threads, 1);
const PREFILL = intOption('prefill-chunk', values['prefill-chunk'], 1);
const REPS = intOption('reps', values.reps, 1);
const SECTIONS = new Set(values.sections.split(',').map((x) => intOption('sections', x.trim(), 1)));
const NAMESPACE = 'tenant:bench';
const log = (m: string) => process.stderr.write(`[prefix-cache ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

function tokens(n: number, vocab: number, rnd: () => number): number[] {
  return Array.from({ length: n }, () => 2 + Math.floor(rnd() * (vocab - 2)));
}

interface Request {
  prompt: number[];
  carryOn: string | null;
  cache: boolean;
  decode: number;
}

/** Submits every request at once; resolves with each one's TTFT (ms) and the run's end-to-end tokens/s. */
async function run(engine: Engine, requests: Request[]): Promise<{ ttfts: number[]; tps: number; cached: number[] }> {
  const t0 = performance.now();
  const ttfts: number[] = [];
  const cached: number[] = [];
  let produced = 0;
  await Promise.all(
    requests.map(
      (r, i) =>
        new Promise<void>((resolve, reject) => {
          engine.submit(r.prompt, greedy(r.decode), {
            onEvent: (ev) => {
              if (ev.cachedTokens !== undefined) {
                ttfts[i] = performance.now() - t0;
                cached[i] = ev.cachedTokens;
              }
              if (ev.token >= 0) produced++;
              if (ev.finish) resolve();
            },
            onError: (m) => reject(new Error(m)),
          }, r.carryOn ? { key: r.carryOn, alpha: 1 } : null, null, null, r.cache ? NAMESPACE : null);
        }),
    ),
  );
  const prompt = requests.reduce((n, r) => n + r.prompt.length, 0);
  return { ttfts, tps: (prompt + produced) / ((performance.now() - t0) / 1000), cached };
}

const median = (xs: number[]) => percentile(xs, 50);
const ms = (x: number) => x.toFixed(1);
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;

async function main(): Promise<void> {
  const lines: string[] = [];
  for (const key of MODELS) {
    const { shape, quant } = SPECS[key];
    const { pkg } = await shapeModel(shape, quant, key, log);
    const engine = await Engine.start({
      modelDir: pkg, provider: 'cpu', threads: THREADS, prefillChunk: PREFILL, prefixCache: { blockTokens: 16, budgetBytes: 1024 ** 3 },
    });
    const vocab = engine.info.vocabSize;
    const rnd = mulberry32(42);
    const system = [1, ...tokens(SYSTEM - 1, vocab, rnd)];
    const turn = () => [...system, ...tokens(USER, vocab, rnd)];
    const cos = await makeBenchCarryOns(pkg, path.join(BENCH_OUT, 'carry-ons', `${key}-prefix`), { width: 64, layers: 2, heads: 4 }, CARRY_ONS);
    const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 2 ** 40, pinned: new Set(), log: () => {} });
    const leases = await Promise.all(cos.map((c) => registry.acquire(c.record)));
    try {
      await run(engine, [{ prompt: tokens(64, vocab, rnd), carryOn: null, cache: false, decode: 4 }]); // warm-up: first runs allocate

      // 1. The base, one request at a time.
      if (SECTIONS.has(1)) {
        const cold: number[] = [];
        const warm: number[] = [];
        let hit = 0;
        await run(engine, [{ prompt: turn(), carryOn: null, cache: true, decode: 1 }]); // caches the system prompt
        for (let i = 0; i < REPS; i++) {
          cold.push((await run(engine, [{ prompt: turn(), carryOn: null, cache: false, decode: 1 }])).ttfts[0]);
          const w = await run(engine, [{ prompt: turn(), carryOn: null, cache: true, decode: 1 }]);
          warm.push(w.ttfts[0]);
          hit = w.cached[0];
        }
        log(`${key} base: cold ${ms(median(cold))} ms, warm ${ms(median(warm))} ms`);
        lines.push(`### ${key}: TTFT of one request, ${SYSTEM}-token system prompt + ${USER}-token user turn (${THREADS} thread(s), median of ${REPS})`, '');
        lines.push(table(['prefix', 'cached tokens', 'TTFT ms', 'vs cold'], [
          ['cold (no cache)', '0', ms(median(cold)), '1.00x'],
          ['warm', String(hit), ms(median(warm)), `${(median(cold) / median(warm)).toFixed(1)}x lower`],
        ]), '');
      }

      // 2. Carry-ons of one tenant, each its own: one after another, then all at once.
      if (SECTIONS.has(2)) {
        const oneByOne = async (cache: boolean) => {
          const out: { ttfts: number[]; cached: number[] } = { ttfts: [], cached: [] };
          for (const l of leases) {
            const r = await run(engine, [{ prompt: turn(), carryOn: l.key, cache, decode: 1 }]);
            out.ttfts.push(r.ttfts[0]);
            out.cached.push(r.cached[0]);
          }
          return out;
        };
        const coldCo = await oneByOne(false);
        await run(engine, [{ prompt: turn(), carryOn: null, cache: true, decode: 1 }]); // the base caches; the carry-ons never ran on it
        const firstCo = await oneByOne(true);
        const againCo = await oneByOne(true);
        const atOnce = (cache: boolean) => run(engine, leases.map((l) => ({ prompt: turn(), carryOn: l.key, cache, decode: 1 })));
        const coldTogether = await atOnce(false);
        const together = await atOnce(true);
        log(`${key} ${CARRY_ONS} carry-ons: cold p50 ${ms(median(coldCo.ttfts))} ms, warm p50 ${ms(median(firstCo.ttfts))} ms, again ${ms(median(againCo.ttfts))} ms`);
        const coRow = (label: string, r: { ttfts: number[]; cached: number[] }) => [
          label, String(Math.min(...r.cached)), ms(median(r.ttfts)), ms(Math.max(...r.ttfts)), `${(median(coldCo.ttfts) / median(r.ttfts)).toFixed(1)}x lower`,
        ];
        lines.push(`### ${key}: TTFT of requests on ${CARRY_ONS} different carry-ons (${(cos[0].graphBytes / 1e6).toFixed(2)} MB) of one tenant, the prefix cached by a base request`, '');
        lines.push(table(['requests', 'cached tokens (min)', 'p50 ms', 'max ms', 'p50 vs cold'], [
          ['one after another, cold (no cache)', '0', ms(median(coldCo.ttfts)), ms(Math.max(...coldCo.ttfts)), '1.00x'],
          coRow('one after another, warm: each carry-on reads the cached rows', firstCo),
          coRow('one after another, again: each carry-on\'s own state kept', againCo),
          [`all ${CARRY_ONS} at once, cold (no cache)`, '0', ms(median(coldTogether.ttfts)), ms(Math.max(...coldTogether.ttfts)), '–'],
          [`all ${CARRY_ONS} at once, warm`, String(Math.min(...together.cached)), ms(median(together.ttfts)), ms(Math.max(...together.ttfts)),
            `${(median(coldTogether.ttfts) / median(together.ttfts)).toFixed(1)}x lower than at once, cold`],
        ]), '');
      }

      // 3. Nothing shared: the cache's bookkeeping and block copies are pure overhead.
      if (SECTIONS.has(3)) {
        const distinct = (cache: boolean): Request[] => Array.from({ length: 8 }, () => ({ prompt: [1, ...tokens(255, vocab, rnd)], carryOn: null, cache, decode: 32 }));
        const off: number[] = [];
        const on: number[] = [];
        for (let i = 0; i < REPS; i++) {
          off.push((await run(engine, distinct(false))).tps);
          on.push((await run(engine, distinct(true))).tps);
        }
        log(`${key} no sharing: off ${median(off).toFixed(1)} tok/s, on ${median(on).toFixed(1)} tok/s`);
        lines.push(`### ${key}: 8 concurrent requests sharing nothing (256-token prompts, 32 tokens each), end-to-end tokens/s, median of ${REPS} interleaved`, '');
        lines.push(table(['cache', 'tok/s', 'ratio'], [
          ['off', median(off).toFixed(1), '1.00x'],
          ['on (every lookup misses, every block stored)', median(on).toFixed(1), ratio(median(on), median(off))],
        ]), '');
      }
    } finally {
      for (const l of leases) l.release();
      await engine.close();
    }
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  console.log(`cpu: ${cpu} (${os.cpus().length} logical cores); threads ${THREADS}; load average at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  console.log(lines.join('\n'));
}

await main();
