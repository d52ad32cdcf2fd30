import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject, TrainingJobObject } from '../../src/admin/schemas.js';
import { trainingJobQueue, type TrainingJobRecord } from '../../src/admin/training-job-queue.js';
import { api } from '../helpers/admin.js';
import { BACKENDS, testDatabase, type TestDatabase } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { REPO_ROOT } from '../helpers/paths.js';
import { claimsOf, pollUntil, QUEUE_ENV, startWorker, waitForLine, workersSaid, type Worker } from '../helpers/train-worker.js';

/**
 * The paper's split with separate processes: a gateway that only queues training jobs
 * (CARRYON_TRAINING_WORKER=external) and two `carryon train-worker` processes polling the same
 * database and data folder. A job runs exactly once; a worker killed with SIGKILL mid-job leaves
 * the job to the other one; a cancel made at the gateway stops the trainer in the worker.
 */
const which = spawnSync(path.join(REPO_ROOT, 'trainer', 'python'), ['--which'], { encoding: 'utf8' });
const hasTorch = which.status === 0;
if (!hasTorch) {
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`training-workers: ${which.stderr.trim()}`);
  console.warn(`training-workers SKIPPED: ${which.stderr.trim() || 'no python3 with torch'}`);
}

const ACTIVE = ['queued', 'running', 'registering'];

