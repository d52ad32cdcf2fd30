import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { readManifest } from '../../src/model/package-files.js';
import { api, uploadCarryOn } from '../helpers/admin.js';
import { makeCarryOn, packageParts, type CarryOnPackageRecord } from '../helpers/carry-on.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { writePerturbedCheckpoint, writeRespeltTokenizer } from '../helpers/stories-bin.js';

/**
 * Mixture carry-ons through the gateway: four bases served at once, two sharing stories260K's
 * tokenizer (stories260K and a perturbed copy) and two that do not (a tiny Llama 2 with its
 * 32,000-token tokenizer; a stories copy whose 512-token vocabulary spells one token otherwise). A carry-on of the first that also reads the second uploads and answers
 * through the SDK; uploads naming a base that is not served, the primary itself, or a base with
 * another tokenizer are refused with the field that is wrong.
 */
const A = 'stories';
const B = 'stories-other';
const C = 'llama2-tiny';
const D = 'stories-respelt';
const PROMPT = 'Once upon a time';

let gw: TestGateway;
let work: string;
let tenantKey = '';
const baseDir = (name: string) => path.join(gw.dataDir, 'models', name);
const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: tenantKey, maxRetries: 0 });

beforeAll(async () => {
  work = freshDataDir('carryon-mixture-work-');
  const other = path.join(work, 'stories-other.bin');
  writePerturbedCheckpoint(other, { seed: 11, scale: 0.3 });
  fs.copyFileSync(STORIES_TOK, path.join(work, 'tok512.bin')); // found beside the checkpoint, as for stories260K
  // Same size of vocabulary, one token spelt otherwise: a tokenizer that is not the same.
  const respelt = path.join(work, 'respelt');
  fs.mkdirSync(respelt);
  writePerturbedCheckpoint(path.join(respelt, 'stories-respelt.bin'), { seed: 12, scale: 0.3 });
  writeRespeltTokenizer(path.join(respelt, 'tok512.bin'), STORIES_TOK, 400, 'qqxq');
  const llama = path.join(work, 'llama2-tiny.gguf');
  await writeFamilyGguf('llama2', llama, { seed: 7 });
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-mixture-'), CARRYON_MODELS: `${A}=${STORIES_BIN},${B}=${other},${C}=${llama},${D}=${path.join(respelt, 'stories-respelt.bin')}` });
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't1' })).status).toBe(201);
  tenantKey = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1' })).json.key;
}, 120_000);
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

function upload(pkg: CarryOnPackageRecord, manifest: object = pkg.manifest) {
  return uploadCarryOn<{ version: number; manifest: Record<string, unknown> }>(gw, 't1', ADMIN_KEY, packageParts(pkg.dir, manifest));
}

async function greedy(model: string, extra: object = {}): Promise<string> {
  const r = await client().completions.create({ model, prompt: PROMPT, max_tokens: 16, temperature: 0, ...extra });
  return r.choices[0].text;
}

describe('mixture carry-ons', () => {
  it('a carry-on of A that reads B too uploads, answers through the SDK, and is A exactly at α = 0', async () => {
    const pkg = await makeCarryOn(baseDir(A), path.join(work, 'mix'), { id: 'mix', perturb: 0.5, seed: 3, secondaryBaseDirs: [baseDir(B)] });
    const up = await upload(pkg);
    expect(up.status, up.text).toBe(201);
    expect(up.json.manifest.secondary_bases).toEqual([{ fingerprint: readManifest(baseDir(B)).fingerprint, hidden_size: 64, input_layers: ['final'] }]);
    const base = await greedy(A);
    const mixed = await greedy('mix');
    expect(mixed).not.toBe(base);
    expect(await greedy(`${A}:mix`)).toBe(mixed);
    expect(await greedy('mix', { carry_on_alpha: 0 })).toBe(base);
    // Streaming and chat take the same path.
    const chunks: string[] = [];
    for await (const c of await client().completions.create({ model: 'mix', prompt: PROMPT, max_tokens: 16, temperature: 0, stream: true })) chunks.push(c.choices[0]?.text ?? '');
    expect(chunks.join('')).toBe(mixed);
    // It belongs to its primary: refused on B.
    const refused = await api(gw, 'POST', '/v1/completions', tenantKey, { model: `${B}:mix`, prompt: PROMPT, max_tokens: 2 });
    expect(refused.status).toBe(400);
    expect(refused.json.error?.code).toBe('carry_on_base_mismatch');
  });

  it('refuses a secondary base that is not served, is the primary, or has another tokenizer, naming the field', async () => {
    const pkg = await makeCarryOn(baseDir(A), path.join(work, 'bad'), { id: 'bad', secondaryBaseDirs: [baseDir(B)] });
    const secondary = (pkg.manifest.secondary_bases ?? [])[0];
    const withSecondary = (patch: object) => ({ ...pkg.manifest, secondary_bases: [{ ...secondary, ...patch }] });

    const unserved = await upload(pkg, withSecondary({ fingerprint: 'e'.repeat(64) }));
    expect(unserved.status).toBe(400);
    expect(unserved.json.error).toMatchObject({ code: 'invalid_value', param: 'manifest.secondary_bases.0.fingerprint' });
    expect(unserved.json.error?.message).toMatch(/not served by this gateway/);

    const itself = await upload(pkg, withSecondary({ fingerprint: pkg.manifest.base_fingerprint }));
    expect(itself.status).toBe(400);
    expect(itself.json.error?.message).toMatch(/primary base itself/);

    for (const other of [C, D]) {
      const otherTokenizer = await upload(pkg, withSecondary({ fingerprint: readManifest(baseDir(other)).fingerprint }));
      expect(otherTokenizer.status, other).toBe(400);
      expect(otherTokenizer.json.error).toMatchObject({ param: 'manifest.secondary_bases.0.fingerprint' });
      expect(otherTokenizer.json.error?.message).toMatch(/does not share the primary base's tokenizer/);
    }

    const wrongWidth = await upload(pkg, withSecondary({ hidden_size: 32 }));
    expect(wrongWidth.status).toBe(400);
    expect(wrongWidth.json.error?.param).toBe('manifest.secondary_bases.0.hidden_size');

    const missingLayer = await upload(pkg, withSecondary({ input_layers: ['final', 3] }));
    expect(missingLayer.status).toBe(400);
    expect(missingLayer.json.error?.param).toBe('manifest.secondary_bases.0.input_layers');

    const repeated = await upload(pkg, { ...pkg.manifest, secondary_bases: [secondary, secondary] });
    expect(repeated.status).toBe(400);
    expect(repeated.json.error?.param).toBe('manifest.secondary_bases');

    // Nothing was stored by any refusal.
    expect((await api(gw, 'GET', '/admin/tenants/t1/carry-ons/bad', ADMIN_KEY)).status).toBe(404);
  });

  it("refuses weights whose input projection does not cover the secondary base's width", async () => {
    const single = await makeCarryOn(baseDir(A), path.join(work, 'narrow'), { id: 'narrow' });
    const mixture = await makeCarryOn(baseDir(A), path.join(work, 'wide'), { id: 'wide', secondaryBaseDirs: [baseDir(B)] });
    const r = await upload(single, { ...single.manifest, secondary_bases: mixture.manifest.secondary_bases });
    expect(r.status).toBe(400);
    // Its parameter count includes the secondary's 64 columns of in_proj: the file is short by them.
    expect(r.json.error?.param).toBe('weights');
    expect(r.json.error?.message).toMatch(/smaller than this architecture's \d+ bytes/);
  });
});
