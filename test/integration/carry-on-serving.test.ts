import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { llama2cToCheckpoint } from '../../src/model/llama2c.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makePushCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * Carry-ons as users meet them: uploaded through the admin API, used through the openai SDK by two
 * tenants, replaced and deleted while requests are in flight, evicted and reloaded under a budget.
 */
let gw: TestGateway;
let work: string;
let embedding: Float32Array;
const keys = { t1: '', t2: '' };
const PROMPT = 'Once upon a time';
// Token ids of two words the pushed carry-ons favour; their pieces are what greedy output repeats.
const LILY = 0;
const BALL = 1;
const targets: number[] = [];

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-serving-') });
  work = freshDataDir('carryon-serving-pkgs-');
  embedding = (await llama2cToCheckpoint(STORIES_BIN, STORIES_TOK)).weights.tokEmbeddings;
  const tok = gw.gateway.model().tokenizer;
  targets[LILY] = tok.encode('Lily', false).at(-1)!;
  targets[BALL] = tok.encode('ball', false).at(-1)!;
  for (const t of ['t1', 't2'] as const) {
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: t })).status).toBe(201);
    const r = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: t });
    keys[t] = r.json.key;
  }
});
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

const baseDir = () => path.join(gw.dataDir, 'models', 'stories260K');
const client = (key: string) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });

