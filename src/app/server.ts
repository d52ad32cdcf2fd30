import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { readBaseModelInfo, type BaseModelInfo } from '../admin/base-model.js';
import { createAdminServices } from '../admin/services.js';
import { Authenticator, syncConfigKeys } from '../auth/authenticator.js';
import { CarryOnRegistry } from '../serving/carry-on-registry.js';
import { ChatTemplate } from '../model/chat-template.js';
import type { Config } from './config.js';
import { Engine } from '../engine/engine.js';
import { ApiError, isDiskFull } from '../core/errors.js';
import { DiskSpace } from '../core/disk-space.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { Gateway } from '../serving/gateway.js';
import { Inference, prefixCacheNamespace } from '../serving/inference.js';
import { createHarvestService, type HarvestService } from '../harvest/service.js';
import { createHttpServer } from '../http/app.js';
import routes from '../../plugins/index.js';
import { resolveModelPackage } from '../model/model-source.js';
import { readManifest } from '../model/package-files.js';
import { Metrics } from '../core/metrics.js';
import { startMetricsListener } from '../http/metrics-listener.js';
import { RateLimiter } from '../serving/rate-limit.js';
import { Scheduler } from '../serving/scheduler.js';
import { Store } from '../store/store.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { PromptEncoder } from '../model/prompt-encoder.js';
import { readSamplingDefaults } from '../model/generation-defaults.js';

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
  // Known once the model package is resolved: uploaded carry-ons are checked against it.
  let base: BaseModelInfo | null = null;
  let baseDir: string | null = null;
  const baseModel = (): BaseModelInfo => {
    if (base) return base;
    throw new ApiError('model_loading', gateway.failure ? `The base model failed to load: ${gateway.failure}` : 'The base model is still loading; retry shortly.', {
      headers: { 'retry-after': '5' },
    });
  };
  const prefixCacheScope = config.CARRYON_PREFIX_CACHE_SHARED ? 'shared' : 'tenant';
  const scheduler = new Scheduler({ maxLive: config.CARRYON_MAX_LIVE_SEQUENCES, maxWaiting: config.CARRYON_MAX_WAITING });
  const modelName = config.CARRYON_MODEL_NAME || nameFromSetting(config.CARRYON_MODEL);
  const gateway: Gateway = new Gateway(
    modelName,
    scheduler,
    { maxN: config.CARRYON_MAX_N, maxEmbeddingInputs: config.CARRYON_MAX_EMBEDDING_INPUTS, maxPrompts: config.CARRYON_MAX_PROMPTS },
    store.carryOns,
  );
  gateway.disk = disk;
  // The shard index and admin routes work at once; the writer starts when the base's fingerprint is known.
  const harvest = createHarvestService(config, store, () => app.log);
  const admin = await createAdminServices(store, {
    dataDir: config.dataDir,
    baseModel,
    maxCarryOnBytes: config.CARRYON_MAX_CARRYON_BYTES,
    checkTimeoutMs: config.CARRYON_CARRYON_CHECK_TIMEOUT_MS,
    diskFull: () => disk.full,
    harvest,
    prefixCache: {
      clear: (tenantId) => {
        if (gateway.status !== 'ready') return; // no engine yet: nothing cached
        gateway.model().engine.clearPrefixCache(tenantId === undefined ? undefined : prefixCacheNamespace(tenantId, prefixCacheScope));
      },
    },
    training: {
      base: () => (base && baseDir ? { dir: baseDir, fingerprint: base.fingerprint } : null),
      maxQueued: config.CARRYON_TRAINING_MAX_QUEUED,
      timeoutMs: config.CARRYON_TRAINING_TIMEOUT_MS,
      threads: config.CARRYON_TRAINING_THREADS,
      maxLogBytes: 4 * 1024 * 1024,
    },
  });
  gateway.rateLimiter = new RateLimiter({ requestsPerMinute: config.CARRYON_RATE_LIMIT_RPM, tokensPerMinute: config.CARRYON_RATE_LIMIT_TPM });
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
  await store.listen((msg) => app.log.warn(msg));
  gateway.database = store.health;
  const metricsServer = config.CARRYON_METRICS_PORT > 0 ? await startMetricsListener(metrics, config.HOST, config.CARRYON_METRICS_PORT) : null;
  if (synced.inserted + synced.revoked > 0) app.log.info(synced, 'configured API keys synced to the store');
  if (syncProblem) app.log.error({ err: syncProblem }, 'the disk is full: started without syncing the configured API keys');
  if (!config.CARRYON_ADMIN_KEY) app.log.warn(`no CARRYON_ADMIN_KEY set: using the generated key in ${adminKeyPath(config.dataDir)}`);

  let engine: Engine | null = null;
  let inference: Inference | null = null;
  let encoder: PromptEncoder | null = null;
  const ready = (async () => {
    const dir = await resolveModelPackage({
      model: config.CARRYON_MODEL,
      tokenizer: config.CARRYON_TOKENIZER,
      dataDir: config.dataDir,
      downloadBaseUrl: config.CARRYON_DOWNLOAD_BASE_URL,
      sharedDir: config.sharedModelDir,
      quantize: config.CARRYON_QUANTIZE === 'q4_0' ? 'q4_0' : undefined,
      log: (m) => app.log.info(m),
    });
    base = readBaseModelInfo(dir);
    baseDir = dir;
    const harvestSink = await harvest.start(base.fingerprint);
    engine = await Engine.start({
      modelDir: dir,
      provider: config.CARRYON_EXECUTION_PROVIDER,
      threads: config.CARRYON_THREADS,
      prefillChunk: config.CARRYON_PREFILL_CHUNK,
      prefillSliceMs: config.CARRYON_PREFILL_SLICE_MS,
      contextLength: config.CARRYON_CONTEXT_LENGTH,
      kvBudgetBytes: config.CARRYON_KV_CACHE_BYTES,
      prefixCache: { blockTokens: config.CARRYON_PREFIX_CACHE_BLOCK_TOKENS, budgetBytes: config.CARRYON_PREFIX_CACHE_BYTES },
    });
    engine.watchSteps(config.CARRYON_ENGINE_STEP_TIMEOUT_MS, (message) => {
      gateway.setFailed(message);
      app.log.error(message);
    });
    engine.onStep((step) => metrics.observeStep(step));
    const tokenizer = ModelTokenizer.load(dir, engine.info.vocabSize);
    const chatTemplate = new ChatTemplate(tokenizer.chatTemplate, tokenizer.specialTokens);
    const contextLength = engine.info.contextLength;
    const registry = new CarryOnRegistry({
      loader: engine,
      budgetBytes: config.CARRYON_CARRY_ON_BUDGET_BYTES,
      pinned: config.pinnedCarryOns,
      log: (obj, msg) => app.log.info(obj, msg),
      metrics,
    });
    const catalog = gateway.catalog;
    catalog?.onChange((change) => registry.onCatalogChange(change));
    catalog?.onResync?.(() => {
      registry
        .reconcile(async (r) => (await catalog.resolve(r.tenantId, r.carryOnId, String(r.version))) !== null)
        .catch((err: Error) => app.log.warn({ err: err.message }, 'carry-on registry: reconcile after a change-feed gap failed; retried on the next'));
    });
    inference = new Inference({
      engine,
      scheduler,
      router: gateway.router,
      registry,
      tokenizer,
      contextLength,
      hiddenSize: engine.info.hiddenSize,
      timeoutMs: config.CARRYON_REQUEST_TIMEOUT_MS,
      harvestSink,
      rateLimiter: gateway.rateLimiter,
      metrics,
      prefixCacheScope,
    });
    encoder = new PromptEncoder(tokenizer, { modelDir: dir, contextLength });
    gateway.setReady({
      engine, tokenizer, encoder, chatTemplate, inference, contextLength, hiddenSize: engine.info.hiddenSize, registry,
      samplingDefaults: readSamplingDefaults(dir),
    });
    app.log.info({ model: modelName, package: dir, fingerprint: readManifest(dir).fingerprint }, 'model ready');
  })().catch((err: Error) => {
    gateway.setFailed(err.message);
    app.log.error({ err }, 'model failed to load');
    throw err;
  });
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
      gateway.status = 'stopping';
      scheduler.drain();
      const gen = inference;
      if (gen && !(await gen.drain(config.CARRYON_DRAIN_TIMEOUT_MS))) {
        app.log.warn({ running: gen.activeRuns }, 'drain deadline reached: ending running generations');
        gen.endAll();
        await gen.drain(5_000);
      }
      // Builds and training are killed, not awaited: an upload waiting on one then fails at once.
      await admin.close();
      await app.close();
      auth.close();
      await new Promise<void>((r) => (metricsServer ? metricsServer.close(() => r()) : r()));
      await encoder?.close();
      await engine?.close();
      await harvest.close(); // after the engine, whose last captures reach the writer before it stops
      disk.stop();
      await store.end();
    },
  };
}

function nameFromSetting(model: string): string {
  if (!model) return 'stories260K';
  const base = path.basename(path.resolve(model));
  return base.replace(/\.(gguf|bin)$/i, '');
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
