import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Store } from '../../src/store/store.js';
import { trainingJobQueue, type NewTrainingJob } from '../../src/admin/training-job-queue.js';
import { CreateTrainingJobBody } from '../../src/training/job-request.js';
import { importLegacyJobs } from '../../src/admin/training-legacy-jobs.js';
import { BACKENDS, testDatabase, type TestDatabase } from '../helpers/databases.js';
import { REPO_ROOT } from '../helpers/paths.js';

/**
 * The training job queue against the real databases: claims by racing processes, heartbeats,
 * reclaiming a job whose worker went silent, the attempt limit, and cancel across processes.
 */
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'training-queue-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const FP = 'fp-base';
const body = CreateTrainingJobBody.parse({ tenant: 't1', carry_on: 'c' });
let n = 0;
const newJob = (over: Partial<NewTrainingJob> = {}): NewTrainingJob => ({
  id: `trainjob-${String(++n).padStart(4, '0')}`,
  tenant: 't1',
  body,
  shardPaths: [path.join(tmpRoot, 'shard.safetensors')],
  baseFingerprint: FP,
  createdBy: 'key_admin',
  createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(),
  ...over,
});
const policy = (now: number, maxAttempts = 3) => ({ now, heartbeatTimeoutMs: 1000, maxAttempts });
const OUTCOME = { progress: { step: 0, steps: 300, loss: null }, eval: null };

/** A separate process that claims jobs until the queue has none for it, printing the ids it won. */
const CLAIMER = `
import { Store } from ${JSON.stringify(path.join(REPO_ROOT, 'src/store/store.ts'))};
import { trainingJobQueue } from ${JSON.stringify(path.join(REPO_ROOT, 'src/admin/training-job-queue.ts'))};
const [dataDir, url, workerId, startAt] = process.argv.slice(2);
const store = await Store.connect({ dataDir, url: url || null, poolSize: 2 });
// Every claimer starts at the same moment, so the claims really race.
await new Promise((r) => setTimeout(r, Number(startAt) - Date.now()));
const won = [];
for (;;) {
  const job = await trainingJobQueue(store).claim({ workerId, baseFingerprint: 'fp-base' }, { now: Date.now(), heartbeatTimeoutMs: 600000, maxAttempts: 3 });
  if (!job) break;
  won.push(job.id);
}
process.stdout.write(JSON.stringify(won));
await store.end();
`;

function runClaimer(dataDir: string, url: string | null, workerId: string, startAt: number): Promise<string[]> {
  const script = path.join(tmpRoot, 'claimer.mts');
  fs.writeFileSync(script, CLAIMER);
  const child = spawn(process.execPath, ['--import', 'tsx', script, dataDir, url ?? '', workerId, String(startAt)], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as string[]) : reject(new Error(`claimer ${workerId} exited ${code}: ${err}`))));
  });
}

