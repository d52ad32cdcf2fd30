import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from './paths.js';

/** Short heartbeats, so a lost worker is noticed in seconds. */
export const QUEUE_ENV = { CARRYON_TRAINING_HEARTBEAT_MS: '300', CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: '3000', CARRYON_TRAINING_MAX_ATTEMPTS: '2' };

export interface Worker {
  child: ChildProcess;
  id: string;
  lines: Array<Record<string, unknown>>;
}

/**
 * `carryon train-worker` as a child process, as a training node runs it: its JSON log lines are
 * kept, and it resolves once the worker has said its id (it is polling then).
 */
export function startWorker(env: Record<string, string>): Promise<Worker> {
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin/carryon.js'), 'train-worker'], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, CARRYON_THREADS: '1', CARRYON_DISK_RESERVE_BYTES: '0', ...QUEUE_ENV, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const worker: Worker = { child, id: '', lines: [] };
  let rest = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      const parts = (rest + d.toString()).split('\n');
      rest = parts.pop() ?? '';
      for (const line of parts.filter(Boolean)) {
        const rec = JSON.parse(line) as Record<string, unknown>;
        worker.lines.push(rec);
        if (typeof rec.worker === 'string' && !worker.id) {
          worker.id = rec.worker;
          resolve(worker);
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`train-worker exited ${code} before polling: ${err}`)));
  });
}

export const claimsOf = (w: Worker, job: string) => w.lines.filter((l) => l.msg === 'training worker: claimed a job' && l.job === job).length;


/** Waits until the worker has logged a line matching `match` (its stdout reaches us after the database does). */
export async function waitForLine(w: Worker, match: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!w.lines.some(match)) {
    if (Date.now() > until) throw new Error(`worker ${w.id} never logged the line; last lines:\n${w.lines.slice(-5).map((l) => JSON.stringify(l)).join('\n')}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Reads `read()` every 250 ms until `done` holds; past `timeoutMs`, throws with `explain` of the last value. */
export async function pollUntil<T>(read: () => Promise<T>, done: (v: T) => boolean, timeoutMs: number, explain: (v: T) => string): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (done(v)) return v;
    if (Date.now() > until) throw new Error(explain(v));
    await new Promise((res) => setTimeout(res, 250));
  }
}

/** The last lines each worker logged, for a failure message. */
export function workersSaid(workers: Worker[], lines = 5): string {
  return workers.map((w) => w.lines.slice(-lines).map((l) => JSON.stringify(l)).join('\n')).join('\n---\n');
}
