/**
 * Training jobs of gateways before the queue moved into the database kept each job in
 * DATA_DIR/training/<id>/job.json. At boot they are imported once as finished rows (an active one
 * as failed, as those gateways listed it after a restart: its process is gone) and the file renamed
 * to job.json.imported, so the listing keeps them and the folder is not read again.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { CarryOnVersionObject, TrainingJobStatus } from '../admin/schemas.js';
import type { FinishedStatus, TrainingJobRepository } from '../store/training-jobs.js';
import type { CreateTrainingJobBody } from './job-request.js';
import type { JobOutcome } from './job-files.js';

interface LegacyJob {
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
  outcome: JobOutcome | null;
}

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
