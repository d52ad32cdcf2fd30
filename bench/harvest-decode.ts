/**
 * What live harvesting costs the serving path: decode throughput of several concurrent streams on
 * stories260K with every request harvested (100% sampling, final layer, prompt and completion) against
 * the same requests with harvesting off, in ONE process on ONE engine, rounds interleaved so drift hits
 * every mode alike. Each σ is its own mode (the writer worker's work differs), and its bytes per
 * token come from the shards actually written.
 *
 *   node --import tsx bench/harvest-decode.ts [--streams 8] [--tokens 96] [--rounds 31] [--threads N]
 *
 * The requests go through the real inference service (scheduler, engine worker, capture, harvest sink) and
 * the real HarvestService (writer worker, σ, journal, shard files, SQLite index); only HTTP is left
 * out, since it is the same in both modes. Sampling is seeded, so every mode decodes the same tokens.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CarryOnRegistry } from '../src/serving/carry-on-registry.js';
import { Engine } from '../src/engine/engine.js';
import { Inference, type GenerateRequest } from '../src/serving/inference.js';
import { ModelRouter, type Caller } from '../src/serving/model-routing.js';
import type { HarvestConfig } from '../src/harvest/config.js';
import { HarvestService } from '../src/harvest/service.js';
import type { HarvestedSequence } from '../src/harvest/types.js';
import { resolveModelPackage } from '../src/model/model-source.js';
import { readManifest } from '../src/model/package-files.js';
import { Scheduler } from '../src/serving/scheduler.js';
import { Store } from '../src/store/store.js';
import { ModelTokenizer } from '../src/model/tokenizer.js';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '8' },
    tokens: { type: 'string', default: '96' },
    rounds: { type: 'string', default: '31' },
    threads: { type: 'string', default: String(Math.max(1, Math.min(os.availableParallelism(), 8))) },
  },
});
const STREAMS = Number(values.streams);
const TOKENS = Number(values.tokens);
const ROUNDS = Number(values.rounds);
const THREADS = Number(values.threads);
const SIGMAS = ['f16', 'int8', 'none'] as const;
type Mode = 'off' | (typeof SIGMAS)[number];

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-harvest-decode-'));
const log = (m: string) => process.stderr.write(`[bench] ${m}\n`);
const quiet = { info: () => {}, warn: () => {}, error: (o: object, m: string) => log(`${m} ${JSON.stringify(o)}`) };

function harvestConfig(sigma: (typeof SIGMAS)[number]): HarvestConfig {
  return {
    CARRYON_HARVEST: true,
    CARRYON_HARVEST_SIGMA: sigma,
    CARRYON_HARVEST_PROJECTION: '',
    CARRYON_HARVEST_QUEUE_BYTES: 64 << 20,
    CARRYON_HARVEST_SHARD_BYTES: 256 << 20,
    CARRYON_HARVEST_SHARD_AGE_MS: 10 * 60_000,
    CARRYON_HARVEST_MAX_BYTES: 0,
    CARRYON_HARVEST_MAX_AGE_MS: 0,
    CARRYON_HARVEST_PUSH_URL: '',
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
let offerMs = 0;
let offeredTokens = 0;

try {
  const modelDir = await resolveModelPackage({ model: '', dataDir: work, downloadBaseUrl: 'https://huggingface.co', log });
  const engine = await Engine.start({ modelDir, provider: 'cpu', threads: THREADS, prefillChunk: 256 });
  const tokenizer = ModelTokenizer.load(modelDir, engine.info.vocabSize);
  const fingerprint = readManifest(modelDir).fingerprint;
  const scheduler = new Scheduler({ maxLive: 64, maxWaiting: 1024 });
  const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 1 << 30, pinned: new Set(), log: () => {} });
  const router = new ModelRouter(() => [{ name: 'stories260K', fingerprint }], null).forBase('stories260K');
  const deps = { engine, scheduler, router, tokenizer, contextLength: engine.info.contextLength, timeoutMs: 600_000, registry, hiddenSize: engine.info.hiddenSize, metrics: null, rateLimiter: null, base: { name: 'stories260K', fingerprint } };

  // One inference service per mode over the same engine: the sink is the only difference.
  const generators = new Map<Mode, Inference>([['off', new Inference({ ...deps, harvestSink: null })]]);
  const services = new Map<Mode, { service: HarvestService; store: Store }>();
  for (const sigma of SIGMAS) {
    const dataDir = fs.mkdtempSync(path.join(work, `${sigma}-`));
    const store = await Store.connect({ dataDir });
    const service = new HarvestService({ config: harvestConfig(sigma), dataDir, shards: store.harvestShards, tenantExists: () => true, log: quiet });
    const sink = await service.start();
    if (!sink) throw new Error('harvesting did not start');
    // Time spent handing sequences over on the serving thread (what a request's event loop pays).
    const timed = {
      offer: (seq: HarvestedSequence) => {
        const rows = seq.tokenIds.length; // read first: offer() transfers (detaches) the arrays
        const t = performance.now();
        const ok = sink.offer(seq);
        offerMs += performance.now() - t;
        offeredTokens += rows;
        return ok;
      },
    };
    generators.set(sigma, new Inference({ ...deps, harvestSink: timed }));
    services.set(sigma, { service, store });
  }

  const prompts = Array.from({ length: STREAMS }, (_, i) => tokenizer.encode(`Once upon a time, in story number ${i}, there was`, true));
  let requestNo = 0;
  /**
   * All streams at once: tokens per second of wall time (first submit to last token), and CPU time
   * per token of the whole process (every thread: engine, ONNX Runtime, harvest writer, main), which
   * a busy neighbour on the machine disturbs far less than wall time.
   */
  async function round(mode: Mode): Promise<{ tps: number; cpuUsPerToken: number; tokens: number }> {
    const gen = generators.get(mode)!;
    const started = performance.now();
    const cpu0 = process.cpuUsage();
    const runs = await Promise.all(
      prompts.map((promptIds, i) => {
        const caller: Caller = {
          tenantId: 'bench',
          defaultCarryOn: null,
          harvest: mode === 'off' ? null : { sampleRate: 1, layers: ['final'], keep: 'both' },
          keyId: 'bench',
          scope: 'inference',
        };
        const req: GenerateRequest = {
          promptIds,
          promptParam: 'prompt',
          n: 1,
          maxTokens: TOKENS,
          maxTokensParam: 'max_tokens',
          sampling: { temperature: 0.8, topP: 1, topK: 0, seed: 1000 + i, presencePenalty: 0, frequencyPenalty: 0, topLogprobs: -1 },
          stop: [],
          route: { base: 'stories260K', record: null },
          alpha: null,
          caller,
          harvestOptOut: false,
          responseId: `bench-${requestNo++}`,
          signal: new AbortController().signal,
        };
        return gen.generate(req);
      }),
    );
    await Promise.all(runs.map(async (run) => {
      for await (const _ of run.deltas()) {
        // drain
      }
    }));
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const tokens = runs.reduce((a, r) => a + r.usage.completion_tokens, 0);
    return { tps: tokens / seconds, cpuUsPerToken: (cpu.user + cpu.system) / tokens, tokens };
  }

  const modes: Mode[] = ['off', ...SIGMAS];
  const results = new Map<Mode, Array<{ tps: number; cpuUsPerToken: number }>>(modes.map((m) => [m, []]));
  const tokenCounts = new Map<Mode, number>();
  await round('off'); // warm-up: sessions, JIT, allocator
  for (let r = 0; r < ROUNDS; r++) {
    // Rotate the order each round so no mode always runs right after another.
    for (let k = 0; k < modes.length; k++) {
      const mode = modes[(k + r) % modes.length];
      const res = await round(mode);
      results.get(mode)!.push(res);
      tokenCounts.set(mode, res.tokens);
    }
    log(`round ${r + 1}/${ROUNDS}: ${modes.map((m) => `${m} ${results.get(m)!.at(-1)!.tps.toFixed(0)}`).join(', ')} tokens/s`);
  }
  for (const m of modes) if (tokenCounts.get(m) !== tokenCounts.get('off')) throw new Error(`mode ${m} decoded a different number of tokens`);

  const off = results.get('off')!;
  /** Median over rounds of mode / off within the same round: drift between rounds cancels. */
  const ratios = (mode: Mode, pick: (x: { tps: number; cpuUsPerToken: number }) => number) => results.get(mode)!.map((x, r) => pick(x) / pick(off[r]));
  const pairedRatio = (mode: Mode, pick: (x: { tps: number; cpuUsPerToken: number }) => number) => median(ratios(mode, pick));
  const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;
  console.log(`\ndecode throughput, ${STREAMS} concurrent streams × ${TOKENS} tokens (seeded sampling), stories260K, ${THREADS} thread(s), ${ROUNDS} rounds, medians`);
  console.log('| harvest | tokens/s | throughput ratio to off (range over rounds) | CPU µs/token | CPU-efficiency ratio to off | shard bytes/token | sequences | dropped |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  console.log(`| off | ${median(off.map((x) => x.tps)).toFixed(0)} | 1.000 | ${median(off.map((x) => x.cpuUsPerToken)).toFixed(0)} | 1.000 | | | |`);
  for (const sigma of SIGMAS) {
    const { service } = services.get(sigma)!;
    await service.flush();
    const s = service.stats();
    const bytesPerToken = s.index.bytes / s.index.rows;
    const on = results.get(sigma)!;
    console.log(
      `| 100%, σ=${sigma} | ${median(on.map((x) => x.tps)).toFixed(0)} | ${pairedRatio(sigma, (x) => x.tps).toFixed(3)} (${spread(ratios(sigma, (x) => x.tps))}) | ` +
        `${median(on.map((x) => x.cpuUsPerToken)).toFixed(0)} | ${(1 / pairedRatio(sigma, (x) => x.cpuUsPerToken)).toFixed(3)} | ` +
        `${bytesPerToken.toFixed(1)} | ${s.writer.sequencesWritten} | ${s.writer.dropped} |`,
    );
  }
  console.log('(ratios: median over rounds of the harvested run against the unharvested run of the same round; ≥ 0.97 is the target)');
  console.log(`serving thread: ${((offerMs * 1000) / offeredTokens).toFixed(3)} µs per harvested token in offer() (${offeredTokens} tokens)`);
  console.log(`\nnode ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, shards in ${work}`);

  for (const { service, store } of services.values()) {
    await service.close();
    store.close();
  }
  await engine.close();
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
