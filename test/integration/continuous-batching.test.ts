import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CarryOnRegistry, type CarryOnLease } from '../../src/serving/carry-on-registry.js';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { Engine } from '../../src/engine/engine.js';
import type { SamplingParams, StepStats, TokenEvent } from '../../src/engine/worker-messages.js';
import { importModel } from '../../src/model/import.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * Continuous batching: however sequences are batched (joining mid-flight, leaving at different
 * steps, cancelled, waiting for KV room, each on its own carry-on), every sequence's greedy output
 * is token for token what it is when it runs alone.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-batching-'));
const baseDir = path.join(tmp, 'base');
const carryOns: CarryOnVersionRecord[] = [];

interface Job {
  prompt: number[];
  maxTokens: number;
  /** Index into carryOns, or -1 for the base. */
  carryOn: number;
  alpha: number;
}

const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, maxTokens, stopTokenIds: [], topLogprobs: 2,
});

/** Prompts of very different lengths (1 to 170 tokens: several prefill chunks) from the stories vocabulary. */
function makeJobs(count: number): Job[] {
  return Array.from({ length: count }, (_, i) => {
    const len = [1, 5, 170, 12, 40, 3, 90, 7][i % 8] + (i % 3);
    const prompt = [1, ...Array.from({ length: len - 1 }, (_, t) => 3 + ((i * 37 + t * 11) % 500))];
    return { prompt, maxTokens: 8 + ((i * 13) % 40), carryOn: i % 3 === 0 ? -1 : i % carryOns.length, alpha: 1 + (i % 2) };
  });
}

async function startEngine(kvBudgetBytes?: number, chunks: { prefillChunk: number; prefillSliceMs: number } = { prefillChunk: 16, prefillSliceMs: 0 }): Promise<{ engine: Engine; registry: CarryOnRegistry }> {
  const engine = await Engine.start({ modelDir: baseDir, provider: 'cpu', threads: 1, kvBudgetBytes, ...chunks });
  const registry = new CarryOnRegistry({ loader: engine, budgetBytes: 1 << 30, pinned: new Set(), log: () => {} });
  return { engine, registry };
}

/** Runs a job to its end; `cancelAfter` cancels it after that many tokens. */
async function run(engine: Engine, registry: CarryOnRegistry, job: Job, cancelAfter = -1): Promise<TokenEvent[]> {
  const lease: CarryOnLease | null = job.carryOn >= 0 ? await registry.acquire(carryOns[job.carryOn]) : null;
  try {
    return await new Promise<TokenEvent[]>((resolve, reject) => {
      const events: TokenEvent[] = [];
      const id = engine.submit(job.prompt, greedy(job.maxTokens), {
        onEvent: (ev) => {
          events.push(ev);
          if (ev.finish) resolve(events);
          else if (events.length === cancelAfter) {
            engine.cancel(id);
            resolve(events);
          }
        },
        onError: (m) => reject(new Error(m)),
      }, lease ? { key: lease.key, alpha: job.alpha } : null);
    });
  } finally {
    lease?.release();
  }
}

const tokens = (evs: TokenEvent[]) => evs.map((e) => e.token);

let solo: Engine;
let soloRegistry: CarryOnRegistry;
const alone = new Map<Job, number[]>();

