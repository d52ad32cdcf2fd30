import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TrainingJobObject } from '../../src/admin/schemas.js';
import { api } from '../helpers/admin.js';
import { startBucketReplicas, type BucketReplicas } from '../helpers/bucket-replicas.js';
import { POSTGRES_AVAILABLE } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { expectShardsOnlyInBucket, harvestKey, listShards } from '../helpers/harvest.js';
import { REPO_ROOT } from '../helpers/paths.js';
import { claimsOf, pollUntil, QUEUE_ENV, startWorker, workersSaid, type Worker } from '../helpers/train-worker.js';

/**
 * The paper's split across nodes that share nothing but PostgreSQL and the bucket: gateway A
 * harvests (its shards go up to the bucket and leave its disk), the job is queued through gateway
 * B, a `carryon train-worker` with a data folder of its own fetches the shards from the bucket,
 * trains, and registers the carry-on into the bucket; both gateways then serve it, fetching its
 * graph from there. Skips without CARRYON_TEST_DATABASE_URL (unless CARRYON_POSTGRES_REQUIRED=1) or torch.
 */
const which = spawnSync(path.join(REPO_ROOT, 'trainer', 'python'), ['--which'], { encoding: 'utf8' });
const hasTorch = which.status === 0;
if (!hasTorch && process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`training-across-nodes: ${which.stderr.trim()}`);

describe.runIf(POSTGRES_AVAILABLE && hasTorch)('training on a node of its own, through the database and the bucket', () => {
  let nodes: BucketReplicas;
  let worker: Worker;
  let workerDir: string;
  let key: string;

  beforeAll(async () => {
    nodes = await startBucketReplicas('training', { CARRYON_HARVEST: 'on', CARRYON_TRAINING_WORKER: 'external', ...QUEUE_ENV });
    key = await harvestKey(nodes.a, 't1', { sample_rate: 1 });
    const client = new OpenAI({ baseURL: `${nodes.a.url}/v1`, apiKey: key, maxRetries: 0 });
    for (const p of gsm8kTrainProblems(24)) await client.completions.create({ model: 'stories260K', prompt: `${p.question}\n${p.answer}`, max_tokens: 2, temperature: 0 });
    await nodes.a.harvest.flush();
    await nodes.a.harvest.uploads!.settled();
    workerDir = freshDataDir('carryon-training-node-');
    const credentials = { AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID!, AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY! };
    worker = await startWorker({ ...nodes.shared, ...credentials, CARRYON_DATA_DIR: workerDir });
  }, 180_000);

  afterAll(async () => {
    if (worker && worker.child.exitCode === null) worker.child.kill('SIGKILL');
    await nodes?.close();
    if (workerDir) fs.rmSync(workerDir, { recursive: true, force: true });
  });

  it('a job queued on B trains on A’s shards from the bucket, and A and B serve the result alike', { timeout: 240_000 }, async () => {
    // A's shards are in the bucket only: the worker cannot have read them from any disk.
    await expectShardsOnlyInBucket(nodes.a.dataDir);
    expect((await listShards(nodes.b, '?tenant=t1')).length).toBeGreaterThan(0);

    const created = await api<TrainingJobObject>(nodes.b, 'POST', '/admin/training-jobs', ADMIN_KEY, {
      tenant: 't1',
      carry_on: 'far-job',
      alias: 'stable',
      architecture: { width: 32 },
      training: { steps: 20, batch_size: 4, warmup: 2, seq_len: 128, loss_rows: 'all' },
    });
    expect(created.status, created.text).toBe(202);
    const id = created.json.id;
    const job = await pollUntil(
      async () => (await api<TrainingJobObject>(nodes.a, 'GET', `/admin/training-jobs/${id}`, ADMIN_KEY)).json,
      (j) => !['queued', 'running', 'registering'].includes(j.status),
      180_000,
      (j) => `job still ${j.status}; the worker said:\n${workersSaid([worker], 8)}`,
    );
    expect(job.status, `${job.error}\n${workersSaid([worker], 8)}`).toBe('succeeded');
    expect(claimsOf(worker, id)).toBe(1);
    // The shards it fetched were for this job only: gone with it.
    expect(fs.existsSync(path.join(workerDir, 'training', id, 'shards'))).toBe(false);

    // Registered by the worker into the bucket: each gateway fetches the graph and serves it, the same.
    const complete = async (url: string) =>
      (await new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 }).completions.create({ model: 'far-job@stable', prompt: 'Natalia sold clips', max_tokens: 12, temperature: 0 })).choices[0].text;
    const onA = await complete(nodes.a.url);
    expect(onA.length).toBeGreaterThan(0);
    expect(await complete(nodes.b.url)).toBe(onA);
    const base = await new OpenAI({ baseURL: `${nodes.a.url}/v1`, apiKey: key, maxRetries: 0 }).completions.create({ model: 'stories260K:base', prompt: 'Natalia sold clips', max_tokens: 12, temperature: 0 });
    expect(base.choices[0].text).not.toBe(onA);
  });
});