describe.skipIf(!hasTorch).each(BACKENDS)('training workers as separate processes, on %s', (backend) => {
  let db: TestDatabase;
  let gw: TestGateway;
  let workerEnv: Record<string, string>;
  let client: OpenAI;
  const workers: Worker[] = [];

  async function job(id: string): Promise<TrainingJobObject> {
    const r = await api<TrainingJobObject>(gw, 'GET', `/admin/training-jobs/${id}`, ADMIN_KEY);
    expect(r.status, r.text).toBe(200);
    return r.json;
  }

  async function waitFor(id: string, done: (j: TrainingJobObject, row: TrainingJobRecord) => boolean, timeoutMs: number): Promise<TrainingJobRecord> {
    const read = async () => ({ j: await job(id), row: (await trainingJobQueue(gw.store).get(id))! });
    const last = await pollUntil(read, ({ j, row }) => done(j, row), timeoutMs, ({ j, row }) =>
      `job ${id} still ${j.status} (attempts ${row.attempts}, worker ${row.claimedBy}): ${j.error ?? ''}\nworkers said:\n${workersSaid(workers)}`);
    return last.row;
  }

  beforeAll(async () => {
    db = await testDatabase(backend);
    const dataDir = freshDataDir(`training-workers-${backend}-`);
    gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, CARRYON_HARVEST: 'on', CARRYON_TRAINING_WORKER: 'external', ...QUEUE_ENV, ...db.env });
    workerEnv = { CARRYON_DATA_DIR: dataDir, ...db.env };
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't1' })).status).toBe(201);
    const key = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't1', harvest: { sample_rate: 1 } });
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key.json.key, maxRetries: 0 });
    for (const p of gsm8kTrainProblems(24)) await client.completions.create({ model: 'stories260K', prompt: `${p.question}\n${p.answer}`, max_tokens: 2, temperature: 0 });
    await gw.harvest.flush();
    // The gateway imported the base into the shared data folder: the workers find it there.
    workers.push(await startWorker(workerEnv), await startWorker(workerEnv));
  }, 120_000);

  afterAll(async () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
    await gw?.close();
    await db?.drop();
    if (gw) fs.rmSync(gw.dataDir, { recursive: true, force: true });
  });

  it('a job queued at the gateway runs exactly once, in one of the two polling workers, and the gateway serves its carry-on', { timeout: 240_000 }, async () => {
    const created = await api<TrainingJobObject>(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, {
      tenant: 't1',
      carry_on: 'split-job',
      alias: 'stable',
      architecture: { width: 32 },
      training: { steps: 30, batch_size: 4, warmup: 2, seq_len: 128, loss_rows: 'all' },
    });
    expect(created.status, created.text).toBe(202);
    // A polling worker may claim the job before the gateway reads it back for the answer.
    expect(['queued', 'running']).toContain(created.json.status);
    const row = await waitFor(created.json.id, (j) => !ACTIVE.includes(j.status), 60_000);
    const final = await job(created.json.id);
    expect(final.status, final.error ?? '').toBe('succeeded');
    expect(final.carry_on_version).toMatchObject({ tenant: 't1', carry_on: 'split-job', version: 1 });
    expect(final.progress).toMatchObject({ step: 30, steps: 30 });
    expect(row.attempts).toBe(1);
    // Both workers polled the whole time; exactly one ever claimed the job.
    for (const w of workers) expect(w.child.exitCode).toBeNull();
    expect(workers.map((w) => claimsOf(w, created.json.id)).sort()).toEqual([0, 1]);
    // Registered by the worker, seen by the gateway: the alias serves it.
    const alias = await api<{ aliases: Record<string, number> }>(gw, 'GET', '/admin/tenants/t1/carry-ons/split-job', ADMIN_KEY);
    expect(alias.status, alias.text).toBe(200);
    expect(alias.json.aliases).toMatchObject({ stable: 1 });
    const served = await client.completions.create({ model: 'split-job@stable', prompt: 'Natalia sold clips', max_tokens: 8, temperature: 0 });
    expect(served.choices[0].text.length).toBeGreaterThan(0);
    const logs = await api(gw, 'GET', `/admin/training-jobs/${created.json.id}/logs`, ADMIN_KEY);
    expect(logs.text).toMatch(/held-out loss/);
  });

  it('kill -9 of the worker mid-job: the other worker takes the job up; a cancel at the gateway then stops it there', { timeout: 240_000 }, async () => {
    const created = await api<TrainingJobObject>(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, {
      tenant: 't1',
      carry_on: 'long-job',
      training: { steps: 100000, batch_size: 4, seq_len: 128 },
    });
    expect(created.status, created.text).toBe(202);
    const id = created.json.id;
    const first = await waitFor(id, (j, r) => j.status === 'running' && j.progress.step > 0 && r.claimedBy !== null, 120_000);
    const victim = workers.find((w) => w.id === first.claimedBy)!;
    const survivor = workers.find((w) => w !== victim)!;
    expect(victim).toBeDefined();
    victim.child.kill('SIGKILL');

    // Never stuck: past the heartbeat timeout the survivor claims it (attempt 2) and trains again.
    const second = await waitFor(id, (j, r) => r.attempts === 2 && r.claimedBy === survivor.id && j.status === 'running' && j.progress.step > 0, 120_000);
    expect(second.status).toBe('running');
    expect(claimsOf(survivor, id)).toBe(1);
    expect((await api(gw, 'GET', `/admin/training-jobs/${id}/logs`, ADMIN_KEY)).text).toMatch(/attempt 2 of 2: the previous worker was lost/);

    const cancel = await api<TrainingJobObject>(gw, 'POST', `/admin/training-jobs/${id}/cancel`, ADMIN_KEY);
    expect(cancel.status).toBe(200);
    await waitFor(id, (j) => j.status !== 'running', 60_000);
    const final = await job(id);
    expect(final.status).toBe('cancelled');
    expect(final.carry_on_version).toBeNull();
    await waitForLine(survivor, (l) => l.msg === 'training worker: job ended' && l.job === id && l.status === 'cancelled');
    expect((await api(gw, 'GET', '/admin/tenants/t1/carry-ons/long-job', ADMIN_KEY)).status).toBe(404);
    // The survivor is still polling, and ends cleanly on SIGTERM.
    const exited = new Promise<number | null>((r) => survivor.child.once('exit', (code) => r(code)));
    survivor.child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