beforeAll(async () => {
  await importModel(STORIES_BIN, baseDir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  for (let i = 0; i < 4; i++) carryOns.push(await makeCarryOn(baseDir, path.join(tmp, `co${i}`), { id: `co${i}`, perturb: 0.5, seed: 10 + i }));
  ({ engine: solo, registry: soloRegistry } = await startEngine());
});

afterAll(async () => {
  await solo?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Each job on its own, one after another: the reference. */
async function aloneTokens(job: Job): Promise<number[]> {
  if (!alone.has(job)) alone.set(job, tokens(await run(solo, soloRegistry, job)));
  return alone.get(job)!;
}

describe('continuous batching', () => {
  it('gives every sequence exactly its unbatched greedy output, with staggered arrivals, mixed lengths and carry-ons', async () => {
    const jobs = makeJobs(24);
    const { engine, registry } = await startEngine();
    try {
      const batched = await Promise.all(
        jobs.map(async (job, i) => {
          // Arrivals spread over the first steps: new prompts prefill while others decode.
          if (i % 4 !== 0) await new Promise((r) => setTimeout(r, (i % 7) * 3));
          return run(engine, registry, job);
        }),
      );
      expect(engine.maxDecodeRows).toBeGreaterThanOrEqual(8);
      for (const [i, job] of jobs.entries()) {
        expect(tokens(batched[i]), `job ${i}`).toEqual(await aloneTokens(job));
        expect(batched[i]).toHaveLength(job.maxTokens);
      }
      // Logprobs agree too (batched GEMMs may round differently in the last bits).
      const soloEvents = await run(solo, soloRegistry, jobs[2]);
      batched[2].forEach((ev, t) => expect(ev.logprob!).toBeCloseTo(soloEvents[t].logprob!, 4));
    } finally {
      await engine.close();
    }
  });

  it('with chunks read in slices (a newcomer cuts one short and gets its first token before others\' chunks), every output stays exact', async () => {
    const jobs = makeJobs(16);
    // stories260K reads a token in well under a millisecond: a 1 ms slice is about 16 to 20 tokens of a 128-token chunk.
    const { engine, registry } = await startEngine(undefined, { prefillChunk: 128, prefillSliceMs: 1 });
    try {
      let lastStep: StepStats | null = null;
      engine.onStep((st) => (lastStep = st));
      const long: Job = { prompt: jobs[2].prompt.concat(jobs[6].prompt, jobs[2].prompt), maxTokens: 4, carryOn: -1, alpha: 1 };
      const short: Job = { prompt: [1, 40, 41, 42, 43], maxTokens: 4, carryOn: -1, alpha: 1 };
      let stepOfFirst: StepStats | null = null;
      const longRun = run(engine, registry, long);
      const shortRun = new Promise<void>((resolve, reject) =>
        engine.submit(short.prompt, greedy(1), {
          onEvent: () => {
            stepOfFirst = lastStep;
            resolve();
          },
          onError: (m) => reject(new Error(m)),
        }),
      );
      await shortRun;
      // The step that gave the newcomer its first token read its prompt and nothing of the long one.
      expect(stepOfFirst!.prefillTokens).toBe(short.prompt.length);
      expect(tokens(await longRun)).toEqual(await aloneTokens(long));
      const batched = await Promise.all(
        jobs.map(async (job, i) => {
          if (i % 4 !== 0) await new Promise((r) => setTimeout(r, (i % 7) * 3));
          return run(engine, registry, job);
        }),
      );
      for (const [i, job] of jobs.entries()) expect(tokens(batched[i]), `job ${i}`).toEqual(await aloneTokens(job));
    } finally {
      await engine.close();
    }
  });

  it('keeps the others exact when sequences are cancelled mid-batch', async () => {
    const jobs = makeJobs(12).map((j) => ({ ...j, maxTokens: 30 }));
    const { engine, registry } = await startEngine();
    try {
      const out = await Promise.all(jobs.map((job, i) => run(engine, registry, job, i % 3 === 1 ? 4 + i : -1)));
      for (const [i, job] of jobs.entries()) {
        const ref = await aloneTokens(job);
        if (i % 3 === 1) expect(tokens(out[i])).toEqual(ref.slice(0, 4 + i));
        else expect(tokens(out[i]), `job ${i}`).toEqual(ref);
      }
      // The engine is idle and reusable afterwards.
      expect(tokens(await run(engine, registry, jobs[0]))).toEqual(await aloneTokens(jobs[0]));
    } finally {
      await engine.close();
    }
  });

  it('gives KV memory back when the long sequences that grew the pool have ended', async () => {
    const { engine, registry } = await startEngine();
    const bytes: number[] = [];
    engine.onStep((st) => bytes.push(st.kvBytes));
    try {
      const short: Job = { prompt: [1, 5, 6], maxTokens: 120, carryOn: -1, alpha: 1 };
      const longs: Job[] = Array.from({ length: 6 }, (_, i) => ({ prompt: [1, ...Array.from({ length: 300 }, (_, t) => 3 + ((t * 7 + i) % 400))], maxTokens: 2, carryOn: -1, alpha: 1 }));
      const out = await Promise.all([run(engine, registry, short), ...longs.map((j) => run(engine, registry, j))]);
      expect(tokens(out[0])).toEqual(await aloneTokens(short));
      const peak = Math.max(...bytes);
      // 7 slots of ≥ 320 positions at the peak; one slot of ≤ 128 at the end.
      expect(bytes.at(-1)!).toBeLessThan(peak / 4);
    } finally {
      await engine.close();
    }
  });

  it('queues sequences in the engine when the KV budget is small, and still serves them all exactly', async () => {
    const jobs = makeJobs(8);
    // Room for two 64-position slots of stories260K (5 layers × K,V × 4 KV heads × 8 dims × 4 B).
    const { engine, registry } = await startEngine(2 * 64 * 5 * 2 * 4 * 8 * 4);
    try {
      const out = await Promise.all(jobs.map((job) => run(engine, registry, job)));
      expect(engine.maxDecodeRows).toBeGreaterThan(0);
      expect(engine.maxDecodeRows).toBeLessThanOrEqual(2);
      for (const [i, job] of jobs.entries()) expect(tokens(out[i]), `job ${i}`).toEqual(await aloneTokens(job));
    } finally {
      await engine.close();
    }
  });
});
