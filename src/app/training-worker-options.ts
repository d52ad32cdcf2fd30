import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { AuditLog } from '../admin/audit.js';
import type { Config } from './config.js';
import type { ObjectStore } from '../objects/object-store.js';
import type { TrainingWorkerOptions } from '../admin/training-worker.js';

/** Bytes of trainer output kept per job. */
const MAX_LOG_BYTES = 4 * 1024 * 1024;

/** `<host>-<pid>-<random>`: which process holds a claim, readable in the queue's rows and logs. */
export function workerSuffix(): string {
  return `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/** A worker's settings from the configuration, the same for the gateway's own worker and `carryon train-worker`. */
export function trainingWorkerOptions(config: Config, workerId: string, log: () => AuditLog, objects: ObjectStore | null): Omit<TrainingWorkerOptions, 'dataDir' | 'base'> {
  return {
    workerId,
    objects,
    timeoutMs: config.CARRYON_TRAINING_TIMEOUT_MS,
    threads: config.CARRYON_TRAINING_THREADS,
    maxLogBytes: MAX_LOG_BYTES,
    heartbeatMs: config.CARRYON_TRAINING_HEARTBEAT_MS,
    heartbeatTimeoutMs: config.CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS,
    maxAttempts: config.CARRYON_TRAINING_MAX_ATTEMPTS,
    // Resolved per line: the gateway's logger exists only once its HTTP server does.
    log: {
      info: (obj, msg) => log().info(obj, msg),
      warn: (obj, msg) => log().warn(obj, msg),
      error: (obj, msg) => log().error(obj, msg),
    },
  };
}
