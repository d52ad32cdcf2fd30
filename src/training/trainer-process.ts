import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CreateTrainingJobBody } from './job-request.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The trainer's launcher: picks a Python that has torch (see trainer/python). */
export const TRAINER_PYTHON = path.join(REPO_ROOT, 'trainer', 'python');

/** Environment variables a training child must not see: secrets stay in the gateway process. */
const SECRET_ENV = /^(CARRYON_ADMIN_KEY|CARRYON_API_KEYS|CARRYON_HARVEST_PUSH_TOKEN|CARRYON_DATABASE_URL)$|_KEY$|_TOKEN$|_SECRET$|PASSWORD/;

export interface TrainerRun {
  baseDir: string;
  shardPaths: string[];
  outDir: string;
  body: CreateTrainingJobBody;
  threads: number;
  logFile: string;
  /** Bytes of child output kept in `logFile`; the rest is counted and dropped. */
  maxLogBytes: number;
}

export interface TrainerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The child's last stdout line: the trainer prints `{"report": ..., "package": ...}` there. */
  lastLine: string;
  /** The end of the log, for an error message. */
  tail: string;
}

/** `carryon_train train` arguments for a job: the admin API's names mapped onto the CLI's. */
export function trainerArgs(r: TrainerRun): string[] {
  const a = r.body.architecture;
  const t = r.body.training;
  return [
    '-m', 'carryon_train', 'train',
    '--base', r.baseDir,
    '--out', r.outDir,
    '--id', r.body.carry_on,
    // One argument with '=': a description that starts with '--' stays a value, never an option.
    `--description=${r.body.description ?? ''}`,
    '--width', String(a.width), '--layers', String(a.layers), '--heads', String(a.heads),
    '--kv-heads', String(a.kv_heads), '--intermediate', String(a.intermediate),
    '--layers-in', a.layers_in.join(','),
    ...(a.token_ids ? ['--token-ids'] : []),
    '--steps', String(t.steps), '--batch-size', String(t.batch_size), '--lr', String(t.lr),
    '--warmup', String(Math.min(t.warmup, t.steps)), '--seq-len', String(t.seq_len), '--seed', String(t.seed),
    '--alpha', String(t.alpha), '--eval-fraction', String(t.eval_fraction), '--loss-rows', t.loss_rows,
    '--threads', String(r.threads), '--device', 'auto', '--no-progress',
    // Appended last: nargs="*" takes everything after it.
    '--shards', ...r.shardPaths,
  ];
}

/**
 * Starts the trainer as a child process (its own process group, so cancelling takes any helper
 * processes with it), with its output appended to `logFile` up to `maxLogBytes`.
 */
export function startTrainer(r: TrainerRun): { child: ChildProcess; exited: Promise<TrainerExit> } {
  const env: NodeJS.ProcessEnv = { PYTHONUNBUFFERED: '1' };
  for (const [k, v] of Object.entries(process.env)) if (!SECRET_ENV.test(k)) env[k] = v;
  // The trainer arms a parent-death signal with it, so it never outlives the gateway (kill -9 too).
  env.CARRYON_PARENT_PID = String(process.pid);
  const child = spawn(TRAINER_PYTHON, trainerArgs(r), { cwd: REPO_ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = fs.openSync(r.logFile, 'a');
  let written = 0;
  let dropped = 0;
  let tail = '';
  let stdoutRest = '';
  let lastLine = '';
  const append = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-4000);
    const room = Math.max(0, r.maxLogBytes - written);
    if (room > 0) {
      const part = chunk.subarray(0, room);
      fs.writeSync(log, part);
      written += part.length;
    }
    dropped += chunk.length - Math.min(chunk.length, room);
  };
  child.stdout.on('data', (chunk: Buffer) => {
    append(chunk);
    const lines = (stdoutRest + chunk.toString('utf8')).split('\n');
    stdoutRest = lines.pop() ?? '';
    for (const l of lines) if (l.trim()) lastLine = l.trim();
  });
  child.stderr.on('data', append);
  const exited = new Promise<TrainerExit>((resolve) => {
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (stdoutRest.trim()) lastLine = stdoutRest.trim();
      if (dropped > 0) fs.writeSync(log, `\n[gateway] ${dropped} further bytes of trainer output were not kept (log limit ${r.maxLogBytes} bytes)\n`);
      fs.closeSync(log);
      resolve({ code, signal, lastLine, tail });
    };
    child.on('error', (err) => {
      tail += `\n${err.message}`;
      finish(null, null);
    });
    child.on('close', finish);
  });
  return { child, exited };
}

/** SIGTERM to the child's process group, then SIGKILL if it has not gone after `graceMs`. */
export function stopTrainer(child: ChildProcess, graceMs = 10_000): void {
  const signal = (s: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, s);
    } catch {
      // already gone
    }
  };
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), graceMs);
  timer.unref();
  child.once('close', () => clearTimeout(timer));
}
