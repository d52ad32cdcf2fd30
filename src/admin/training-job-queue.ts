import path from 'node:path';
import type { CarryOnVersionObject, TrainingJobStatus } from './schemas.js';
import type { CreateTrainingJobBody } from '../training/job-request.js';
import type { JobOutcome } from './training-job-files.js';
import { nowIso } from '../store/db.js';
import type { SqlDriver, SqlExecutor } from '../store/sql-driver.js';
import type { Store } from '../store/store.js';

/** A training job as the queue holds it (`training_jobs`). */
export interface TrainingJobRecord {
  id: string;
  tenant: string;
  body: CreateTrainingJobBody;
  /** Absolute paths of the shards to train on. */
  shardPaths: string[];
  baseFingerprint: string;
  /** The admin key id that created the job (null: imported from a legacy job.json). */
  createdBy: string | null;
  status: TrainingJobStatus;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  error: string | null;
  carryOnVersion: CarryOnVersionObject | null;
  /** Progress and evaluation as the job ended (null while it is active). */
  outcome: JobOutcome | null;
  attempts: number;
  claimedBy: string | null;
  heartbeatAt: number | null;
  cancelRequested: boolean;
}

export type NewTrainingJob = Pick<TrainingJobRecord, 'id' | 'tenant' | 'body' | 'shardPaths' | 'baseFingerprint' | 'createdBy' | 'createdAt'>;

/** What a worker is, for a claim: its id and the base it can train on. */
export interface Claimant {
  workerId: string;
  baseFingerprint: string;
}

/** When a claimed job counts as abandoned, and how often it is retried. */
export interface ClaimPolicy {
  now: number;
  /** A running job whose heartbeat is older than this many ms lost its worker. */
  heartbeatTimeoutMs: number;
  /** Claims a job may have in all; a job that lost its worker on the last one fails. */
  maxAttempts: number;
}

export type FinishedStatus = Extract<TrainingJobStatus, 'succeeded' | 'failed' | 'cancelled'>;

interface JobRow {
  id: string;
  tenant_id: string;
  body: string;
  shard_paths: string;
  base_fingerprint: string;
  created_by: string | null;
  status: TrainingJobStatus;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  error: string | null;
  carry_on_version: string | null;
  outcome: string | null;
  attempts: number;
  claimed_by: string | null;
  heartbeat_at: number | null;
  cancel_requested: number;
}

const ACTIVE = "('running', 'registering')";

/**
 * The training job queue, shared by every gateway replica and training worker on one database.
 * A job is claimed by exactly one worker: on PostgreSQL with `SELECT … FOR UPDATE SKIP LOCKED` in a
 * transaction of its own (claimers skip each other's rows rather than wait), on SQLite under
 * BEGIN IMMEDIATE (one writer at a time, across processes). Every write a worker makes names its
 * claim (`claimed_by`), so a worker that lost its job to another never writes over it.
 */
const QUEUES = new WeakMap<Store, TrainingJobRepository>();

/** The training job queue in `store`'s database (one repository per store). */
export function trainingJobQueue(store: Store): TrainingJobRepository {
  let q = QUEUES.get(store);
  if (!q) QUEUES.set(store, (q = new TrainingJobRepository(store.db, store.dataDir)));
  return q;
}

export class TrainingJobRepository {
  constructor(
    private readonly db: SqlDriver,
    /** Shard paths are stored relative to it, like the harvest index's, so the folder can move. */
    private readonly dataDir: string,
  ) {}

  /**
   * Queues a job unless `maxQueued` are already waiting; returns how many were waiting (the job
   * was queued when that is below `maxQueued`). Count and insert are one write transaction.
   */
  async enqueue(job: NewTrainingJob, maxQueued: number): Promise<number> {
    return this.db.transaction(async (tx) => {
      const waiting = (await tx.get<{ n: number }>("SELECT COUNT(*) AS n FROM training_jobs WHERE status = 'queued'"))!.n;
      if (waiting < maxQueued) await this.insert(tx, job, 'queued');
      return waiting;
    });
  }