async function upload(tenant: string, id: string, target: number, strength = 40): Promise<number> {
  const rec = await makePushCarryOn(baseDir(), path.join(work, `${tenant}-${id}-${target}-${strength}`), { id, tokenId: targets[target], strength, baseEmbedding: embedding });
  const parts: FormPart[] = [
    { name: 'manifest', data: JSON.stringify(rec.manifest) },
    { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
  ];
  const r = await uploadCarryOn<{ version: number }>(gw, tenant, ADMIN_KEY, parts);
  expect(r.status, r.text).toBe(201);
  return r.json.version;
}

async function greedy(key: string, model: string, extra: Record<string, unknown> = {}, maxTokens = 12): Promise<string> {
  const r = await client(key).completions.create({ model, prompt: PROMPT, max_tokens: maxTokens, temperature: 0, ...extra });
  return r.choices[0].text;
}

const pieceOf = (target: number) => gw.gateway.model().tokenizer.piece(targets[target]).text;

describe('carry-ons through the openai SDK', () => {
  it('a carry-on built to push one token visibly changes greedy output; α = 0 is the base byte for byte', async () => {
    await upload('t1', 'lily', LILY);
    const base = await greedy(keys.t1, 'stories260K');
    const pushed = await greedy(keys.t1, 'lily');
    expect(pushed).not.toBe(base);
    expect(pushed.split(pieceOf(LILY)).length - 1).toBeGreaterThanOrEqual(6);
    expect(await greedy(keys.t1, 'lily', { carry_on_alpha: 0 })).toBe(base);
    expect(await greedy(keys.t1, 'stories260K:lily', { carry_on_alpha: 0 })).toBe(base);
    // Logprobs too: α = 0 reports exactly the base's numbers.
    const lp = async (model: string, extra = {}) =>
      (await client(keys.t1).completions.create({ model, prompt: PROMPT, max_tokens: 5, temperature: 0, logprobs: 3, ...extra })).choices[0].logprobs;
    expect(await lp('lily', { carry_on_alpha: 0 })).toEqual(await lp('stories260K'));
  });

  it('α out of range is a 400 naming carry_on_alpha', async () => {
    await expect(greedy(keys.t1, 'lily', { carry_on_alpha: 9 })).rejects.toMatchObject({ status: 400, param: 'carry_on_alpha' });
  });

  it('isolates tenants both ways: the other tenant neither lists nor uses it (404 like a missing model)', async () => {
    await upload('t2', 'ball', BALL);
    expect((await client(keys.t1).models.list()).data.map((m) => m.id).sort()).toEqual(['lily', 'stories260K']);
    expect((await client(keys.t2).models.list()).data.map((m) => m.id).sort()).toEqual(['ball', 'stories260K']);
    const card = (await client(keys.t1).models.list()).data.find((m) => m.id === 'lily') as unknown as { parent: string; root: string };
    expect(card).toMatchObject({ parent: 'stories260K', root: 'stories260K' });
    for (const [key, model] of [[keys.t1, 'ball'], [keys.t2, 'lily'], [keys.t1, 'nope']] as const) {
      await expect(greedy(key, model)).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
    }
    expect((await greedy(keys.t2, 'ball')).split(pieceOf(BALL)).length - 1).toBeGreaterThanOrEqual(6);
  });

  it('a key default carry-on applies to the base name; <base>:base is the base alone', async () => {
    const r = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1', default_carry_on: 'lily' });
    expect(r.status, r.text).toBe(201);
    expect(await greedy(r.json.key, 'stories260K')).toBe(await greedy(keys.t1, 'lily'));
    expect(await greedy(r.json.key, 'stories260K:base')).toBe(await greedy(keys.t1, 'stories260K'));
  });

  it('upload → use → new version → use → delete, with a request in flight finishing on the version it started with', async () => {
    await upload('t1', 'swap', LILY);
    expect((await greedy(keys.t1, 'swap')).includes(pieceOf(LILY))).toBe(true);
    // A long stream on v1.
    const stream = await client(keys.t1).completions.create({ model: 'swap', prompt: PROMPT, max_tokens: 300, temperature: 0, stream: true });
    const iter = stream[Symbol.asyncIterator]();
    let inflight = ((await iter.next()).value as { choices: Array<{ text: string }> }).choices[0].text;
    const v2 = await upload('t1', 'swap', BALL);
    expect(v2).toBe(2);
    const after = await greedy(keys.t1, 'swap');
    expect(after.includes(pieceOf(BALL))).toBe(true);
    expect(after.includes(pieceOf(LILY))).toBe(false);
    expect((await greedy(keys.t1, 'swap@1')).includes(pieceOf(LILY))).toBe(true);
    // Delete while the v1 stream still runs: unusable at once for new requests.
    expect((await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/swap', ADMIN_KEY)).status).toBe(200);
    await expect(greedy(keys.t1, 'swap')).rejects.toMatchObject({ status: 404 });
    await expect(greedy(keys.t1, 'swap@1')).rejects.toMatchObject({ status: 404 });
    for (;;) {
      const next = await iter.next();
      if (next.done) break;
      inflight += (next.value as { choices: Array<{ text: string }> }).choices[0]?.text ?? '';
    }
    // The in-flight stream kept v1 (pushing "Lily") to its end and never switched to v2's "ball".
    expect(inflight.split(pieceOf(LILY)).length - 1).toBeGreaterThan(50);
    expect(inflight.includes(pieceOf(BALL))).toBe(false);
    // Freed once idle: no version of `swap` stays resident.
    expect(gw.gateway.model().registry.stats().loaded.filter((k) => k.startsWith('t1/swap@'))).toEqual([]);
  });
});

describe('carry-on memory budget', () => {
  it('evicts the least recently used idle carry-on and reloads it on demand', async () => {
    const small = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-budget-'), CARRYON_CARRY_ON_BUDGET_BYTES: '300000' });
    try {
      const key = (await api<CreatedApiKeyObject>(small, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'b' }), (await api<CreatedApiKeyObject>(small, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'b' })).json.key);
      for (const [id, target] of [['one', LILY], ['two', BALL]] as const) {
        const rec = await makePushCarryOn(path.join(small.dataDir, 'models', 'stories260K'), path.join(work, `budget-${id}`), { id, tokenId: targets[target], strength: 40, baseEmbedding: embedding });
        expect(rec.bytes).toBeGreaterThan(150_000); // two do not fit in 300 kB
        const r = await uploadCarryOn(small, 'b', ADMIN_KEY, [
          { name: 'manifest', data: JSON.stringify(rec.manifest) },
          { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
        ]);
        expect(r.status, r.text).toBe(201);
      }
      const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: key, maxRetries: 0 });
      const run = async (model: string) => (await c.completions.create({ model, prompt: PROMPT, max_tokens: 8, temperature: 0 })).choices[0].text;
      const first = await run('one');
      expect(small.gateway.model().registry.stats().loaded).toEqual(['b/one@1']);
      await run('two');
      expect(small.gateway.model().registry.stats().loaded).toEqual(['b/two@1']);
      expect(await run('one')).toBe(first);
      expect(small.gateway.model().registry.stats().loaded).toEqual(['b/one@1']);
    } finally {
      await small.close();
    }
  });
});
