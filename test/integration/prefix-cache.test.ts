import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { Engine } from '../../src/engine/engine.js';
import type { SamplingParams, StepStats } from '../../src/engine/worker-messages.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';

/**
 * The prefix cache, through the real server: outputs with a warm cache equal a gateway without one
 * (base and carry-ons, every side of a block boundary, batched and cancelled), carry-ons read a
 * prefix the base cached without the base running over it again, tenants do not share blocks unless
 * told to, and a small budget evicts without changing any output.
 */
const BLOCK = 16;
/** Room for a few blocks of stories260K (about 2 KiB per position: keys, values and the hidden row). */
const SMALL_BUDGET = 200_000;
const STORY =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her ball. ' +
  'One day, she saw a big red bird sitting in a tree. The bird was sad because it could not fly. Lily wanted to help ' +
  'the bird, so she climbed up the tree very slowly. She gave the bird some bread and it was happy. Then the sun went ' +
  'down and Lily went home to her mom. Her mom gave her a big hug and they ate dinner together.';

interface Served {
  gw: TestGateway;
  keys: { t1: string; t2: string };
}

const work = freshDataDir('prefix-cache-pkgs-');
const served: Record<'cached' | 'plain' | 'shared' | 'small', Served | null> = { cached: null, plain: null, shared: null, small: null };
let story: number[] = [];
let other: number[] = [];

async function serve(env: Record<string, string>): Promise<Served> {
  const gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('prefix-cache-'), CARRYON_PREFILL_CHUNK: '40', ...env });
  const keys = { t1: '', t2: '' };
  for (const t of ['t1', 't2'] as const) {
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: t })).status).toBe(201);
    keys[t] = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: t })).json.key;
  }
  const baseDir = path.join(gw.dataDir, 'models', 'stories260K');
  for (const [id, seed] of [['c1', 3], ['c2', 5]] as const) {
    const rec = await makeCarryOn(baseDir, path.join(work, `${id}-${path.basename(gw.dataDir)}`), { id, perturb: 0.3, seed });
    const parts: FormPart[] = [
      { name: 'manifest', data: JSON.stringify(rec.manifest) },
      { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
    ];
    const r = await uploadCarryOn(gw, 't1', ADMIN_KEY, parts);
    expect(r.status, r.text).toBe(201);
  }
  return { gw, keys };
}

beforeAll(async () => {
  const block = { CARRYON_PREFIX_CACHE_BLOCK_TOKENS: String(BLOCK) };
  served.cached = await serve(block);
  served.plain = await serve({ CARRYON_PREFIX_CACHE_BYTES: '0' });
  served.shared = await serve({ ...block, CARRYON_PREFIX_CACHE_SHARED: 'true' });
  served.small = await serve({ ...block, CARRYON_PREFIX_CACHE_BYTES: String(SMALL_BUDGET) });
  const tok = served.cached.gw.gateway.model().tokenizer;
  story = tok.encode(STORY, true);
  other = tok.encode('The dog ran to the big tree and barked at the cat.', false);
  expect(story.length).toBeGreaterThan(120);
}, 120_000);

afterAll(async () => {
  for (const s of Object.values(served)) {
    await s?.gw.close();
    if (s) fs.rmSync(s.gw.dataDir, { recursive: true, force: true });
  }
  fs.rmSync(work, { recursive: true, force: true });
});

const get = (which: keyof typeof served): Served => served[which]!;
const client = (s: Served, key: string) => new OpenAI({ baseURL: `${s.gw.url}/v1`, apiKey: key, maxRetries: 0 });

interface Outcome {
  text: string;
  tokens: string[];
  logprobs: number[];
  cached: number;
}

