/**
 * `carryon train-worker`: a training node's process. It runs the training jobs that gateways queue
 * in the shared database (CARRYON_DATABASE_URL, or DATA_DIR/gateway.sqlite on one machine), on the
 * shared data folder where the harvest shards are, and registers each result as a carry-on version;
 * the gateways hear of it through the change feed. Configured by the same environment as the
 * gateway (docs/configuration.md): the base it trains on is CARRYON_MODEL (or the first of
 * CARRYON_MODELS), and it claims only jobs queued for that base. With CARRYON_OBJECT_STORE_URL its
 * data folder is its own: shards not on its disk come from the bucket, and the carry-ons it
 * registers go there, for every gateway to fetch.
 */
import { CarryOnBuilder } from '../admin/carry-on-build.js';
import { CarryOnAdmin } from '../admin/carry-on-admin.js';
import { trainingJobQueue } from '../admin/training-job-queue.js';
import { CarryOnFiles } from '../admin/carry-on-files.js';
import { servedBaseFor } from '../admin/base-model.js';
import type { AuditLog } from '../admin/audit.js';
import { resolveBase } from '../app/base-loader.js';
import { loadConfigOrReport } from '../app/config.js';
import { CarryOnGraphBucket } from '../objects/carry-on-graph-bucket.js';
import { objectStoreFromConfig } from '../objects/object-store-config.js';
import { Store } from '../store/store.js';
import { TrainingWorker } from '../admin/training-worker.js';
import { trainingWorkerOptions, workerSuffix } from '../app/training-worker-options.js';

/** One JSON line per event on stdout, as the gateway logs (level names instead of pino's numbers). */
function jsonLog(level: string, obj: object, msg: string): void {
  process.stdout.write(`${JSON.stringify({ level, time: Date.now(), ...obj, msg })}\n`);
}

const log: AuditLog & { info(obj: object | string, msg?: string): void } = {
  info: (obj: object | string, msg?: string) => (typeof obj === 'string' ? jsonLog('info', {}, obj) : jsonLog('info', obj, msg ?? '')),
  warn: (obj, msg) => jsonLog('warn', obj, msg),
  error: (obj, msg) => jsonLog('error', obj, msg),
};

export async function trainWorkerCommand(args: string[]): Promise<number> {
  if (args.length > 0) {
    console.error('usage: carryon train-worker   (configured by environment variables, see docs/configuration.md)');
    return args[0] === '--help' ? 0 : 2;
  }
  const config = loadConfigOrReport();
  if (!config) return 2;
  const store = await Store.connect({ dataDir: config.dataDir, url: config.CARRYON_DATABASE_URL || null, poolSize: config.CARRYON_DATABASE_POOL_SIZE });
  const builder = new CarryOnBuilder({ timeoutMs: config.CARRYON_CARRYON_CHECK_TIMEOUT_MS });
  try {
    const setting = config.bases[0];
    const base = await resolveBase({ config, several: config.bases.length > 1, log: { ...log, error: (m: string) => jsonLog('error', {}, m) } }, setting);
    // With a bucket, the version goes there too: gateways on other nodes fetch its graph from it.
    const objects = objectStoreFromConfig(config);
    const carryOns = new CarryOnAdmin(store, new CarryOnFiles(config.dataDir, store.carryOns, objects ? new CarryOnGraphBucket(objects) : null), {
      baseModel: (fingerprint) => servedBaseFor([{ name: setting.name, status: 'ready', failure: null, info: base.info }], fingerprint),
      maxWeightsBytes: config.CARRYON_MAX_CARRYON_BYTES,
      builder,
    });
    const opts = trainingWorkerOptions(config, `worker-${workerSuffix()}`, () => log, objects);
    const worker = new TrainingWorker(trainingJobQueue(store), carryOns, {
      ...opts,
      dataDir: config.dataDir,
      base: () => ({ dir: base.dir, fingerprint: base.info.fingerprint }),
    });
    // On SQLite nothing else holds the event loop open while the worker waits for jobs.
    worker.start(true);
    log.info({ worker: opts.workerId, database: store.db.location, base: base.info.fingerprint }, 'train-worker: polling the training job queue');
    const signal = await new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
    // A running job goes back to the queue, for another worker (or this one, restarted).
    log.info({ signal }, 'train-worker: shutting down');
    await worker.close();
    return 0;
  } finally {
    builder.close();
    await store.end();
  }
}
