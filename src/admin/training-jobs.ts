import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { managedTenant } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { CreateTrainingJobBody, List, TrainingJobObject, TrainingLossObject } from './schemas.js';
import { ApiError } from '../core/errors.js';
import type { HarvestService } from '../harvest/service.js';
import type { Store } from '../store/store.js';
import { trainingJobQueue, type TrainingJobRecord } from './training-job-queue.js';
import { jobDir, logTail, lossSteps, observeRun } from './training-job-files.js';
import type { TrainingWorker } from './training-worker.js';

export interface TrainingJobsOptions {
  dataDir: string;
  /** The served base's package folder and fingerprint; null until the model is ready. */
  base: () => { dir: string; fingerprint: string } | null;
  /** CARRYON_TRAINING_MAX_QUEUED: jobs waiting in the queue (every replica's together); beyond, 429. */
  maxQueued: number;
}

/**
 * The training job API: jobs are rows of the shared queue (TrainingJobRepository), run by whichever
 * worker claims them: this gateway's own (CARRYON_TRAINING_WORKER=inline, the single-machine case
 * of the paper's split) or `carryon train-worker` processes on training nodes. Progress and logs
 * are read from the job's folder under the shared data folder, where its worker writes them.
 */
export class TrainingJobs {
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly harvest: HarvestService,
    private readonly opts: TrainingJobsOptions,
    /** This process's worker, when it runs jobs itself; told at once of what happens here. */
    private readonly worker: TrainingWorker | null,
  ) {}

  async create(ctx: AdminContext, body: CreateTrainingJobBody): Promise<TrainingJobObject> {
    if (this.closed) throw new ApiError('shutting_down', 'the server is shutting down');
    const tenant = body.tenant ?? ctx.principal.tenantId;
    if (tenant === null) {
      throw new ApiError('missing_required_parameter', "This admin key manages every tenant: say which one with 'tenant'.", { param: 'tenant' });
    }
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    const base = this.opts.base();
    if (!base) throw new ApiError('model_loading', 'The base model is still loading; retry shortly.', { headers: { 'retry-after': '5' } });
    const shardPaths = await this.shardsFor(tenant, base.fingerprint, body.shards);
    const id = `trainjob-${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
    const waiting = await trainingJobQueue(this.store).enqueue(
      { id, tenant, body, shardPaths, baseFingerprint: base.fingerprint, createdBy: ctx.principal.keyId, createdAt: new Date().toISOString() },
      this.opts.maxQueued,
    );
    if (waiting >= this.opts.maxQueued) {
      throw new ApiError('server_overloaded', `${waiting} training jobs are already queued; retry when one has finished.`, {
        headers: { 'retry-after': '60' },
      });
    }
    fs.mkdirSync(jobDir(this.opts.dataDir, id), { recursive: true });
    audit(ctx, { action: 'training_job.create', tenant, target: `${id} -> ${body.carry_on}` });
    this.worker?.poke();
    return this.view(await this.record(id));
  }

  async list(ctx: AdminContext, tenant: string | undefined): Promise<List<TrainingJobObject>> {
    if (tenant !== undefined) await managedTenant(ctx.principal, this.store.tenants, tenant);
    const jobs = await trainingJobQueue(this.store).list(tenant ?? ctx.principal.tenantId);
    return { object: 'list', data: jobs.map((j) => this.view(j)) };
  }

  async get(ctx: AdminContext, id: string): Promise<TrainingJobObject> {
    return this.view(await this.managed(ctx, id));
  }

  /** The training loss at every step the trainer logged (its loss log), for a plot of the whole run. */
  async loss(ctx: AdminContext, id: string): Promise<TrainingLossObject> {
    const job = await this.managed(ctx, id);
    return { object: 'training_job.loss', id: job.id, data: lossSteps(jobDir(this.opts.dataDir, job.id)) };
  }

  /** The end of the job's trainer output (stdout and stderr, as written). */
  async logs(ctx: AdminContext, id: string, bytes: number): Promise<string> {
    const job = await this.managed(ctx, id);
    return logTail(jobDir(this.opts.dataDir, job.id), bytes);
  }

  /**
   * Stops a queued job at once; a running one's worker (here or on another node) sees the request
   * on its next heartbeat and stops the trainer. Nothing is registered. A finished job is returned as it is.
   */
  async cancel(ctx: AdminContext, id: string): Promise<TrainingJobObject> {
    const job = await this.managed(ctx, id);
    const outcome = observeRun(jobDir(this.opts.dataDir, id), job.body.training.steps, false);
    if ((await trainingJobQueue(this.store).cancel(id, outcome)) === 'requested') this.worker?.poke();
    audit(ctx, { action: 'training_job.cancel', tenant: job.tenant, target: id });
    return this.view(await this.record(id));
  }

  /** Starts this process's worker, if it has one (once the gateway's logger exists). */
  start(): void {
    this.worker?.start();
  }

  /** On shutdown: new jobs are refused; the worker (if any) gives its running job back to the queue. */
  async close(): Promise<void> {
    this.closed = true;
    await this.worker?.close();
  }

  // -------------------------------------------------------------------------------------------

  private async shardsFor(tenant: string, fingerprint: string, ids: string[] | undefined): Promise<string[]> {
    const all = (await this.harvest.list(tenant)).filter((s) => s.metadata.base_fingerprint === fingerprint);
    const chosen = ids ? ids.map((id) => all.find((s) => s.id === id) ?? null) : all;
    const missing = ids?.filter((_, i) => chosen[i] === null) ?? [];
    if (missing.length > 0) {
      throw new ApiError('invalid_value', `No harvested shard of tenant '${tenant}' from the served base has id ${missing.slice(0, 3).join(', ')}.`, { param: 'shards' });
    }
    if (chosen.length === 0) {
      throw new ApiError('invalid_value', `Tenant '${tenant}' has no harvested shards from the served base to train on.`, { param: 'shards' });
    }
    return chosen.map((s) => s!.path);
  }

  private async record(id: string): Promise<TrainingJobRecord> {
    const job = await trainingJobQueue(this.store).get(id);
    if (!job) throw new ApiError('not_found', `The training job '${id}' does not exist.`, { param: 'id' });
    return job;
  }

  private async managed(ctx: AdminContext, id: string): Promise<TrainingJobRecord> {
    const job = await trainingJobQueue(this.store).get(id);
    // Another tenant's job is the same 404 as a missing one.
    if (!job || (ctx.principal.tenantId !== null && ctx.principal.tenantId !== job.tenant)) {
      throw new ApiError('not_found', `The training job '${id}' does not exist.`, { param: 'id' });
    }
    return job;
  }

  /** A finished job's outcome was read once when it ended; only an active job's files are read per view. */
  private view(job: TrainingJobRecord): TrainingJobObject {
    const observed = job.outcome ?? observeRun(jobDir(this.opts.dataDir, job.id), job.body.training.steps, job.status !== 'queued');
    const { progress, eval: ev } = observed;
    return {
      object: 'training_job',
      id: job.id,
      tenant: job.tenant,
      carry_on: job.body.carry_on,
      status: job.status,
      created_at: job.createdAt,
      started_at: job.startedAt,
      finished_at: job.finishedAt,
      shards: job.shardPaths.length,
      progress,
      // A job that ended before the sweep was reported has it persisted without these fields.
      eval: ev && { ...ev, trained_alpha: ev.trained_alpha ?? null, sweep: ev.sweep ?? [] },
      carry_on_version: job.carryOnVersion,
      error: job.error,
    };
  }
}