async function complete(s: Served, prompt: number[], model = 'stories260K', extra: Record<string, unknown> = {}, key = s.keys.t1): Promise<Outcome> {
  const r = await client(s, key).completions.create({ model, prompt, max_tokens: 10, temperature: 0, logprobs: 2, ...extra });
  const lp = r.choices[0].logprobs!;
  const cached = (r.usage as unknown as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens;
  return { text: r.choices[0].text, tokens: lp.tokens!, logprobs: lp.token_logprobs!, cached };
}

/** Same tokens, logprobs within 1e-4. */
function expectSameOutput(got: Outcome, want: Outcome): void {
  expect(got.tokens).toEqual(want.tokens);
  expect(got.text).toBe(want.text);
  got.logprobs.forEach((lp, i) => expect(Math.abs(lp - want.logprobs[i])).toBeLessThan(1e-4));
}

async function metric(s: Served, name: string): Promise<number> {
  const r = await api(s.gw, 'GET', '/metrics', ADMIN_KEY);
  const line = r.text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

/** What a prompt already sent whole finds cached: every full block but the one holding its last token. */
const whole = (prompt: number[]) => Math.floor((prompt.length - 1) / BLOCK) * BLOCK;

const clear = async (s: Served) => expect((await api(s.gw, 'DELETE', '/admin/prefix-cache', ADMIN_KEY)).status).toBe(200);

describe('prefix cache', () => {
  it('a warm prefix gives the output of a gateway without a cache, for the base and two carry-ons, on every side of a block boundary', async () => {
    const cached = get('cached');
    const plain = get('plain');
    for (const model of ['stories260K', 'c1', 'c2']) {
      await clear(cached);
      await complete(cached, story.slice(0, 100)); // warms blocks 0..5 (96 tokens)
      for (const shared of [BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 1, 96]) {
        for (const prompt of [[...story.slice(0, shared), ...other.slice(0, 5)], story.slice(0, shared + 1)]) {
          const got = await complete(cached, prompt, model);
          expect(got.cached, `${model}, ${prompt.length} tokens sharing ${shared}`).toBe(Math.min(Math.floor(shared / BLOCK), Math.floor((prompt.length - 1) / BLOCK)) * BLOCK);
          expectSameOutput(got, await complete(plain, prompt, model));
        }
      }
    }
  });

  it('seeded sampling is the same with and without the cache', async () => {
    const prompt = [...story.slice(0, 70), ...other];
    for (const model of ['stories260K', 'c1']) {
      await complete(get('cached'), prompt, model);
      const extra = { temperature: 0.9, seed: 11, max_tokens: 16 };
      const got = await complete(get('cached'), prompt, model, extra);
      expect(got.cached).toBe(whole(prompt));
      expectSameOutput(got, await complete(get('plain'), prompt, model, extra));
    }
  });

  it('a carry-on request on a prefix a base request cached runs the base only over the rest', async () => {
    const cached = get('cached');
    await clear(cached);
    const prompt = story.slice(0, 90);
    await complete(cached, prompt, 'stories260K');
    const before = await metric(cached, 'carryon:base_prefill_tokens_total');
    const got = await complete(cached, [...prompt.slice(0, 80), ...other], 'c2');
    expect(got.cached).toBe(80);
    expect(await metric(cached, 'carryon:base_prefill_tokens_total') - before).toBe(other.length);
    expectSameOutput(got, await complete(get('plain'), [...prompt.slice(0, 80), ...other], 'c2'));
    expect(await metric(cached, 'carryon:prefix_cache_hits_total')).toBeGreaterThanOrEqual(80);
  });

  it('batched requests over one prefix, with one cancelled mid-prefill, match unbatched output without a cache', async () => {
    const cached = get('cached');
    await clear(cached);
    await complete(cached, story.slice(0, 80));
    const long = [...story, ...story, ...story].slice(0, 400);
    const abort = new AbortController();
    const cancelled = client(cached, cached.keys.t1)
      .completions.create({ model: 'c1', prompt: long, max_tokens: 50, stream: true }, { signal: abort.signal })
      .then(async (stream) => {
        await stream[Symbol.asyncIterator]().next();
      })
      .catch((err: Error) => err);
    setTimeout(() => abort.abort(), 30);
    const requests = ['stories260K', 'c1', 'c2', 'c1', 'stories260K', 'c2'].map((model, i) => ({ model, prompt: [...story.slice(0, 64 + i), ...other.slice(i)] }));
    const outs = await Promise.all(requests.map((r) => complete(cached, r.prompt, r.model)));
    await cancelled;
    for (const [i, r] of requests.entries()) expectSameOutput(outs[i], await complete(get('plain'), r.prompt, r.model));
    expect(outs.every((o) => o.cached >= 64)).toBe(true);
  });

  it('streamed chat reports cached tokens in its usage', async () => {
    const cached = get('cached');
    const messages = [{ role: 'user' as const, content: STORY }];
    const usage = async () => {
      const stream = await client(cached, cached.keys.t1).chat.completions.create({ model: 'stories260K', messages, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } });
      let last: unknown = null;
      for await (const chunk of stream) if (chunk.usage) last = chunk.usage;
      return last as { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    };
    await usage();
    const warm = await usage();
    expect(warm.prompt_tokens_details.cached_tokens).toBe(Math.floor((warm.prompt_tokens - 1) / BLOCK) * BLOCK);
  });

  it('tenants never hit each other’s prefixes by default; the sharing option lets them', async () => {
    const prompt = [...story.slice(0, 50), ...other];
    for (const which of ['cached', 'shared'] as const) {
      const s = get(which);
      await clear(s);
      expect((await complete(s, prompt, 'stories260K', {}, s.keys.t1)).cached).toBe(0);
      expect((await complete(s, prompt, 'stories260K', {}, s.keys.t1)).cached).toBe(whole(prompt));
      expect((await complete(s, prompt, 'stories260K', {}, s.keys.t2)).cached).toBe(which === 'shared' ? whole(prompt) : 0);
    }
    // Dropping one tenant's blocks leaves the other's.
    const s = get('cached');
    expect((await complete(s, prompt, 'stories260K', {}, s.keys.t2)).cached).toBe(whole(prompt));
    expect((await api(s.gw, 'DELETE', '/admin/prefix-cache?tenant=t2', ADMIN_KEY)).status).toBe(200);
    expect((await complete(s, prompt, 'stories260K', {}, s.keys.t1)).cached).toBe(whole(prompt));
    expect((await complete(s, [...prompt, 1], 'stories260K', {}, s.keys.t2)).cached).toBe(0);
  });

  it('under a small budget, eviction keeps the cache within it and outputs exact', async () => {
    const small = get('small');
    const budget = SMALL_BUDGET;
    for (let round = 0; round < 2; round++) {
      for (const start of [0, 30, 60]) {
        const prompt = [1, ...story.slice(1 + start, 1 + start + 70)];
        expectSameOutput(await complete(small, prompt), await complete(get('plain'), prompt));
        expect(await metric(small, 'carryon:prefix_cache_bytes')).toBeLessThanOrEqual(budget);
      }
    }
    expect(await metric(small, 'carryon:prefix_cache_evictions_total')).toBeGreaterThan(0);
    const blocks = await metric(small, 'carryon:prefix_cache_blocks');
    const blockBytes = (await metric(small, 'carryon:prefix_cache_bytes')) / blocks;
    expect(blocks).toBe(Math.floor(budget / blockBytes));
    expect(blocks).toBeLessThan(12); // fewer than the three prompts' blocks: eviction did happen
  });

  it('the admin route drops the cache; bad queries are OpenAI-shaped 400s', async () => {
    const cached = get('cached');
    const prompt = story.slice(0, 40);
    await complete(cached, prompt);
    expect((await complete(cached, prompt)).cached).toBe(32);
    const r = await api(cached.gw, 'DELETE', '/admin/prefix-cache', ADMIN_KEY);
    expect(r.json).toMatchObject({ object: 'prefix_cache', cleared: true, tenant: null });
    expect((await complete(cached, prompt)).cached).toBe(0);
    const bad = await api(cached.gw, 'DELETE', '/admin/prefix-cache?bogus=1', ADMIN_KEY);
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({ type: 'invalid_request_error' });
    expect((await api(cached.gw, 'DELETE', '/admin/prefix-cache', cached.keys.t1)).status).toBe(403);
  });

  it('the cache and the live KV pool share one budget: the cache gives way, admission never waits for it', async () => {
    const modelDir = path.join(get('cached').gw.dataDir, 'models', 'stories260K');
    const kvBudgetBytes = 1 << 20;
    const engine = await Engine.start({
      modelDir, provider: 'cpu', threads: 1, prefillChunk: 64, kvBudgetBytes, prefixCache: { blockTokens: BLOCK, budgetBytes: 1 << 30 },
    });
    try {
      const steps: StepStats[] = [];
      engine.onStep((st) => steps.push(st));
      const params: SamplingParams = {
        temperature: 0, topP: 1, topK: 0, seed: 0, presencePenalty: 0, frequencyPenalty: 0, maxTokens: 40, stopTokenIds: [], topLogprobs: -1,
      };
      const run = (prompt: number[]) =>
        new Promise<number>((resolve, reject) => {
          let n = 0;
          engine.submit(prompt, params, { onEvent: (ev) => (++n, ev.finish && resolve(n)), onError: (m) => reject(new Error(m)) }, null, null, null, 'ns');
        });
      // Distinct long prompts fill the cache; then eight at once need the pool.
      for (let i = 0; i < 6; i++) await run([1, ...story.slice(1 + i * 3), ...story.slice(0, 200)].slice(0, 300));
      const cachedBefore = steps.at(-1)!.prefixCache!.bytes;
      expect(cachedBefore).toBeGreaterThan(kvBudgetBytes / 4);
      const counts = await Promise.all(Array.from({ length: 8 }, (_, i) => run([1, ...other.slice(i), ...story.slice(0, 250)])));
      expect(counts.every((n) => n === 40)).toBe(true);
      for (const st of steps) expect(st.kvBytes + st.prefixCache!.bytes).toBeLessThanOrEqual(Math.max(kvBudgetBytes, st.kvBytes));
      expect(Math.max(...steps.map((st) => st.decodeRows))).toBeGreaterThan(1);
      expect(steps.reduce((n, st) => n + st.prefixCache!.evictions, 0)).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  });
});
