import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { readTrainerReport } from '../../src/training/trainer-report.js';
import { api } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { BOUNDED_SCHEMA, expectAllValid } from '../helpers/structured-samples.js';
import { runChild, TRAINER, trainerPython } from '../helpers/trainer.js';

/**
 * The whole loop with the real gateway and the real trainer: live traffic is harvested (a key with
 * a harvest policy), the Python trainer pulls the tenant's shards through the admin API, trains a
 * small carry-on on them, exports it through `carryon carry-on build`, proves parity with
 * `carryon carry-on verify`, uploads it through the admin API, and the openai SDK is then served
 * by it. Needs python3 with torch (trainer/python finds one); skipped, loudly, without.
 */
const python = trainerPython('trainer-e2e');

const ID = 'gsm-e2e';
const PROMPT = 'Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.';

let gw: TestGateway;
let work: string;
let tenantKey = '';

describe.skipIf(!python)('trainer end to end: harvest → train → upload → serve', () => {
  beforeAll(async () => {
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('trainer-e2e-'), CARRYON_HARVEST: 'on' });
    work = freshDataDir('trainer-e2e-run-');
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't1' })).status).toBe(201);
    const key = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1', harvest: { sample_rate: 1 } });
    expect(key.status, key.text).toBe(201);
    tenantKey = key.json.key;
  });
  afterAll(async () => {
    await gw?.close();
    for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('a carry-on trained on harvested traffic is uploaded and serves requests', { timeout: 300_000 }, async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: tenantKey, maxRetries: 0 });

    // 1. Live traffic: GSM8K problems (text the TinyStories base has never seen) as prompts.
    const problems = gsm8kTrainProblems(48);
    for (const p of problems) {
      await client.completions.create({ model: 'stories260K', prompt: `${p.question}\n${p.answer}`, max_tokens: 4, temperature: 0 });
    }
    await gw.harvest.flush();
    const shards = await api<{ data: Array<{ rows: number }> }>(gw, 'GET', '/admin/harvest/shards?tenant=t1', ADMIN_KEY);
    expect(shards.status, shards.text).toBe(200);
    expect(shards.json.data.reduce((a, s) => a + s.rows, 0)).toBeGreaterThan(5000);

    // 2. The trainer: pull → train → export + verify → push, in one command.
    const keyFile = path.join(work, 'admin-key');
    fs.writeFileSync(keyFile, ADMIN_KEY, { mode: 0o600 });
    const base = path.join(gw.dataDir, 'models', 'stories260K');
    const out = path.join(work, 'run');
    const r = await runChild(
      path.join(TRAINER, 'carryon-train'),
      ['train', '--base', base, '--out', out, '--id', ID, '--pull-from', gw.url, '--push-to', gw.url, '--tenant', 't1',
        '--key-file', keyFile, '--steps', '100', '--batch-size', '8', '--lr', '3e-3', '--warmup', '10', '--width', '32',
        '--seq-len', '256', '--loss-rows', 'all', '--no-progress'],
      { CARRYON_PYTHON: python! },
    );
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const report = readTrainerReport(path.join(out, 'report.json'));
    expect(report?.export?.verify.ok).toBe(true);
    expect(report?.eval?.carry_on?.loss).toBeLessThan(report!.eval!.base!.loss);
    const uploaded: unknown = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(uploaded).toMatchObject({ object: 'carry_on.version', tenant: 't1', carry_on: ID, version: 1 });

    // 3. Served: the carry-on's greedy continuation is not the base's.
    const complete = async (model: string) =>
      (await client.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0 })).choices[0].text;
    const baseText = await complete('stories260K');
    const carried = await complete(ID);
    expect(carried).not.toBe(baseText);
    // α = 0 is the base again, byte for byte: the difference is the carry-on's.
    const alpha0 = await client.completions.create({ model: ID, prompt: PROMPT, max_tokens: 24, temperature: 0, carry_on_alpha: 0 } as never);
    expect(alpha0.choices[0].text).toBe(baseText);
  });

  it('the trained carry-on under a strict schema: 200 seeded samples at temperature 1 all finish, parse and validate', { timeout: 300_000 }, async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: tenantKey, maxRetries: 0 });
    expect(await expectAllValid(client, ID, BOUNDED_SCHEMA)).toBe(200);
  });
});