  /** A job from an older gateway's job.json, as it ended; false when it is already here. */
  async importFinished(job: NewTrainingJob & Pick<TrainingJobRecord, 'startedAt' | 'finishedAt' | 'error' | 'carryOnVersion' | 'outcome'> & { status: FinishedStatus }): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      if (await tx.get('SELECT id FROM training_jobs WHERE id = ?', [job.id])) return false;
      await this.insert(tx, job, job.status);
      await tx.run('UPDATE training_jobs SET started_at = ?, finished_at = ?, error = ?, carry_on_version = ?, outcome = ? WHERE id = ?', [
        job.startedAt, job.finishedAt, job.error, json(job.carryOnVersion), json(job.outcome), job.id,
      ]);
      return true;
    });
  }

  async get(id: string): Promise<TrainingJobRecord | null> {
    const row = await this.db.get<JobRow>('SELECT * FROM training_jobs WHERE id = ?', [id]);
    return row ? this.toRecord(row) : null;
  }

  /** Newest first; `tenant` null: every tenant's. */
  async list(tenant: string | null): Promise<TrainingJobRecord[]> {
    const rows = tenant === null
      ? await this.db.query<JobRow>('SELECT * FROM training_jobs ORDER BY created_at DESC, id DESC')
      : await this.db.query<JobRow>('SELECT * FROM training_jobs WHERE tenant_id = ? ORDER BY created_at DESC, id DESC', [tenant]);
    return rows.map((r) => this.toRecord(r));
  }

  /**
   * Takes the oldest job this worker can run: a queued one, or a running one whose worker stopped
   * heartbeating (one more attempt). First settles abandoned jobs that must not run again: a
   * cancelled one, one past its attempts, and one lost while registering (its version may exist).
   */
  async claim(who: Claimant, policy: ClaimPolicy): Promise<TrainingJobRecord | null> {
    const staleBefore = policy.now - policy.heartbeatTimeoutMs;
    const lost = `worker lost (no heartbeat for ${Math.round(policy.heartbeatTimeoutMs / 1000)} s)`;
    const finished = nowIso();
    return this.db.transaction(async (tx) => {
      const stale = `status IN ${ACTIVE} AND heartbeat_at < ?`;
      await tx.run(`UPDATE training_jobs SET status = 'cancelled', finished_at = ?, claimed_by = NULL WHERE ${stale} AND cancel_requested = 1`, [finished, staleBefore]);
      await tx.run(`UPDATE training_jobs SET status = 'failed', finished_at = ?, claimed_by = NULL, error = ? WHERE status = 'registering' AND heartbeat_at < ?`, [
        finished, `${lost} while registering the carry-on; check its versions before retrying`, staleBefore,
      ]);
      await tx.run(`UPDATE training_jobs SET status = 'failed', finished_at = ?, claimed_by = NULL, error = ${attemptsMessage(tx)} WHERE ${stale} AND attempts >= ?`, [
        finished, `${lost} after `, ' attempts', staleBefore, policy.maxAttempts,
      ]);
      const lock = tx.dialect === 'postgres' ? ' FOR UPDATE SKIP LOCKED' : '';
      const next = await tx.get<{ id: string }>(
        `SELECT id FROM training_jobs WHERE base_fingerprint = ? AND (status = 'queued' OR (status = 'running' AND heartbeat_at < ?))
         ORDER BY created_at, id LIMIT 1${lock}`,
        [who.baseFingerprint, staleBefore],
      );
      if (!next) return null;
      await tx.run(
        `UPDATE training_jobs SET status = 'running', claimed_by = ?, heartbeat_at = ?, attempts = attempts + 1,
           started_at = COALESCE(started_at, ?) WHERE id = ?`,
        [who.workerId, policy.now, finished, next.id],
      );
      return this.toRecord((await tx.get<JobRow>('SELECT * FROM training_jobs WHERE id = ?', [next.id]))!);
    }, { rowLocks: true });
  }

  /** The claiming worker is alive; `owned` false: the job is no longer its own (reclaimed, or settled). */
  async heartbeat(id: string, workerId: string, now: number): Promise<{ owned: boolean; cancelRequested: boolean }> {
    const row = await this.db.get<{ cancel_requested: number }>(
      `UPDATE training_jobs SET heartbeat_at = ? WHERE id = ? AND claimed_by = ? AND status IN ${ACTIVE} RETURNING cancel_requested`,
      [now, id, workerId],
    );
    return { owned: row !== undefined, cancelRequested: row?.cancel_requested === 1 };
  }

  /** running → registering, by the claiming worker; false when the claim was lost. */
  async markRegistering(id: string, workerId: string): Promise<boolean> {
    const { changes } = await this.db.run(`UPDATE training_jobs SET status = 'registering' WHERE id = ? AND claimed_by = ? AND status = 'running'`, [id, workerId]);
    return changes > 0;
  }

  /** Ends the job for the claiming worker; false when the claim was lost (nothing written). */
  async finish(id: string, workerId: string, end: { status: FinishedStatus; error: string | null; carryOnVersion?: CarryOnVersionObject | null; outcome: JobOutcome }): Promise<boolean> {
    const { changes } = await this.db.run(
      `UPDATE training_jobs SET status = ?, error = ?, carry_on_version = ?, outcome = ?, finished_at = ?, claimed_by = NULL
       WHERE id = ? AND claimed_by = ? AND status IN ${ACTIVE}`,
      [end.status, end.error, json(end.carryOnVersion ?? null), json(end.outcome), nowIso(), id, workerId],
    );
    return changes > 0;
  }

  /** Gives a running job back to the queue (its worker is shutting down): the next claim runs it again. */
  async release(id: string, workerId: string): Promise<boolean> {
    const { changes } = await this.db.run(
      `UPDATE training_jobs SET status = 'queued', claimed_by = NULL, heartbeat_at = NULL WHERE id = ? AND claimed_by = ? AND status = 'running'`,
      [id, workerId],
    );
    return changes > 0;
  }

  /**
   * Cancels a queued job at once, or asks the worker of a running one to stop (it sees the flag on
   * its next heartbeat). A job registering or finished is left as it is.
   */
  async cancel(id: string, outcome: JobOutcome): Promise<'cancelled' | 'requested' | 'unchanged'> {
    const queued = await this.db.run(`UPDATE training_jobs SET status = 'cancelled', finished_at = ?, outcome = ? WHERE id = ? AND status = 'queued'`, [
      nowIso(), json(outcome), id,
    ]);
    if (queued.changes > 0) return 'cancelled';
    const running = await this.db.run(`UPDATE training_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'`, [id]);
    return running.changes > 0 ? 'requested' : 'unchanged';
  }

  private async insert(tx: SqlExecutor, job: NewTrainingJob, status: TrainingJobStatus): Promise<void> {
    await tx.run(
      `INSERT INTO training_jobs (id, tenant_id, body, shard_paths, base_fingerprint, created_by, status, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      [job.id, job.tenant, JSON.stringify(job.body), JSON.stringify(job.shardPaths.map((p) => path.relative(this.dataDir, p))),
        job.baseFingerprint, job.createdBy, status, job.createdAt],
    );
  }

  private toRecord(r: JobRow): TrainingJobRecord {
    return {
      id: r.id,
      tenant: r.tenant_id,
      body: JSON.parse(r.body) as CreateTrainingJobBody,
      shardPaths: (JSON.parse(r.shard_paths) as string[]).map((p) => path.resolve(this.dataDir, p)),
      baseFingerprint: r.base_fingerprint,
      createdBy: r.created_by,
      status: r.status,
      createdAt: r.created_at,
      startedAt: r.started_at,
      finishedAt: r.finished_at,
      error: r.error,
      carryOnVersion: r.carry_on_version === null ? null : (JSON.parse(r.carry_on_version) as CarryOnVersionObject),
      outcome: r.outcome === null ? null : (JSON.parse(r.outcome) as JobOutcome),
      attempts: r.attempts,
      claimedBy: r.claimed_by,
      heartbeatAt: r.heartbeat_at,
      cancelRequested: r.cancel_requested === 1,
    };
  }
}

function json(v: unknown): string | null {
  return v === null || v === undefined ? null : JSON.stringify(v);
}

/** `? || attempts || ?` as each dialect concatenates a number into text. */
function attemptsMessage(tx: SqlExecutor): string {
  return tx.dialect === 'postgres' ? '(CAST(? AS TEXT) || CAST(attempts AS TEXT) || CAST(? AS TEXT))' : "(? || attempts || ?)";
}
