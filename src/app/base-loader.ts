import { readBaseModelInfo, type BaseModelInfo } from '../admin/base-model.js';
import { Engine } from '../engine/engine.js';
import type { HarvestReplay } from '../harvest/replay.js';
import type { HarvestSink } from '../harvest/types.js';
import { ChatTemplate } from '../model/chat-template.js';
import { readSamplingDefaults } from '../model/generation-defaults.js';
import { resolveModelPackage } from '../model/model-source.js';
import { PromptEncoder } from '../model/prompt-encoder.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import type { Metrics } from '../core/metrics.js';
import type { CarryOnGraphBucket } from '../objects/carry-on-graph-bucket.js';
import { CarryOnRegistry } from '../serving/carry-on-registry.js';
import type { Gateway, ModelServices } from '../serving/gateway.js';
import { Inference } from '../serving/inference.js';
import type { Config } from './config.js';
import type { BaseModelSetting } from './base-models-config.js';

/** A base whose package is found (imported if need be): what uploads are checked against, before its engine runs. */
export interface ResolvedBase {
  setting: BaseModelSetting;
  dir: string;
  info: BaseModelInfo;
}

export interface BaseLoadContext {
  config: Config & { sharedModelDir?: string };
  gateway: Gateway;
  /** Several bases: each imports into DATA_DIR/models/<its name>, so two sources with one file name never collide. */
  several: boolean;
  log: { info(obj: object | string, msg?: string): void; warn(obj: object, msg: string): void; error(msg: string): void };
  /** Shared carry-on graphs (CARRYON_OBJECT_STORE_URL): a version stored on another replica is fetched from it on first use. */
  graphBucket?: CarryOnGraphBucket | null;
  /** The package folder of the served base with this fingerprint: a mixture carry-on runs those bodies too. */
  baseDir?: (fingerprint: string) => string | null;
}

/** Finds or imports a base's package and reads what carry-ons are checked against. */
export async function resolveBase(ctx: Pick<BaseLoadContext, 'config' | 'several' | 'log'>, setting: BaseModelSetting): Promise<ResolvedBase> {
  const { config } = ctx;
  const dir = await resolveModelPackage({
    model: setting.source,
    tokenizer: setting.tokenizer,
    dataDir: config.dataDir,
    downloadBaseUrl: config.CARRYON_DOWNLOAD_BASE_URL,
    sharedDir: config.sharedModelDir,
    quantize: config.CARRYON_QUANTIZE === 'q4_0' ? 'q4_0' : undefined,
    folder: ctx.several ? setting.name.replaceAll('/', '_') : undefined,
    log: (m) => ctx.log.info(m),
  });
  return { setting, dir, info: readBaseModelInfo(dir) };
}

/**
 * Starts one base's engine (its own worker, KV budget and prefix cache) and the services over it:
 * tokenizer, chat template, prompt encoder, carry-on registry and inference. The scheduler and rate
 * limiter are the gateway's, shared by every base. `metrics` null: this base's engine and carry-on
 * figures are not exported (the gauges describe the default base only).
 */
export async function startBase(
  ctx: BaseLoadContext,
  base: ResolvedBase,
  shared: {
    harvestSink: HarvestSink | null;
    harvestReplay: HarvestReplay | null;
    metrics: Metrics;
    engineMetrics: boolean;
    prefixCacheScope: 'tenant' | 'shared';
  },
): Promise<{ engine: Engine; services: ModelServices }> {
  const { config, gateway } = ctx;
  const { dir } = base;
  const name = base.setting.name;
  const engine = await Engine.start({
    modelDir: dir,
    provider: config.CARRYON_EXECUTION_PROVIDER,
    threads: config.CARRYON_THREADS,
    prefillChunk: config.CARRYON_PREFILL_CHUNK,
    prefillSliceMs: config.CARRYON_PREFILL_SLICE_MS,
    contextLength: config.CARRYON_CONTEXT_LENGTH,
    kvBudgetBytes: config.CARRYON_KV_CACHE_BYTES,
    prefixCache: { blockTokens: config.CARRYON_PREFIX_CACHE_BLOCK_TOKENS, budgetBytes: config.CARRYON_PREFIX_CACHE_BYTES },
  });
  try {
    engine.watchSteps(config.CARRYON_ENGINE_STEP_TIMEOUT_MS, (message) => {
      gateway.setFailed(message, name);
      ctx.log.error(message);
    });
    if (shared.engineMetrics) engine.onStep((step) => shared.metrics.observeStep(step));
    const tokenizer = ModelTokenizer.load(dir, engine.info.vocabSize);
    const chatTemplate = new ChatTemplate(tokenizer.chatTemplate, tokenizer.specialTokens);
    const contextLength = engine.info.contextLength;
    const graphBucket = ctx.graphBucket;
    const registry = new CarryOnRegistry({
      loader: engine,
      budgetBytes: config.CARRYON_CARRY_ON_BUDGET_BYTES,
      pinned: config.pinnedCarryOns,
      log: (obj, msg) => ctx.log.info(obj, msg),
      metrics: shared.engineMetrics ? shared.metrics : null,
      fetchGraph: graphBucket ? (record) => graphBucket.fetch(record) : undefined,
      baseDir: ctx.baseDir,
    });
    const catalog = gateway.catalog;
    catalog?.onChange((change) => registry.onCatalogChange(change));
    // After a gap in the change feed (PostgreSQL's LISTEN reconnected), versions deleted meanwhile leave.
    catalog?.onResync?.(() => {
      registry
        .reconcile(async (r) => (await catalog.resolve(r.tenantId, r.carryOnId, String(r.version))) !== null)
        .catch((err: Error) => ctx.log.warn({ err: err.message }, 'carry-on registry: reconcile after a change-feed gap failed; retried on the next'));
    });
    const inference = new Inference({
      engine,
      scheduler: gateway.scheduler,
      router: gateway.router.forBase(name),
      registry,
      tokenizer,
      contextLength,
      hiddenSize: engine.info.hiddenSize,
      timeoutMs: config.CARRYON_REQUEST_TIMEOUT_MS,
      harvestSink: shared.harvestSink,
      harvestReplay: shared.harvestReplay,
      base: { name, fingerprint: base.info.fingerprint },
      rateLimiter: gateway.rateLimiter,
      metrics: shared.metrics,
      prefixCacheScope: shared.prefixCacheScope,
    });
    const encoder = new PromptEncoder(tokenizer, { modelDir: dir, contextLength });
    const services: ModelServices = {
      engine, tokenizer, encoder, chatTemplate, inference, contextLength, hiddenSize: engine.info.hiddenSize, registry,
      samplingDefaults: readSamplingDefaults(dir),
    };
    return { engine, services };
  } catch (err) {
    await engine.close();
    throw err;
  }
}
