import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { startServer } from '../../src/app/server.js';
import { readManifest } from '../../src/model/package-files.js';
import { api, uploadCarryOn } from '../helpers/admin.js';
import { makeCarryOn, packageParts, type CarryOnPackageRecord } from '../helpers/carry-on.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, testGatewayConfig, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { STORIES_BIN } from '../helpers/paths.js';

/**
 * Two bases in one gateway (CARRYON_MODELS): stories260K and a tiny random-weight Llama 2 (its
 * real 32,000-token tokenizer), each with its own engine. Through the openai SDK each answers under
 * its own name exactly as a gateway serving it alone does, and a carry-on belongs to the base whose
 * fingerprint its manifest names: it answers on that base and is refused on the other.
 */
const A = 'stories';
const B = 'llama2-tiny';
const PROMPT = 'Once upon a time';

let gw: TestGateway;
let work: string;
let llamaGguf: string;
let tenantKey = '';
const client = (key: string) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
const baseDir = (name: string) => path.join(gw.dataDir, 'models', name);

beforeAll(async () => {
  work = freshDataDir('carryon-multi-base-work-');
  llamaGguf = path.join(work, 'llama2-tiny.gguf');
  await writeFamilyGguf('llama2', llamaGguf, { seed: 7 });
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-multi-base-'), CARRYON_MODELS: `${A}=${STORIES_BIN},${B}=${llamaGguf}` });
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't1' })).status).toBe(201);
  tenantKey = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1' })).json.key;
});
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

async function greedy(c: OpenAI, model: string): Promise<string> {
  const r = await c.completions.create({ model, prompt: PROMPT, max_tokens: 12, temperature: 0 });
  expect(r.model).toBe(model);
  return r.choices[0].text;
}

