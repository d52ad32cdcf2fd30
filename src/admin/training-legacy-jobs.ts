/**
 * Training jobs of gateways before the queue moved into the database kept each job in
 * DATA_DIR/training/<id>/job.json. At boot they are imported once as finished rows (an active one
 * as failed, as those gateways listed it after a restart: its process is gone) and the file renamed
 * to job.json.imported, so the listing keeps them and the folder is not read again.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { TrainingJobStatus } from './schemas.js';
import type { FinishedStatus, TrainingJobRecord, TrainingJobRepository } from './training-job-queue.js';

/** What a legacy DATA_DIR/training/<id>/job.json held: the queue's record less the claim columns. */
type LegacyJob = Pick<TrainingJobRecord, 'id' | 'tenant' | 'body' | 'shardPaths' | 'status' | 'createdAt' | 'startedAt' | 'finishedAt' | 'error' | 'carryOnVersion' | 'outcome'>;

const FINISHED: TrainingJobStatus[] = ['succeeded', 'failed', 'cancelled'];

/** Imports every job.json under DATA_DIR/training; returns how many were new. */
export async function importLegacyJobs(dataDir: string, jobs: TrainingJobRepository): Promise<number> {
  const root = path.join(dataDir, 'training');
  if (!fs.existsSync(root)) return 0;
  let imported = 0;
  for (const name of fs.readdirSync(root)) {
    const file = path.join(root, name, 'job.json');
    let job: LegacyJob;
    try {
      job = JSON.parse(fs.readFileSync(file, 'utf8')) as LegacyJob;
    } catch {
      continue; // not a job folder, or a crash before its first write: nothing to list
    }
    const finished = FINISHED.includes(job.status);
    const added = await jobs.importFinished({
      id: job.id,
      tenant: job.tenant,
      body: job.body,
      shardPaths: job.shardPaths,
      // A finished job is never claimed again: the base it ran on no longer matters.
      baseFingerprint: '',
      createdBy: null,
      createdAt: job.createdAt,
      status: finished ? (job.status as FinishedStatus) : 'failed',
      startedAt: job.startedAt,
      finishedAt: job.finishedAt ?? new Date().toISOString(),
      error: finished ? job.error : 'interrupted: the gateway stopped while the job was queued or running',
      carryOnVersion: job.carryOnVersion,
      outcome: job.outcome,
    });
    fs.renameSync(file, `${file}.imported`);
    if (added) imported++;
  }
  return imported;
}
