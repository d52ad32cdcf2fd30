import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { managedTenant } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { CarryOnAdmin } from './carry-on-admin.js';
import type { CarryOnVersionObject, CreateTrainingJobBody, List, TrainingJobObject, TrainingJobStatus, TrainingLossObject } from './schemas.js';
import { ApiError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import type { HarvestService } from '../harvest/service.js';
import type { Store } from '../store/store.js';
import { startTrainer, stopTrainer, TRAINER_PYTHON } from '../training/trainer-process.js';
import { maxNumber, readTrainerReport, type TrainerReport } from '../training/trainer-report.js';

export interface TrainingJobsOptions {
  dataDir: string;
  /** The served base's package folder and fingerprint; null until the model is ready. */
  base: () => { dir: string; fingerprint: string } | null;
  /** CARRYON_TRAINING_MAX_QUEUED: jobs waiting behind the running one; beyond, 429. */
  maxQueued: number;
  /** CARRYON_TRAINING_TIMEOUT_MS: a job running longer is stopped and failed. */
  timeoutMs: number;
  /** CARRYON_TRAINING_THREADS: torch CPU threads of the trainer (serving keeps the rest). */
  threads: number;
  /** Bytes of trainer output kept per job. */
  maxLogBytes: number;
}

/** A job as persisted in DATA_DIR/training/<id>/job.json (atomically rewritten on each change). */
interface JobRecord {
  id: string;
  tenant: string;
  body: CreateTrainingJobBody;
  shardPaths: string[];
  status: TrainingJobStatus;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  error: string | null;
  carryOnVersion: CarryOnVersionObject | null;
  /** Progress and evaluation as the job ended, read from its run folder once (null while it runs). */
  outcome: Pick<TrainingJobObject, 'progress' | 'eval'> | null;
}

const ACTIVE: TrainingJobStatus[] = ['queued', 'running', 'registering'];

/**
 * Training jobs on the gateway's own machine (the single-machine case of the paper's split): the
 * one owner of the job queue. One job runs at a time, as a child process of the Python trainer on
 * the tenant's harvested shards; its output is the trainer's run folder. A job that ends with a
 * carry-on whose ONNX export passed the trainer's parity check is registered as the tenant's next
 * version through the same checks as an upload, so the gateway serves it on the next request.
 */
export class TrainingJobs {
  private readonly jobs = new Map<string, JobRecord>();
  private readonly queue: string[] = [];
  private running: { id: string; child: ChildProcess; ctx: AdminContext; cancelled: boolean; timedOut: boolean } | null = null;
  /** Contexts of queued jobs: whose rights the job runs with, and where its audit lines go. */
  private readonly contexts = new Map<string, AdminContext>();
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly harvest: HarvestService,
    private readonly carryOns: CarryOnAdmin,
    private readonly opts: TrainingJobsOptions,
  ) {
    this.loadPersisted();
  }

  private get root(): string {
    return path.join(this.opts.dataDir, 'training');
  }

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
    if (this.queue.length >= this.opts.maxQueued) {
      throw new ApiError('server_overloaded', `${this.queue.length} training jobs are already queued; retry when one has finished.`, {
        headers: { 'retry-after': '60' },
      });
    }
    const id = `trainjob-${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
    const job: JobRecord = {
      id, tenant, body, shardPaths, status: 'queued', createdAt: new Date().toISOString(),
      startedAt: null, finishedAt: null, error: null, carryOnVersion: null, outcome: null,
    };
    fs.mkdirSync(this.dir(id), { recursive: true });
    this.jobs.set(id, job);
    this.persist(job);
    this.contexts.set(id, ctx);
    this.queue.push(id);
    audit(ctx, { action: 'training_job.create', tenant, target: `${id} -> ${body.carry_on}` });
    this.pump();
    return this.view(job);
  }

  async list(ctx: AdminContext, tenant: string | undefined): Promise<List<TrainingJobObject>> {
    if (tenant !== undefined) await managedTenant(ctx.principal, this.store.tenants, tenant);
    const scope = tenant ?? ctx.principal.tenantId;
    const jobs = [...this.jobs.values()].filter((j) => scope === null || j.tenant === scope);
    jobs.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    return { object: 'list', data: jobs.map((j) => this.view(j)) };
  }

  get(ctx: AdminContext, id: string): TrainingJobObject {
    return this.view(this.managed(ctx, id));
  }

  /** The training loss at every step the trainer logged (its loss log), for a plot of the whole run. */
  loss(ctx: AdminContext, id: string): TrainingLossObject {
    const job = this.managed(ctx, id);
    const data: TrainingLossObject['data'] = [];
    let text = '';
    try {
      text = fs.readFileSync(path.join(this.dir(job.id), 'run', 'train-log.jsonl'), 'utf8');
    } catch {
      // no log yet (queued, or the trainer has not logged a step)
    }
    for (const line of text.split('\n')) {
      let entry: { step?: unknown; loss?: unknown };
      try {
        entry = JSON.parse(line) as { step?: unknown; loss?: unknown };
      } catch {
        continue; // a line being written, or a NaN loss (not JSON): skipped
      }
      if (typeof entry.step === 'number' && typeof entry.loss === 'number') data.push({ step: entry.step, loss: entry.loss });
    }
    return { object: 'training_job.loss', id: job.id, data };
  }

  /** The end of the job's trainer output (stdout and stderr, as written). */
  logs(ctx: AdminContext, id: string, bytes: number): string {
    const job = this.managed(ctx, id);
    const file = path.join(this.dir(job.id), 'train.log');
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch {
      return '';
    }
    try {
      const size = fs.fstatSync(fd).size;
      const start = Math.max(0, size - bytes);
      const buf = Buffer.alloc(size - start);
      fs.readSync(fd, buf, 0, buf.length, start);
      return buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Stops a queued or running job; nothing is registered. A finished job is returned as it is. */
  cancel(ctx: AdminContext, id: string): TrainingJobObject {
    const job = this.managed(ctx, id);
    if (job.status === 'queued') {
      this.queue.splice(this.queue.indexOf(id), 1);
      this.finish(job, 'cancelled', null);
    } else if (this.running?.id === id && job.status === 'running') {
      this.running.cancelled = true;
      stopTrainer(this.running.child);
    }
    audit(ctx, { action: 'training_job.cancel', tenant: job.tenant, target: id });
    return this.view(job);
  }

  /** On shutdown: the running child is stopped and its job failed; queued jobs stay failed on restart. */
  async close(): Promise<void> {
    this.closed = true;
    const r = this.running;
    if (!r) return;
    stopTrainer(r.child, 5_000);
    await new Promise<void>((resolve) => (r.child.exitCode !== null || r.child.signalCode !== null ? resolve() : r.child.once('close', () => resolve())));
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

  private pump(): void {
    if (this.running || this.closed) return;
    const id = this.queue.shift();
    if (!id) return;
    void this.run(this.jobs.get(id)!, this.contexts.get(id)!);
  }

  private async run(job: JobRecord, ctx: AdminContext): Promise<void> {
    this.contexts.delete(job.id);
    const base = this.opts.base();
    if (!base) return this.finishAndNext(job, 'failed', 'the base model is not loaded');
    if (!fs.existsSync(TRAINER_PYTHON)) {
      return this.finishAndNext(job, 'failed', `the trainer is not installed on this gateway (no ${TRAINER_PYTHON}); train on a training node instead (trainer/carryon-train --push-to)`);
    }
    job.status = 'running';
    job.startedAt = new Date().toISOString();
    this.persist(job);
    const { child, exited } = startTrainer({
      baseDir: base.dir,
      shardPaths: job.shardPaths,
      outDir: path.join(this.dir(job.id), 'run'),
      body: job.body,
      threads: this.opts.threads,
      logFile: path.join(this.dir(job.id), 'train.log'),
      maxLogBytes: this.opts.maxLogBytes,
    });
    const running = { id: job.id, child, ctx, cancelled: false, timedOut: false };
    this.running = running;
    const timer = setTimeout(() => {
      running.timedOut = true;
      stopTrainer(child);
    }, this.opts.timeoutMs);
    timer.unref();
    const exit = await exited;
    clearTimeout(timer);
    if (running.cancelled) return this.finishAndNext(job, 'cancelled', null);
    if (running.timedOut) return this.finishAndNext(job, 'failed', `stopped after the training timeout of ${this.opts.timeoutMs} ms`);
    if (this.closed) return this.finishAndNext(job, 'failed', 'the gateway shut down while the job ran');
    if (exit.code !== 0) {
      const why = exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`;
      return this.finishAndNext(job, 'failed', `trainer failed (${why}): ${lastLines(exit.tail, 6)}`);
    }
    job.status = 'registering';
    this.persist(job);
    try {
      const report = this.report(job);
      const verify = report?.export?.verify;
      if (!report?.export?.package || verify?.ok !== true) throw new Error('the trainer did not export a carry-on that passed its parity check');
      const pkg = report.export.package;
      const version = await this.carryOns.installPackage(ctx, job.tenant, pkg);
      if (job.body.alias) await this.carryOns.setAlias(ctx, job.tenant, version.carry_on, job.body.alias, version.version);
      job.carryOnVersion = version;
      this.finishAndNext(job, 'succeeded', null);
    } catch (err) {
      this.finishAndNext(job, 'failed', `registering the carry-on failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private finishAndNext(job: JobRecord, status: TrainingJobStatus, error: string | null): void {
    if (this.running?.id === job.id) this.running = null;
    this.finish(job, status, error);
    this.pump();
  }

  private finish(job: JobRecord, status: TrainingJobStatus, error: string | null): void {
    job.status = status;
    job.error = error;
    job.finishedAt = new Date().toISOString();
    job.outcome = this.observe(job);
    this.persist(job);
  }

  private managed(ctx: AdminContext, id: string): JobRecord {
    const job = this.jobs.get(id);
    // Another tenant's job is the same 404 as a missing one.
    if (!job || (ctx.principal.tenantId !== null && ctx.principal.tenantId !== job.tenant)) {
      throw new ApiError('not_found', `The training job '${id}' does not exist.`, { param: 'id' });
    }
    return job;
  }

  private dir(id: string): string {
    return path.join(this.root, id);
  }

  private persist(job: JobRecord): void {
    writeFileAtomic(path.join(this.dir(job.id), 'job.json'), JSON.stringify(job, null, 2));
  }

  /** Jobs from earlier runs; one that was queued or running when the process stopped has failed. */
  private loadPersisted(): void {
    if (!fs.existsSync(this.root)) return;
    for (const name of fs.readdirSync(this.root)) {
      const file = path.join(this.root, name, 'job.json');
      try {
        const job = JSON.parse(fs.readFileSync(file, 'utf8')) as JobRecord;
        if (ACTIVE.includes(job.status)) this.finish(job, 'failed', 'interrupted: the gateway stopped while the job was queued or running');
        this.jobs.set(job.id, job);
      } catch {
        // Not a job folder (or a crash before its first write): nothing to list.
      }
    }
  }

  private report(job: JobRecord): TrainerReport | null {
    return readTrainerReport(path.join(this.dir(job.id), 'run', 'report.json'));
  }

  /** Progress from the trainer's loss log, read on demand (the trainer appends one line per log step). */
  private progress(job: JobRecord): TrainingJobObject['progress'] {
    const steps = job.body.training.steps;
    let step = 0;
    let loss: number | null = null;
    try {
      const lines = fs.readFileSync(path.join(this.dir(job.id), 'run', 'train-log.jsonl'), 'utf8').trim().split('\n');
      for (let i = lines.length - 1; i >= 0 && loss === null; i--) {
        const entry = JSON.parse(lines[i]) as { step?: number; loss?: number };
        if (typeof entry.loss === 'number') {
          step = entry.step ?? 0;
          loss = entry.loss;
        }
      }
    } catch {
      // no log yet
    }
    return { step, steps, loss };
  }

  /** What the run folder says so far: the trainer's last logged step, and its report once written. */
  private observe(job: JobRecord): Pick<TrainingJobObject, 'progress' | 'eval'> {
    const report = job.status === 'queued' ? null : this.report(job);
    const ev = report?.eval;
    return {
      progress: this.progress(job),
      eval: ev?.base && ev.carry_on
        ? {
            base_loss: ev.base.loss,
            carry_on_loss: ev.carry_on.loss,
            trained_alpha: ev.carry_on.alpha,
            best_alpha: ev.best_alpha,
            best_alpha_loss: ev.best.loss,
            sweep: (ev.sweep ?? []).map((r) => ({ alpha: r.alpha, loss: r.loss })),
            parity_max_abs_diff: report?.export ? maxNumber(report.export.verify.maxAbsDiff) : null,
          }
        : null,
    };
  }

  /** A finished job's outcome was read once when it ended; only a running job's files are read per view. */
  private view(job: JobRecord): TrainingJobObject {
    const { progress, eval: ev } = job.outcome ?? this.observe(job);
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

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}