/** The same greedy completion from a gateway serving only `source`. */
async function greedyAlone(source: string): Promise<string> {
  const alone = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-multi-base-alone-'), CARRYON_MODEL: source });
  try {
    const c = new OpenAI({ baseURL: `${alone.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
    return await greedy(c, alone.gateway.modelName);
  } finally {
    await alone.close();
    fs.rmSync(alone.dataDir, { recursive: true, force: true });
  }
}

async function upload(pkg: CarryOnPackageRecord, manifest: object = pkg.manifest) {
  return uploadCarryOn<{ version: number }>(gw, 't1', ADMIN_KEY, packageParts(pkg.dir, manifest));
}

describe('two base models in one gateway', () => {
  it('lists both bases in /v1/models, each with its own context length', async () => {
    const models = await client(USER_KEY).models.list();
    const bases = models.data.filter((m) => m.owned_by === 'carry-on-gateway');
    expect(bases.map((m) => m.id)).toEqual([A, B]);
    const lengths = Object.fromEntries(bases.map((m) => [m.id, (m as unknown as { max_model_len: number }).max_model_len]));
    expect(lengths).toEqual({ [A]: 512, [B]: 2048 });
    expect(await client(USER_KEY).models.retrieve(`${B}:base`)).toMatchObject({ id: `${B}:base`, root: B, max_model_len: 2048 });
  });

  it('readiness reports each base', async () => {
    const r = await api<{ status: string; models: object[] }>(gw, 'GET', '/health/ready', ADMIN_KEY);
    expect(r.status).toBe(200);
    expect(r.json.status).toBe('ready');
    expect(r.json.models).toEqual([
      { name: A, status: 'ready' },
      { name: B, status: 'ready' },
    ]);
  });

  it('each base answers under its name exactly as a gateway serving it alone does', async () => {
    const fromA = await greedy(client(USER_KEY), A);
    const fromB = await greedy(client(USER_KEY), B);
    expect(fromA).not.toBe(fromB);
    expect(fromA).toBe(await greedyAlone(STORIES_BIN));
    expect(fromB).toBe(await greedyAlone(llamaGguf));
    // `<base>:base` is the same base; chat and embeddings pick the base from `model` too.
    expect(await greedy(client(USER_KEY), `${B}:base`)).toBe(fromB);
    const chat = await client(USER_KEY).chat.completions.create({ model: B, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0 });
    expect(chat.model).toBe(B);
    const embedA = await client(USER_KEY).embeddings.create({ model: A, input: PROMPT });
    const embedB = await client(USER_KEY).embeddings.create({ model: `${B}:base`, input: PROMPT });
    // Two bases' hidden states: the same width (64) here, different vectors.
    expect(embedA.data[0].embedding).toHaveLength(64);
    expect(embedB.data[0].embedding).toHaveLength(64);
    expect(embedA.data[0].embedding).not.toEqual(embedB.data[0].embedding);
  });

  it("a carry-on of base A answers as A:<id> and <id>, is refused on base B, and a key's default applies only on A", async () => {
    const pkg = await makeCarryOn(baseDir(A), path.join(work, 'lily'), { id: 'lily', perturb: 0.5, seed: 3 });
    const up = await upload(pkg);
    expect(up.status, up.text).toBe(201);
    const base = await greedy(client(tenantKey), A);
    const onA = await greedy(client(tenantKey), `${A}:lily`);
    expect(onA).not.toBe(base);
    expect(await greedy(client(tenantKey), 'lily')).toBe(onA);

    const refused = await client(tenantKey)
      .completions.create({ model: `${B}:lily`, prompt: PROMPT, max_tokens: 4 })
      .then(() => null, (err: unknown) => err);
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    const error = refused as InstanceType<typeof OpenAI.BadRequestError>;
    expect(error.code).toBe('carry_on_base_mismatch');
    expect(error.param).toBe('model');
    expect(error.message).toContain(`belongs to base '${A}', not '${B}'`);

    // The carry-on is listed with its own base as parent.
    const card = (await client(tenantKey).models.list()).data.find((m) => m.id === 'lily') as unknown as { parent: string; root: string };
    expect(card).toMatchObject({ parent: A, root: A });

    const withDefault = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1', default_carry_on: 'lily' });
    expect(withDefault.status, withDefault.text).toBe(201);
    expect(await greedy(client(withDefault.json.key), A)).toBe(onA);
    expect(await greedy(client(withDefault.json.key), B)).toBe(await greedy(client(tenantKey), B));
  });

  it('a carry-on of base B is accepted and served on B by its bare name', async () => {
    const pkg = await makeCarryOn(baseDir(B), path.join(work, 'bee'), { id: 'bee', perturb: 0.5, seed: 4 });
    expect(pkg.manifest.base_fingerprint).toBe(readManifest(baseDir(B)).fingerprint);
    const up = await upload(pkg);
    expect(up.status, up.text).toBe(201);
    expect(await greedy(client(tenantKey), 'bee')).toBe(await greedy(client(tenantKey), `${B}:bee`));
    const refused = await api(gw, 'POST', '/v1/completions', tenantKey, { model: `${A}:bee`, prompt: PROMPT, max_tokens: 2 });
    expect(refused.status).toBe(400);
    expect(refused.json.error?.code).toBe('carry_on_base_mismatch');
  });

  it('refuses an upload whose fingerprint matches neither base, naming both', async () => {
    const pkg = await makeCarryOn(baseDir(A), path.join(work, 'stray'), { id: 'stray' });
    const r = await upload(pkg, { ...pkg.manifest, base_fingerprint: 'f'.repeat(64) });
    expect(r.status).toBe(400);
    expect(r.json.error?.param).toBe('manifest.base_fingerprint');
    expect(r.json.error?.message).toMatch(new RegExp(`built for base model ffffffffffff….*serves '${A}' \\(.*\\), '${B}' \\(`));
  });
});

describe('a base that fails to load', () => {
  it('leaves the others serving; its own requests get its 503 and readiness names it', async () => {
    const dataDir = freshDataDir('carryon-multi-base-failed-');
    const config = testGatewayConfig({ CARRYON_DATA_DIR: dataDir, CARRYON_MODELS: `${A}=${STORIES_BIN},missing=${path.join(dataDir, 'no-such.gguf')}` });
    const server = await startServer(config);
    try {
      await expect(server.ready).rejects.toThrow(/does not exist/);
      const failed = { ...server, dataDir };
      const ready = await api<{ status: string; models: { name: string; status: string; error?: string }[] }>(failed, 'GET', '/health/ready', null);
      expect(ready.status).toBe(503);
      expect(ready.json.status).toBe('failed');
      expect(ready.json.models.map((m) => [m.name, m.status])).toEqual([
        [A, 'ready'],
        ['missing', 'failed'],
      ]);
      expect(ready.json.models[1].error).toMatch(/no-such\.gguf does not exist/);
      const c = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
      expect((await c.completions.create({ model: A, prompt: PROMPT, max_tokens: 3, temperature: 0 })).choices[0].text.length).toBeGreaterThan(0);
      const refused = await api(failed, 'POST', '/v1/completions', USER_KEY, { model: 'missing', prompt: PROMPT, max_tokens: 3 });
      expect(refused.status).toBe(503);
      expect(refused.json.error?.message).toMatch(/The base model 'missing' is not available: .*does not exist/);
    } finally {
      await server.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
