import { ApiError } from '../core/errors.js';
import type { Metrics } from '../core/metrics.js';
import type { Engine } from '../engine/engine.js';
import type { HarvestReplay } from '../harvest/replay.js';
import type { HarvestSink } from '../harvest/types.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { CarryOnLease, CarryOnRegistry } from './carry-on-registry.js';
import { GenerationRun, type GenerationPlan, type RunDeps } from './generation.js';
import type { BaseRouter, Caller, Route } from './model-routing.js';
import type { RateLimiter } from './rate-limit.js';
import type { Scheduler } from './scheduler.js';
import { vocabularyOf } from './vocabulary.js';

/** A generation as the protocol layer asks for it: token ids in, names and numbers only. */
export interface GenerateRequest extends Omit<GenerationPlan, 'carryOn' | 'harvest' | 'tenant' | 'maxTokens' | 'cacheNamespace'> {
  /** Where the request's `model` routed (the gateway resolves it once per request): this base, and the carry-on version or none. */
  route: Route;
  /** null: as many as the context allows. */
  maxTokens: number | null;
  /** The carry-on's α for this request; null: the version's default. */
  alpha: number | null;
  caller: Caller;
  /** The request asked not to be harvested (a body field or header). */
  harvestOptOut: boolean;
  /** The response id, which labels harvested sequences. */
  responseId: string;
}

export interface EmbedRequest {
  /** Token ids of each input. */
  inputs: number[][];
  model: string;
  caller: Caller;
  signal: AbortSignal;
}

export interface EmbedResult {
  vectors: Float32Array[];
  promptTokens: number;
}

export interface InferenceDeps {
  engine: Engine;
  scheduler: Scheduler;
  /** Routing bound to this inference service's base. */
  router: BaseRouter;
  registry: CarryOnRegistry;
  tokenizer: ModelTokenizer;
  contextLength: number;
  hiddenSize: number;
  /** Longest a request may run; a generation then ends with finish_reason "length". */
  timeoutMs: number;
  /** Null when harvesting is off for this gateway. */
  harvestSink: HarvestSink | null;
  /** Replays sampled sequences on the other bases a policy names; null: none. */
  harvestReplay?: HarvestReplay | null;
  /** This service's base: its name and fingerprint. */
  base: { name: string; fingerprint: string };
  /** Per-key token budgets: each request's tokens are charged here when it ends. Null: no limits. */
  rateLimiter: RateLimiter | null;
  /** Null in contexts that do not export metrics (benchmarks). */
  metrics: Metrics | null;
  /** The harvest sample draw; injectable so tests can decide it. */
  random?: () => number;
  /**
   * Whose prompts may share prefix-cache blocks: each tenant only its own (a hit across tenants
   * would tell one, through timing, what another sent), or everyone. Default 'tenant'.
   */
  prefixCacheScope?: 'tenant' | 'shared';
}

/** The prefix-cache namespace of a tenant's requests (see InferenceDeps.prefixCacheScope). */
export function prefixCacheNamespace(tenantId: string | null, scope: 'tenant' | 'shared'): string {
  if (scope === 'shared') return 'shared';
  return tenantId === null ? 'anonymous' : `tenant:${tenantId}`;
}

/**
 * The one way into the model, for every surface (TGI's `Infer`): it routes the `model` name to the
 * base or a carry-on version, validates lengths, admits the request (scheduler slots, fair between
 * tenants), leases the carry-on, decides whether the request is harvested, runs it on the engine,
 * and charges its tokens when it ends. Protocol modules only translate to and from it.
 */
export class Inference {
  /** Runs still producing tokens, so shutdown can wait for them or end them cleanly. */
  private readonly active = new Set<GenerationRun>();
  /** Embedding requests in flight, so shutdown waits for them too. */
  private embedding = 0;

  /** What each run needs of the engine side (admission and leases stay here). */
  private readonly runDeps: RunDeps;

  constructor(private readonly deps: InferenceDeps) {
    const { engine, tokenizer, timeoutMs, harvestSink, hiddenSize, metrics, base } = deps;
    this.runDeps = { engine, tokenizer, timeoutMs, harvestSink, harvestReplay: deps.harvestReplay ?? null, base, hiddenSize, metrics };
    // The tokens' bytes for structured outputs, sent to the engine once, now: no request waits for them.
    engine.useVocabulary(() => vocabularyOf(tokenizer));
  }

  get activeRuns(): number {
    return this.active.size + this.embedding;
  }

