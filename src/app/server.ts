import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { servedBaseFor, type BaseModelInfo } from '../admin/base-model.js';
import { resolveBase, startBase, type BaseLoadContext, type ResolvedBase } from './base-loader.js';
import { createAdminServices } from '../admin/services.js';
import { CarryOnGraphBucket } from '../objects/carry-on-graph-bucket.js';
import { objectStoreFromConfig } from '../objects/object-store-config.js';
import { Authenticator, syncConfigKeys } from '../auth/authenticator.js';
import type { Config } from './config.js';
import type { Engine } from '../engine/engine.js';
import { isDiskFull } from '../core/errors.js';
import { DiskSpace } from '../core/disk-space.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { Gateway } from '../serving/gateway.js';
import { Inference, prefixCacheNamespace } from '../serving/inference.js';
import { createHarvestService, type HarvestService } from '../harvest/service.js';
import { createHttpServer } from '../http/app.js';
import routes from '../../plugins/index.js';
import { Metrics } from '../core/metrics.js';
import { startMetricsListener } from '../http/metrics-listener.js';
import { RateLimiter } from '../serving/rate-limit.js';
import { Scheduler } from '../serving/scheduler.js';
import { Store } from '../store/store.js';
import { trainingWorkerOptions, workerSuffix } from './training-worker-options.js';
import type { PromptEncoder } from '../model/prompt-encoder.js';

export interface RunningServer {
  app: FastifyInstance;
  gateway: Gateway;
  /** Tenants, keys and carry-ons (DATA_DIR/gateway.sqlite or PostgreSQL); `store.carryOns` is the carry-on catalog. */
  store: Store;
  /** Resolves once the model is loaded (or rejects if it failed). */
  ready: Promise<void>;
  url: string;
  /** Harvesting: `flush()` writes every open shard and indexes it (call it on SIGTERM), `stats()`, the shard index. */
  harvest: HarvestService;
  metrics: Metrics;
  close(): Promise<void>;
}

/**
 * Boots the gateway: listen first (so probes answer and /v1 says 503 while loading), then resolve,
 * import if needed, and load the model in the engine worker.
 */
export async function startServer(
  config: Config & { sharedModelDir?: string; logStream?: { write(line: string): void } },
): Promise<RunningServer> {
  fs.mkdirSync(config.dataDir, { recursive: true });
  // Before the store opens: on a disk that filled while the gateway was down, the reserve makes room for it.
  const disk = new DiskSpace(config.dataDir, config.CARRYON_DISK_RESERVE_BYTES);
  disk.start();
  const adminKey = config.CARRYON_ADMIN_KEY || ensureGeneratedAdminKey(config.dataDir);
  let store: Store;
  try {
    store = await Store.connect({ dataDir: config.dataDir, url: config.CARRYON_DATABASE_URL || null, poolSize: config.CARRYON_DATABASE_POOL_SIZE });
  } catch (err) {
    disk.stop();
    throw err;
  }
  try {
    return await startWithStore(config, store, adminKey, disk);
  } catch (err) {
    disk.stop();
    await store.end();
    throw err;
  }
}