describe.each(BACKENDS)('training job queue on %s', (backend) => {
  let db: TestDatabase;
  let dataDir: string;
  let store: Store;
  beforeEach(async () => {
    db = await testDatabase(backend);
    dataDir = fs.mkdtempSync(path.join(tmpRoot, `${backend}-`));
    store = await Store.connect({ dataDir, url: db.url, poolSize: 4 });
  });
  afterEach(async () => {
    await store.end();
    await db.drop();
  });

  it('separate processes racing for the queue: every job is claimed by exactly one of them', { timeout: 60_000 }, async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const job = newJob();
      ids.push(job.id);
      expect(await trainingJobQueue(store).enqueue(job, 100)).toBe(i);
    }
    const startAt = Date.now() + 4000;
    const won = await Promise.all(['w1', 'w2', 'w3'].map((w) => runClaimer(dataDir, db.url, w, startAt)));
    const all = won.flat();
    expect(all.sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const job = (await trainingJobQueue(store).get(id))!;
      expect(job).toMatchObject({ status: 'running', attempts: 1 });
      expect(won[['w1', 'w2', 'w3'].indexOf(job.claimedBy!)]).toContain(id);
    }
  });

  it('two claimers for one job: one wins, the other gets nothing', async () => {
    const other = await Store.connect({ dataDir, url: db.url, poolSize: 2 });
    try {
      const job = newJob();
      await trainingJobQueue(store).enqueue(job, 10);
      const now = Date.now();
      const claimA = () => trainingJobQueue(store).claim({ workerId: 'a', baseFingerprint: FP }, policy(now));
      const claimB = () => trainingJobQueue(other).claim({ workerId: 'b', baseFingerprint: FP }, policy(now));
      // Concurrent on PostgreSQL (SKIP LOCKED). Two SQLite connections in one process cannot overlap
      // transactions (better-sqlite3 blocks the thread the other needs to commit): one after the
      // other here; the test above races separate processes on both backends.
      const [a, b] = backend === 'postgres' ? await Promise.all([claimA(), claimB()]) : [await claimA(), await claimB()];
      expect([a?.id, b?.id].filter(Boolean)).toEqual([job.id]);
    } finally {
      await other.end();
    }
  });

  it('claims only jobs of its base, and refuses past the queue limit', async () => {
    await trainingJobQueue(store).enqueue(newJob(), 1);
    expect(await trainingJobQueue(store).enqueue(newJob(), 1)).toBe(1);
    expect(await trainingJobQueue(store).list(null)).toHaveLength(1);
    expect(await trainingJobQueue(store).claim({ workerId: 'w', baseFingerprint: 'other-base' }, policy(Date.now()))).toBeNull();
  });

  it('a job whose worker stops heartbeating is taken up again, then failed with a reason past its attempts', async () => {
    const job = newJob();
    await trainingJobQueue(store).enqueue(job, 10);
    const t0 = 1_000_000;
    const first = await trainingJobQueue(store).claim({ workerId: 'w1', baseFingerprint: FP }, policy(t0, 2));
    expect(first).toMatchObject({ id: job.id, status: 'running', attempts: 1, claimedBy: 'w1' });
    // Fresh heartbeats keep it w1's.
    expect(await trainingJobQueue(store).heartbeat(job.id, 'w1', t0 + 800)).toEqual({ owned: true, cancelRequested: false });
    expect(await trainingJobQueue(store).claim({ workerId: 'w2', baseFingerprint: FP }, policy(t0 + 1500, 2))).toBeNull();
    // Silent for longer than the timeout: w2 takes it, and w1 (if it is still alive) can no longer write.
    const second = await trainingJobQueue(store).claim({ workerId: 'w2', baseFingerprint: FP }, policy(t0 + 2000, 2));
    expect(second).toMatchObject({ id: job.id, attempts: 2, claimedBy: 'w2', startedAt: first!.startedAt });
    expect((await trainingJobQueue(store).heartbeat(job.id, 'w1', t0 + 2001)).owned).toBe(false);
    expect(await trainingJobQueue(store).finish(job.id, 'w1', { status: 'succeeded', error: null, outcome: OUTCOME })).toBe(false);
    // w2 goes silent too, on the last attempt: the next claim fails the job rather than run it a third time.
    expect(await trainingJobQueue(store).claim({ workerId: 'w3', baseFingerprint: FP }, policy(t0 + 4000, 2))).toBeNull();
    const failed = (await trainingJobQueue(store).get(job.id))!;
    expect(failed).toMatchObject({ status: 'failed', attempts: 2, claimedBy: null });
    expect(failed.error).toBe('worker lost (no heartbeat for 1 s) after 2 attempts');
    expect(failed.finishedAt).not.toBeNull();
  });

  it('cancel: a queued job at once; a running one through the heartbeat of its worker, also when that worker is gone', async () => {
    const queued = newJob();
    await trainingJobQueue(store).enqueue(queued, 10);
    expect(await trainingJobQueue(store).cancel(queued.id, OUTCOME)).toBe('cancelled');
    expect((await trainingJobQueue(store).get(queued.id))!.status).toBe('cancelled');

    const running = newJob();
    await trainingJobQueue(store).enqueue(running, 10);
    const t0 = 2_000_000;
    await trainingJobQueue(store).claim({ workerId: 'w1', baseFingerprint: FP }, policy(t0));
    expect(await trainingJobQueue(store).cancel(running.id, OUTCOME)).toBe('requested');
    expect(await trainingJobQueue(store).heartbeat(running.id, 'w1', t0 + 100)).toEqual({ owned: true, cancelRequested: true });
    expect(await trainingJobQueue(store).finish(running.id, 'w1', { status: 'cancelled', error: null, outcome: OUTCOME })).toBe(true);
    expect(await trainingJobQueue(store).cancel(running.id, OUTCOME)).toBe('unchanged');

    const orphan = newJob();
    await trainingJobQueue(store).enqueue(orphan, 10);
    await trainingJobQueue(store).claim({ workerId: 'w1', baseFingerprint: FP }, policy(t0));
    await trainingJobQueue(store).cancel(orphan.id, OUTCOME);
    // Its worker died before it saw the request: the job ends cancelled, not retried.
    expect(await trainingJobQueue(store).claim({ workerId: 'w2', baseFingerprint: FP }, policy(t0 + 5000))).toBeNull();
    expect((await trainingJobQueue(store).get(orphan.id))!).toMatchObject({ status: 'cancelled', attempts: 1 });
  });

  it('a worker shutting down gives its job back; a job lost while registering fails rather than register twice', async () => {
    const job = newJob();
    await trainingJobQueue(store).enqueue(job, 10);
    const t0 = 3_000_000;
    await trainingJobQueue(store).claim({ workerId: 'w1', baseFingerprint: FP }, policy(t0));
    expect(await trainingJobQueue(store).release(job.id, 'w1')).toBe(true);
    const again = await trainingJobQueue(store).claim({ workerId: 'w2', baseFingerprint: FP }, policy(t0 + 10));
    expect(again).toMatchObject({ id: job.id, attempts: 2, claimedBy: 'w2' });
    expect(await trainingJobQueue(store).markRegistering(job.id, 'w2')).toBe(true);
    expect(await trainingJobQueue(store).claim({ workerId: 'w3', baseFingerprint: FP }, policy(t0 + 5000))).toBeNull();
    const failed = (await trainingJobQueue(store).get(job.id))!;
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/worker lost \(no heartbeat for 1 s\) while registering the carry-on/);
  });

  it('imports job.json folders of older gateways once, an active job as failed', async () => {
    const dir = path.join(dataDir, 'training', 'trainjob-legacy');
    fs.mkdirSync(dir, { recursive: true });
    const legacy = { ...newJob({ id: 'trainjob-legacy' }), status: 'running', startedAt: '2026-01-01T00:00:00.000Z', finishedAt: null, error: null, carryOnVersion: null, outcome: null };
    fs.writeFileSync(path.join(dir, 'job.json'), JSON.stringify(legacy));
    fs.mkdirSync(path.join(dataDir, 'training', 'not-a-job'));
    expect(await importLegacyJobs(dataDir, trainingJobQueue(store))).toBe(1);
    expect(await importLegacyJobs(dataDir, trainingJobQueue(store))).toBe(0);
    expect(fs.existsSync(path.join(dir, 'job.json.imported'))).toBe(true);
    const job = (await trainingJobQueue(store).get('trainjob-legacy'))!;
    expect(job).toMatchObject({ status: 'failed', error: expect.stringMatching(/^interrupted/) as unknown, shardPaths: legacy.shardPaths });
  });
});
