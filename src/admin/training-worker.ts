import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { AdminContext, AuditLog } from './audit.js';
import type { CarryOnAdmin } from './carry-on-admin.js';
import type { CarryOnVersionObject } from './schemas.js';
import type { FinishedStatus, TrainingJobRecord, TrainingJobRepository } from './training-job-queue.js';
import type { ObjectStore } from '../objects/object-store.js';
import { shardCache, shardsOnDisk } from '../training/job-shards.js';
import { jobDir, logFile, observeRun, readReport, runDir } from './training-job-files.js';
import { startTrainer, stopTrainer, TRAINER_PYTHON } from '../training/trainer-process.js';

export interface TrainingWorkerOptions {
  /** Names this worker in `claimed_by` (host, pid and a random part: unique per process). */
  workerId: string;
  dataDir: string;
  /** The base package this worker trains on; null while it is not resolved (nothing is claimed). */
  base: () => { dir: string; fingerprint: string } | null;
  /** CARRYON_TRAINING_TIMEOUT_MS */
  timeoutMs: number;
  /** CARRYON_TRAINING_THREADS */
  threads: number;
  maxLogBytes: number;
  /** CARRYON_TRAINING_HEARTBEAT_MS: heartbeat of a running job, and the poll of an idle worker. */
  heartbeatMs: number;
  /** CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS */
  heartbeatTimeoutMs: number;
  /** CARRYON_TRAINING_MAX_ATTEMPTS */
  maxAttempts: number;
  /** Where harvest shards not on this node's disk are fetched from (CARRYON_OBJECT_STORE_URL); null: none. */
  objects: ObjectStore | null;
  log: AuditLog;
}

interface Running {
  job: TrainingJobRecord;
  child: ChildProcess;
  /** Why the child was stopped, if it was: the job ends accordingly. */
  stop: 'cancelled' | 'timed-out' | 'lost' | 'shutdown' | null;
}

/**
 * Runs training jobs from the shared queue, one at a time: claims the oldest it can (see
 * TrainingJobRepository.claim), runs the trainer as a child process while heartbeating the claim,
 * and registers the result through CarryOnAdmin, as an upload by the job's creator would be. The
 * gateway runs one in-process (CARRYON_TRAINING_WORKER=inline); `carryon train-worker` runs one on
 * its own. The trainer dies with this process (its parent-death signal), kill -9 included; the
 * stale heartbeat then lets another worker take the job up again.
 */
export class TrainingWorker {
  private running: Running | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The claim or run in progress; `close` waits for it. */
  private busy: Promise<void> | null = null;
  private closed = false;

  constructor(
    private readonly jobs: TrainingJobRepository,
    private readonly carryOns: CarryOnAdmin,
    private readonly opts: TrainingWorkerOptions,
  ) {}

  /** `keepProcessAlive`: the poll alone holds the process open (`carryon train-worker`, where nothing else may). */
  start(keepProcessAlive = false): void {
    this.timer = setInterval(() => this.poke(), this.opts.heartbeatMs);
    if (!keepProcessAlive) this.timer.unref();
    this.poke();
  }

  /** Looks at the queue now (a job was queued, or one was cancelled, in this process): no poll delay. */
  poke(): void {
    if (this.closed) return;
    if (this.running) {
      void this.beat(this.running);
      return;
    }
    if (this.busy) return;
    this.busy = this.claimAndRun()
      .catch((err: Error) => this.opts.log.warn({ err: err.message }, 'training worker: claiming a job failed; retrying on the next poll'))
      .finally(() => (this.busy = null));
  }