async function startWithStore(
  config: Config & { sharedModelDir?: string; logStream?: { write(line: string): void } },
  store: Store,
  adminKey: string,
  disk: DiskSpace,
): Promise<RunningServer> {
  const sync = () =>
    syncConfigKeys(store.apiKeys, store.tenants, {
      adminKey,
      adminKeyName: config.CARRYON_ADMIN_KEY ? 'CARRYON_ADMIN_KEY' : 'generated admin key',
      inferenceKeys: config.inferenceKeys,
    });
  // A full disk must not keep the gateway from starting: give the reserve back and retry once; if
  // that fails too, start with the keys the store already has (readiness names the state).
  let synced = { inserted: 0, revoked: 0 };
  let syncProblem: string | null = null;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      synced = await sync();
      syncProblem = null;
      break;
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      disk.onDiskFull('syncing the configured API keys');
      syncProblem = (err as Error).message;
    }
  }
  // On PostgreSQL keys are cached (the network round trip, and serving through an outage); on
  // SQLite (a local file, one node) every request reads the store, as it always has.
  const auth = new Authenticator(
    store.apiKeys,
    store.tenants,
    config.CARRYON_DATABASE_URL
      ? {
          reconcileMs: config.CARRYON_DATABASE_RECONCILE_SECONDS * 1000,
          graceMs: config.CARRYON_DATABASE_GRACE_SECONDS * 1000,
          hearsChanges: () => store.hearsChanges,
          changes: store.changes,
        }
      : undefined,
  );
  const several = config.bases.length > 1;
  // Known once each base's package is resolved: uploaded carry-ons are checked against them.
  const resolved = new Map<string, ResolvedBase>();
  const baseModel = (fingerprint?: string): BaseModelInfo =>
    servedBaseFor(
      gateway.bases.map((b) => ({ name: b.name, status: b.status, failure: b.failure, info: resolved.get(b.name)?.info ?? null })),
      fingerprint,
    );
  const prefixCacheScope = config.CARRYON_PREFIX_CACHE_SHARED ? 'shared' : 'tenant';
  const scheduler = new Scheduler({ maxLive: config.CARRYON_MAX_LIVE_SEQUENCES, maxWaiting: config.CARRYON_MAX_WAITING });
  const gateway: Gateway = new Gateway(
    config.bases.map((b) => b.name),
    scheduler,
    { maxN: config.CARRYON_MAX_N, maxEmbeddingInputs: config.CARRYON_MAX_EMBEDDING_INPUTS, maxPrompts: config.CARRYON_MAX_PROMPTS },
    store.carryOns,
  );
  gateway.disk = disk;
  // The shard index and admin routes work at once; the writer starts once the bases are resolved.
  const objectStore = objectStoreFromConfig(config);
  const graphBucket = objectStore ? new CarryOnGraphBucket(objectStore) : null;
  const harvest = createHarvestService(config, store, () => app.log, objectStore, scheduler);
  const admin = await createAdminServices(store, {
    dataDir: config.dataDir,
    baseNames: config.bases.map((b) => b.name),
    graphBucket,
    baseModel,
    maxCarryOnBytes: config.CARRYON_MAX_CARRYON_BYTES,
    checkTimeoutMs: config.CARRYON_CARRYON_CHECK_TIMEOUT_MS,
    diskFull: () => disk.full,
    harvest,
    prefixCache: {
      clear: (tenantId) => {
        // A base without an engine yet has nothing cached.
        for (const b of gateway.bases) b.services?.engine.clearPrefixCache(tenantId === undefined ? undefined : prefixCacheNamespace(tenantId, prefixCacheScope));
      },
    },
    training: {
      // Training runs on the default base for now (a job names no base).
      base: () => {
        const first = resolved.get(gateway.modelName);
        return first ? { dir: first.dir, fingerprint: first.info.fingerprint } : null;
      },
      maxQueued: config.CARRYON_TRAINING_MAX_QUEUED,
      worker: config.CARRYON_TRAINING_WORKER === 'inline' ? trainingWorkerOptions(config, `gateway-${workerSuffix()}`, () => app.log, objectStore) : null,
    },
  });
  // Replicas on one PostgreSQL database pool their spending; SQLite means one node, which limits alone.
  gateway.rateLimiter = new RateLimiter(
    { requestsPerMinute: config.CARRYON_RATE_LIMIT_RPM, tokensPerMinute: config.CARRYON_RATE_LIMIT_TPM },
    Date.now,
    store.db.dialect === 'postgres' ? store.rateBuckets : null,
    (problem) =>
      problem === null
        ? app.log.info('rate limits: syncing with the other replicas again')
        : app.log.warn({ err: problem }, 'rate limits: cannot sync with the other replicas; limiting on this replica alone until it can'),
  );
  const metrics = new Metrics();
  metrics.onScrape(() => {
    metrics.requestsRunning.set(scheduler.runningSequences);
    metrics.requestsWaiting.set(scheduler.waitingRequests);
  });
  metrics.onScrape(() => harvest.exportMetrics(metrics));
  const app = createHttpServer({
    gateway,
    auth,
    logStream: config.logStream,
    allowAnonymous: config.CARRYON_ALLOW_ANONYMOUS,
    bodyLimit: config.CARRYON_MAX_BODY_BYTES,
    receiveTimeoutMs: config.CARRYON_RECEIVE_TIMEOUT_MS,
    receiveIdleTimeoutMs: config.CARRYON_RECEIVE_IDLE_TIMEOUT_MS,
    logLevel: config.CARRYON_LOG_LEVEL,
    onDiskFull: (what) => disk.onDiskFull(what),
  });
  await app.register(routes, {
    gateway,
    metrics: { registry: metrics, requireAdmin: config.CARRYON_METRICS_AUTH === 'admin' },
    admin: { services: admin, maxCarryOnBytes: config.CARRYON_MAX_CARRYON_BYTES },
  });
  const url = await app.listen({ host: config.HOST, port: config.PORT });
  admin.training.start();
  gateway.rateLimiter.startSync(config.CARRYON_RATE_LIMIT_SYNC_MS);
  await store.listen((msg) => app.log.warn(msg));
  gateway.database = store.health;
  const metricsServer = config.CARRYON_METRICS_PORT > 0 ? await startMetricsListener(metrics, config.HOST, config.CARRYON_METRICS_PORT) : null;
  if (synced.inserted + synced.revoked > 0) app.log.info(synced, 'configured API keys synced to the store');
  if (syncProblem) app.log.error({ err: syncProblem }, 'the disk is full: started without syncing the configured API keys');
  if (!config.CARRYON_ADMIN_KEY) app.log.warn(`no CARRYON_ADMIN_KEY set: using the generated key in ${adminKeyPath(config.dataDir)}`);

  const engines: Engine[] = [];
  const inferences: Inference[] = [];
  const encoders: PromptEncoder[] = [];
  // Bases that failed to load, in order: the first is what `ready` rejects with.
  const failures: Error[] = [];
  const baseDir = (fingerprint: string) => [...resolved.values()].find((b) => b.info.fingerprint === fingerprint)?.dir ?? null;
  const loadCtx: BaseLoadContext = { config, gateway, several, log: app.log, graphBucket, baseDir };
  const ready = (async () => {
    // Every package first (finding or importing them), so routing and uploads know each base's
    // fingerprint early; then the engines, one after the other, as each allocates its memory.
    for (const setting of config.bases) {
      try {
        const base = await resolveBase(loadCtx, setting);
        resolved.set(setting.name, base);
        gateway.base(setting.name).fingerprint = base.info.fingerprint;
      } catch (err) {
        failBase(setting.name, err as Error);
      }
    }
    // Every base harvests (each shard names its base); a policy's other bases get replays.
    const harvestSink = await harvest.start();
    for (const base of resolved.values()) {
      const name = base.setting.name;
      try {
        const isDefault = name === gateway.modelName;
        const started = await startBase(loadCtx, base, {
          harvestSink,
          harvestReplay: harvestSink ? harvest.replay : null,
          metrics,
          engineMetrics: isDefault,
          prefixCacheScope,
        });
        const { engine: e, contextLength, hiddenSize } = started.services;
        harvest.replay?.addBase(name, { fingerprint: base.info.fingerprint, engine: e, contextLength, hiddenSize });
        engines.push(started.engine);
        inferences.push(started.services.inference);
        encoders.push(started.services.encoder);
        gateway.setReady(started.services, name);
        app.log.info({ model: name, package: base.dir, fingerprint: base.info.fingerprint }, 'model ready');
      } catch (err) {
        failBase(name, err as Error);
      }
    }
    if (failures.length > 0) throw failures[0];
  })().catch((err: Error) => {
    // A failure outside one base's loading (harvest's start) fails the default base.
    if (!failures.includes(err)) gateway.setFailed(err.message);
    app.log.error({ err }, 'model failed to load');
    throw err;
  });
  function failBase(name: string, err: Error): void {
    gateway.setFailed(err.message, name);
    if (several) app.log.error({ err, model: name }, 'base model failed to load');
    failures.push(err);
  }
  ready.catch(() => {}); // observed by callers that await it; the failure is already logged

  return {
    app,
    gateway,
    store,
    ready,
    url,
    harvest,
    metrics,
    /**
     * Graceful shutdown: readiness goes 503 and new work is refused (503, Connection: close); running
     * generations get CARRYON_DRAIN_TIMEOUT_MS to finish, then end with a proper final chunk
     * (finish_reason "length"); then the listener, the engine and the store close.
     */
    async close() {
      gateway.stop();
      scheduler.drain();
      await drainAll(inferences, config.CARRYON_DRAIN_TIMEOUT_MS, app.log);
      // Builds and training are killed, not awaited: an upload waiting on one then fails at once.
      await admin.close();
      await app.close();
      auth.close();
      await new Promise<void>((r) => (metricsServer ? metricsServer.close(() => r()) : r()));
      for (const encoder of encoders) await encoder.close();
      for (const engine of engines) await engine.close();
      await harvest.close(); // after the engine, whose last captures reach the writer before it stops
      await gateway.rateLimiter?.stopSync();
      disk.stop();
      await store.end();
    },
  };
}

/** Every base's running generations get the drain deadline together, then are ended with a final chunk. */
async function drainAll(inferences: Inference[], deadlineMs: number, log: { warn(obj: object, msg: string): void }): Promise<void> {
  const drained = await Promise.all(inferences.map((gen) => gen.drain(deadlineMs)));
  if (drained.every(Boolean)) return;
  log.warn({ running: inferences.reduce((n, gen) => n + gen.activeRuns, 0) }, 'drain deadline reached: ending running generations');
  for (const gen of inferences) gen.endAll();
  await Promise.all(inferences.map((gen) => gen.drain(5_000)));
}

export function adminKeyPath(dataDir: string): string {
  return path.join(dataDir, 'admin-key');
}

/** Secure by default: with no admin key configured, make one, readable only by this user. */
function ensureGeneratedAdminKey(dataDir: string): string {
  const file = adminKeyPath(dataDir);
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const key = `sk-admin-${randomBytes(24).toString('base64url')}`;
  writeFileAtomic(file, `${key}\n`, 0o600);
  return key;
}
