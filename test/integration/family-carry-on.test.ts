/**
 * Carry-ons on a base of another family: a Qwen2-shaped base (q/k/v biases, tied head, the real
 * 151,936-row Qwen vocabulary) served from its Hugging Face folder. A carry-on made with the CLI's
 * `carryon carry-on init` for that base uploads through the admin API and, zero-initialised, is the
 * base exactly (greedy text and logprobs); one with a perturbed output changes the answer, and α = 0
 * brings the base back. A carry-on made for another base is refused by fingerprint.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { api, uploadCarryOn } from '../helpers/admin.js';
import { makeCarryOn, packageParts } from '../helpers/carry-on.js';
import { writeHfFolder } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights } from '../helpers/model-families.js';
import { REPO_ROOT } from '../helpers/paths.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-family-carry-on-'));
const PROMPT = 'Once upon a time, a small robot';
let gw: TestGateway;
let key: string;
let baseName: string;

beforeAll(async () => {
  const folder = path.join(tmp, 'tiny-qwen2');
  writeHfFolder(folder, randomFamilyWeights('qwen2', 5), { dtype: 'BF16', shards: 1, tokenizerFrom: FAMILIES.qwen2.tokenizerDir });
  gw = await startTestGateway({ CARRYON_MODEL: folder, CARRYON_DATA_DIR: freshDataDir('carryon-family-carry-on-data-') });
  baseName = 'tiny-qwen2';
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'q' })).status).toBe(201);
  key = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'q' })).json.key;
}, 300_000);
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, tmp]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

const baseDir = () => path.join(gw.dataDir, 'models', baseName);
const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
const complete = async (model: string, extra: Record<string, unknown> = {}) =>
  (await client().completions.create({ model, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 2, ...extra })).choices[0];

describe('a carry-on on a Qwen2-shaped base', () => {
  it('made by `carryon carry-on init`, uploads and is the base exactly at its zero init', async () => {
    const out = path.join(tmp, 'init');
    const cli = promisify(execFile);
    const { stdout } = await cli(process.execPath, ['bin/carryon.js', 'carry-on', 'init', '--base', baseDir(), '--out', out, '--id', 'qstyle', '--width', '32', '--layers', '1', '--heads', '2'], { cwd: REPO_ROOT });
    expect(stdout).toMatch(/carry-on qstyle v1/);
    const r = await uploadCarryOn(gw, 'q', ADMIN_KEY, packageParts(out));
    expect(r.status, r.text).toBe(201);
    const base = await complete(baseName);
    const carried = await complete('qstyle');
    expect(carried.text).toBe(base.text);
    expect(carried.logprobs).toEqual(base.logprobs);
  });

  it('perturbed, changes the answer; α = 0 is the base again', async () => {
    const rec = await makeCarryOn(baseDir(), path.join(tmp, 'perturbed'), { id: 'qbent', perturb: 2, seed: 9 });
    const r = await uploadCarryOn(gw, 'q', ADMIN_KEY, packageParts(rec.dir));
    expect(r.status, r.text).toBe(201);
    const base = await complete(baseName);
    expect((await complete('qbent')).logprobs).not.toEqual(base.logprobs);
    expect((await complete('qbent', { carry_on_alpha: 0 })).logprobs).toEqual(base.logprobs);
  });

  it("refuses a carry-on made for another base, naming the fingerprint", async () => {
    const dir = path.join(tmp, 'other-carry-on');
    const cli = promisify(execFile);
    await cli(process.execPath, ['bin/carryon.js', 'carry-on', 'init', '--base', baseDir(), '--out', dir, '--id', 'stray'], { cwd: REPO_ROOT });
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, CARRYON_FILES.manifest), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(dir, CARRYON_FILES.manifest), JSON.stringify({ ...manifest, base_fingerprint: 'f'.repeat(64) }));
    const r = await uploadCarryOn(gw, 'q', ADMIN_KEY, packageParts(dir));
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ param: 'manifest.base_fingerprint' });
  });
});