  /** Stops polling; a running job's trainer is stopped and the job goes back to the queue for another worker. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.running) {
      this.running.stop ??= 'shutdown';
      stopTrainer(this.running.child, 5_000);
    }
    await this.busy;
  }

  private async claimAndRun(): Promise<void> {
    const base = this.opts.base();
    if (!base) return;
    const job = await this.jobs.claim(
      { workerId: this.opts.workerId, baseFingerprint: base.fingerprint },
      { now: Date.now(), heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs, maxAttempts: this.opts.maxAttempts },
    );
    if (!job) return;
    this.opts.log.info({ job: job.id, attempt: job.attempts, worker: this.opts.workerId }, 'training worker: claimed a job');
    await this.run(job, base.dir);
    // The queue may hold more: look again at once rather than one poll later.
    if (!this.closed) setImmediate(() => this.poke());
  }

  private async run(job: TrainingJobRecord, baseDir: string): Promise<void> {
    const dir = jobDir(this.opts.dataDir, job.id);
    fs.mkdirSync(dir, { recursive: true });
    if (!fs.existsSync(TRAINER_PYTHON)) {
      return this.end(job, 'failed', `the trainer is not installed on this node (no ${TRAINER_PYTHON}); train on a training node instead (trainer/carryon-train --push-to, or carryon train-worker)`);
    }
    if (job.attempts > 1) {
      // A retry starts from scratch: the lost attempt's run folder would mix two runs' logs and reports.
      fs.rmSync(runDir(dir), { recursive: true, force: true });
      fs.appendFileSync(logFile(dir), `\n[worker ${this.opts.workerId}] attempt ${job.attempts} of ${this.opts.maxAttempts}: the previous worker was lost\n`);
    }
    let shardPaths: string[];
    try {
      shardPaths = await shardsOnDisk(job.shardPaths, this.opts.dataDir, dir, this.opts.objects);
    } catch (err) {
      // A bucket that is down may be back for the next attempt; a shard that is gone will not be.
      return await this.end(job, 'failed', `fetching the job's harvest shards failed: ${(err as Error).message}`);
    }
    const { child, exited } = startTrainer({
      baseDir,
      shardPaths,
      outDir: runDir(dir),
      body: job.body,
      threads: this.opts.threads,
      logFile: logFile(dir),
      maxLogBytes: this.opts.maxLogBytes,
    });
    const running: Running = { job, child, stop: null };
    this.running = running;
    const timer = setTimeout(() => this.stopChild(running, 'timed-out'), this.opts.timeoutMs);
    timer.unref();
    const exit = await exited;
    clearTimeout(timer);
    try {
      switch (running.stop) {
        case 'lost':
          this.opts.log.warn({ job: job.id }, 'training worker: another worker took the job over (this one missed its heartbeats); dropped it');
          return;
        case 'shutdown':
          await this.jobs.release(job.id, this.opts.workerId);
          return;
        case 'cancelled':
          return await this.end(job, 'cancelled', null);
        case 'timed-out':
          return await this.end(job, 'failed', `stopped after the training timeout of ${this.opts.timeoutMs} ms`);
      }
      if (exit.code !== 0) {
        const why = exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`;
        return await this.end(job, 'failed', `trainer failed (${why}): ${lastLines(exit.tail, 6)}`);
      }
      await this.register(job, dir);
    } finally {
      this.running = null;
    }
  }

  /** The trainer's export, registered as the tenant's next version (and the alias moved) in the creator's name. */
  private async register(job: TrainingJobRecord, dir: string): Promise<void> {
    if (!(await this.jobs.markRegistering(job.id, this.opts.workerId))) return;
    // Heartbeats go on while the build and checks run, so the registration is not taken for lost.
    const beats = setInterval(() => void this.jobs.heartbeat(job.id, this.opts.workerId, Date.now()).catch(() => undefined), this.opts.heartbeatMs);
    let version: CarryOnVersionObject;
    try {
      const report = readReport(dir);
      if (!report?.export?.package || report.export.verify.ok !== true) throw new Error('the trainer did not export a carry-on that passed its parity check');
      const ctx = this.context(job);
      version = await this.carryOns.installPackage(ctx, job.tenant, report.export.package);
      if (job.body.alias) await this.carryOns.setAlias(ctx, job.tenant, version.carry_on, job.body.alias, version.version);
    } catch (err) {
      return await this.end(job, 'failed', `registering the carry-on failed: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      clearInterval(beats);
    }
    await this.end(job, 'succeeded', null, version);
  }

  /** The job's creator, narrowed to the job's tenant: the rights the creation was checked with. */
  private context(job: TrainingJobRecord): AdminContext {
    return {
      principal: { scope: 'admin', keyId: job.createdBy ?? 'training-worker', tenantId: job.tenant, defaultCarryOn: null, harvest: null },
      log: this.opts.log,
    };
  }

  private async end(job: TrainingJobRecord, status: FinishedStatus, error: string | null, carryOnVersion: CarryOnVersionObject | null = null): Promise<void> {
    const outcome = observeRun(jobDir(this.opts.dataDir, job.id), job.body.training.steps, true);
    fs.rmSync(shardCache(jobDir(this.opts.dataDir, job.id)), { recursive: true, force: true });
    const written = await this.jobs.finish(job.id, this.opts.workerId, { status, error, carryOnVersion, outcome });
    this.opts.log.info({ job: job.id, status, error, written }, 'training worker: job ended');
  }

  /** One heartbeat of the running job: it notices a cancel requested anywhere, or that the claim was lost. */
  private async beat(running: Running): Promise<void> {
    try {
      const { owned, cancelRequested } = await this.jobs.heartbeat(running.job.id, this.opts.workerId, Date.now());
      if (!owned) this.stopChild(running, 'lost');
      else if (cancelRequested) this.stopChild(running, 'cancelled');
    } catch (err) {
      // The database is away: the trainer keeps going; past the heartbeat timeout another worker may take the job.
      this.opts.log.warn({ job: running.job.id, err: (err as Error).message }, 'training worker: heartbeat failed');
    }
  }

  private stopChild(running: Running, why: NonNullable<Running['stop']>): void {
    if (running.stop) return;
    running.stop = why;
    stopTrainer(running.child);
  }
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}
