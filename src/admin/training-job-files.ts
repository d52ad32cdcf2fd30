/**
 * A training job's folder, DATA_DIR/training/<id>/: the trainer's run folder (`run/`, its loss
 * log and report) and its output (`train.log`). The worker writes it; every replica on the same
 * data folder reads it for progress, logs and the loss plot.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { TrainingJobObject, TrainingLossObject } from './schemas.js';
import { maxNumber, readTrainerReport, type TrainerReport } from '../training/trainer-report.js';

export type JobOutcome = Pick<TrainingJobObject, 'progress' | 'eval'>;

export function jobDir(dataDir: string, id: string): string {
  return path.join(dataDir, 'training', id);
}

export const runDir = (dir: string): string => path.join(dir, 'run');
export const logFile = (dir: string): string => path.join(dir, 'train.log');
const lossLog = (dir: string): string => path.join(runDir(dir), 'train-log.jsonl');

export function readReport(dir: string): TrainerReport | null {
  return readTrainerReport(path.join(runDir(dir), 'report.json'));
}

/** Every step the trainer logged a loss for; lines being written (or NaN losses, not JSON) are skipped. */
export function lossSteps(dir: string): TrainingLossObject['data'] {
  const data: TrainingLossObject['data'] = [];
  let text = '';
  try {
    text = fs.readFileSync(lossLog(dir), 'utf8');
  } catch {
    // no log yet (queued, or the trainer has not logged a step)
  }
  for (const line of text.split('\n')) {
    let entry: { step?: unknown; loss?: unknown };
    try {
      entry = JSON.parse(line) as { step?: unknown; loss?: unknown };
    } catch {
      continue;
    }
    if (typeof entry.step === 'number' && typeof entry.loss === 'number') data.push({ step: entry.step, loss: entry.loss });
  }
  return data;
}

/** The last `bytes` of the trainer's output ('' before it started). */
export function logTail(dir: string, bytes: number): string {
  let fd: number;
  try {
    fd = fs.openSync(logFile(dir), 'r');
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

/** What the run folder says so far: the trainer's last logged step, and its report once written. */
export function observeRun(dir: string, steps: number, started: boolean): JobOutcome {
  const last = lossSteps(dir).at(-1);
  const report = started ? readReport(dir) : null;
  const ev = report?.eval;
  return {
    progress: { step: last?.step ?? 0, steps, loss: last?.loss ?? null },
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
