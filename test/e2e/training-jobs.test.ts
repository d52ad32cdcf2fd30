import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject, TrainingJobObject } from '../../src/admin/schemas.js';
import { api } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { REPO_ROOT } from '../helpers/paths.js';

/**
 * The single-machine loop through the admin API: harvested traffic → POST /admin/training-jobs →
 * the trainer as a child process (progress, logs, cancellation) → the carry-on registered when its
 * export passed the parity check → served on the next request. Needs python3 with torch.
 */
const which = spawnSync(path.join(REPO_ROOT, 'trainer', 'python'), ['--which'], { encoding: 'utf8' });
const hasTorch = which.status === 0;
if (!hasTorch) {
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`training-jobs: ${which.stderr.trim()}`);
  console.warn(`training-jobs SKIPPED: ${which.stderr.trim() || 'no python3 with torch'}`);
}

const PROMPT = 'Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.';
let gw: TestGateway;
let tenantKey = '';

async function waitFor(id: string, done: (j: TrainingJobObject) => boolean, timeoutMs = 240_000): Promise<TrainingJobObject[]> {
  const seen: TrainingJobObject[] = [];
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await api<TrainingJobObject>(gw, 'GET', `/admin/training-jobs/${id}`, ADMIN_KEY);
    expect(r.status, r.text).toBe(200);
    seen.push(r.json);
    if (done(r.json)) return seen;
    if (Date.now() > until) throw new Error(`job ${id} still ${r.json.status}`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

describe.skipIf(!hasTorch)('admin training jobs', () => {
  beforeAll(async () => {
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('training-jobs-'), CARRYON_HARVEST: 'on', CARRYON_TRAINING_MAX_QUEUED: '1' });
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't1' })).status).toBe(201);
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't2' })).status).toBe(201);
    const key = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1', harvest: { sample_rate: 1 } });
    tenantKey = key.json.key;
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: tenantKey, maxRetries: 0 });
    const problems = gsm8kTrainProblems(40);
    for (const p of problems) await client.completions.create({ model: 'stories260K', prompt: `${p.question}\n${p.answer}`, max_tokens: 2, temperature: 0 });
    await gw.harvest.flush();
  });
  afterAll(async () => {
    await gw?.close();
    if (gw) fs.rmSync(gw.dataDir, { recursive: true, force: true });
  });

  it('refuses what cannot run, in the OpenAI error shape', async () => {
    const noShards = await api(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { tenant: 't2', carry_on: 'x' });
    expect(noShards.status).toBe(400);
    expect(noShards.json.error).toMatchObject({ code: 'invalid_value', param: 'shards' });
    const badShard = await api(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { tenant: 't1', carry_on: 'x', shards: ['nope'] });
    expect(badShard.status).toBe(400);
    const unknownField = await api(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { tenant: 't1', carry_on: 'x', training: { stepz: 3 } });
    expect(unknownField.status).toBe(400);
    const user = await api(gw, 'POST', '/admin/training-jobs', tenantKey, { tenant: 't1', carry_on: 'x' });
    expect(user.status).toBe(403);
    expect((await api(gw, 'GET', '/admin/training-jobs/trainjob-missing', ADMIN_KEY)).status).toBe(404);
  });

  it('trains on the tenant’s shards, reports progress and logs, registers the carry-on, and serves it', { timeout: 300_000 }, async () => {
    const created = await api<TrainingJobObject>(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, {
      tenant: 't1',
      carry_on: 'gsm-job',
      alias: 'stable',
      architecture: { width: 32 },
      training: { steps: 60, batch_size: 8, lr: 3e-3, warmup: 5, seq_len: 256, loss_rows: 'all', eval_fraction: 0.1 },
    });
    expect(created.status, created.text).toBe(202);
    expect(created.json).toMatchObject({ object: 'training_job', tenant: 't1', carry_on: 'gsm-job', status: expect.stringMatching(/queued|running/) as unknown });
    expect(created.json.shards).toBeGreaterThan(0);

    const seen = await waitFor(created.json.id, (j) => !['queued', 'running', 'registering'].includes(j.status));
    const final = seen.at(-1)!;
    expect(final.status, final.error ?? '').toBe('succeeded');
    // Progress was visible while it ran, and ends at the last step.
    expect(seen.some((j) => j.status === 'running' && j.progress.step > 0 && j.progress.step < 60)).toBe(true);
    expect(final.progress).toMatchObject({ step: 60, steps: 60 });
    expect(final.eval!.carry_on_loss).toBeLessThan(final.eval!.base_loss);
    expect(final.eval!.parity_max_abs_diff).toBeLessThan(1e-4);
    expect(final.carry_on_version).toMatchObject({ object: 'carry_on.version', tenant: 't1', carry_on: 'gsm-job', version: 1 });

    const logs = await api(gw, 'GET', `/admin/training-jobs/${created.json.id}/logs`, ADMIN_KEY);
    expect(logs.status).toBe(200);
    expect(logs.headers['content-type']).toMatch(/text\/plain/);
    expect(logs.text).toMatch(/held-out loss/);
    expect(logs.text).not.toContain(ADMIN_KEY);

    const list = await api<{ data: TrainingJobObject[] }>(gw, 'GET', '/admin/training-jobs?tenant=t1', ADMIN_KEY);
    expect(list.json.data.map((j) => j.id)).toContain(created.json.id);

    // Hot-loaded: the alias and the id both serve it, and it is not the base.
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: tenantKey, maxRetries: 0 });
    const complete = async (model: string) => (await client.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0 })).choices[0].text;
    const base = await complete('stories260K');
    const trained = await complete('gsm-job');
    expect(trained).not.toBe(base);
    expect(await complete('gsm-job@stable')).toBe(trained);
  });

  it('cancels a running job: the child stops and nothing is registered; a full queue answers 429', { timeout: 120_000 }, async () => {
    const body = { tenant: 't1', carry_on: 'long-job', training: { steps: 100000, batch_size: 4, seq_len: 128 } };
    const job = await api<TrainingJobObject>(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, body);
    expect(job.status).toBe(202);
    await waitFor(job.json.id, (j) => j.status === 'running' && j.progress.step > 0, 60_000);
    const queued = await api<TrainingJobObject>(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { ...body, carry_on: 'second' });
    expect(queued.json.status).toBe('queued');
    const full = await api(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { ...body, carry_on: 'third' });
    expect(full.status).toBe(429);
    expect(full.headers['retry-after']).toBeDefined();

    expect((await api(gw, 'POST', `/admin/training-jobs/${queued.json.id}/cancel`, ADMIN_KEY)).json).toMatchObject({ status: 'cancelled' });
    const cancel = await api<TrainingJobObject>(gw, 'POST', `/admin/training-jobs/${job.json.id}/cancel`, ADMIN_KEY);
    expect(cancel.status).toBe(200);
    const final = (await waitFor(job.json.id, (j) => j.status !== 'running', 30_000)).at(-1)!;
    expect(final.status).toBe('cancelled');
    expect(final.carry_on_version).toBeNull();
    expect((await api(gw, 'GET', '/admin/tenants/t1/carry-ons/long-job', ADMIN_KEY)).status).toBe(404);
  });
});