  /** Resolves when nothing is in flight, or after `deadlineMs`; true when all finished. */
  async drain(deadlineMs: number): Promise<boolean> {
    const end = Date.now() + deadlineMs;
    while (this.activeRuns > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return this.activeRuns === 0;
  }

  /** Past the drain deadline: every open choice ends now with finish_reason "length", a proper last chunk. */
  endAll(): void {
    for (const run of [...this.active]) run.expire();
  }

  /** Routes, validates and admits; throws ApiError before anything is sent to the client. */
  async generate(req: GenerateRequest): Promise<GenerationRun> {
    const record = this.deps.router.check(req.route);
    const maxTokens = this.resolveMaxTokens(req);
    const plan: GenerationPlan = {
      ...req,
      maxTokens,
      carryOn: record ? { record, alpha: req.alpha ?? record.manifest.default_alpha } : null,
      harvest: this.harvestDecision(req),
      tenant: req.caller.tenantId,
      cacheNamespace: this.cacheNamespace(req.caller),
    };
    const queuedAt = performance.now();
    const release = await this.deps.scheduler.acquire(req.n, req.signal, req.caller.tenantId);
    this.deps.metrics?.queueTime.observe((performance.now() - queuedAt) / 1000);
    let lease: CarryOnLease | null = null;
    try {
      // Lazy load: the first request for a carry-on version waits for it; later ones find it resident.
      if (plan.carryOn) lease = await this.deps.registry.acquire(plan.carryOn.record);
    } catch (err) {
      release();
      throw err;
    }
    const run: GenerationRun = new GenerationRun(this.runDeps, plan, {
      carryOn: lease && plan.carryOn ? { key: lease.key, alpha: plan.carryOn.alpha } : null,
      startedAt: queuedAt,
      onEnd: (usage) => {
        this.active.delete(run);
        lease?.release();
        release();
        this.deps.rateLimiter?.charge(req.caller.keyId, usage.total_tokens);
      },
    });
    this.active.add(run);
    return run;
  }

  /**
   * Embeddings, served by the base alone (a carry-on corrects next-token predictions, not the
   * representation). Each input is an engine sequence: admitted under the same scheduler and KV
   * budget as generations, at most `maxLive` of them at once.
   */
  async embed(req: EmbedRequest): Promise<EmbedResult> {
    this.deps.router.requireBase(req.model, req.caller);
    const vocab = this.deps.tokenizer.vocabSize;
    req.inputs.forEach((ids, i) => {
      if (ids.length === 0) throw new ApiError('invalid_value', `Input ${i} is empty.`, { param: 'input' });
      if (ids.length > this.deps.contextLength) {
        throw new ApiError('context_length_exceeded', `Input ${i} has ${ids.length} tokens; this model's maximum context length is ${this.deps.contextLength} tokens.`, {
          param: 'input',
        });
      }
      if (ids.some((t) => t >= vocab)) throw new ApiError('invalid_value', `Input ${i} has a token id outside the vocabulary.`, { param: 'input' });
    });
    const width = Math.min(req.inputs.length, this.deps.scheduler.maxLive);
    const release = await this.deps.scheduler.acquire(width, req.signal, req.caller.tenantId);
    this.embedding++;
    const promptTokens = req.inputs.reduce((s, ids) => s + ids.length, 0);
    try {
      const vectors = await this.runEmbeddings(req.inputs, width, req.signal);
      this.deps.rateLimiter?.charge(req.caller.keyId, promptTokens);
      this.deps.metrics?.promptTokens.inc({ carry_on: this.deps.metrics.carryOnLabel(null) }, promptTokens);
      return { vectors, promptTokens };
    } finally {
      this.embedding--;
      release();
    }
  }

  /** Runs every input, `width` at a time; the first failure, timeout or abort cancels the rest. */
  private runEmbeddings(inputs: number[][], width: number, signal: AbortSignal): Promise<Float32Array[]> {
    const { engine, timeoutMs } = this.deps;
    const vectors: Float32Array[] = new Array<Float32Array>(inputs.length);
    const live = new Set<number>();
    let next = 0;
    let done = 0;
    return new Promise((resolve, reject) => {
      let settled = false;
      const stop = (err: Error | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        for (const id of live) engine.cancel(id);
        if (err) reject(err);
        else resolve(vectors);
      };
      const onAbort = () => stop(new ApiError('request_timeout', 'The request was cancelled.'));
      const timer = setTimeout(() => stop(new ApiError('request_timeout', `The embeddings did not finish within ${timeoutMs} ms.`)), timeoutMs);
      signal.addEventListener('abort', onAbort, { once: true });
      const launch = () => {
        while (!settled && live.size < width && next < inputs.length) {
          const index = next++;
          const seqId = engine.submitEmbedding(inputs[index], {
            onEvent: (ev) => {
              if (!ev.embedding) return;
              live.delete(seqId);
              vectors[index] = ev.embedding;
              if (++done === inputs.length) stop(null);
              else launch();
            },
            onError: (message) => stop(new ApiError('internal_error', message)),
          });
          live.add(seqId);
        }
      };
      if (signal.aborted) onAbort();
      else launch();
    });
  }

  private cacheNamespace(caller: Caller): string {
    return prefixCacheNamespace(caller.tenantId, this.deps.prefixCacheScope ?? 'tenant');
  }

  /** Harvested only when the caller's key opted in, the sample draw says so, and the request did not opt out. */
  private harvestDecision(req: GenerateRequest): GenerationPlan['harvest'] {
    const policy = req.caller.harvest;
    if (!policy || !this.deps.harvestSink || req.harvestOptOut) return null;
    if (!((this.deps.random ?? Math.random)() < policy.sampleRate)) return null;
    return { policy, requestId: req.responseId, tenantId: req.caller.tenantId };
  }

  private resolveMaxTokens(req: GenerateRequest): number {
    const ctx = this.deps.contextLength;
    const prompt = req.promptIds.length;
    if (prompt >= ctx) {
      throw new ApiError(
        'context_length_exceeded',
        `This model's maximum context length is ${ctx} tokens. However, your ${req.promptParam} resulted in ${prompt} tokens, leaving no room for a completion.`,
        { param: req.promptParam },
      );
    }
    if (req.maxTokens === null) return ctx - prompt;
    if (prompt + req.maxTokens > ctx) {
      throw new ApiError(
        'context_length_exceeded',
        `This model's maximum context length is ${ctx} tokens. However, you requested ${prompt + req.maxTokens} tokens (${prompt} in the ${req.promptParam}, ${req.maxTokens} in the completion). Please reduce the length of the ${req.promptParam} or completion.`,
        { param: req.maxTokensParam },
      );
    }
    return req.maxTokens;
  }
}
