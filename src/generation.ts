import { AsyncQueue } from './async-queue.js';
import type { CarryOnVersionRecord } from './carryon/catalog.js';
import type { CarryOnLease, CarryOnRegistry } from './carryon/registry.js';
import { toHarvestedSequence } from './harvest/capture-to-sequence.js';
import type { HarvestPolicy, HarvestSink } from './harvest/types.js';
import type { Metrics } from './metrics.js';
import type { Engine } from './engine/engine.js';
import type { CarryOnUse, FinishReason, SamplingParams } from './engine/protocol.js';
import { ApiError } from './errors.js';
import type { Scheduler } from './scheduler.js';
import { TextAssembler } from './text-assembler.js';
import type { ModelTokenizer } from './tokenizer.js';

export interface GenerationRequest {
  promptIds: number[];
  /** Which request field the prompt came from, for error messages ('messages' or 'prompt'). */
  promptParam: string;
  n: number;
  /** null: as many as the context allows. */
  maxTokens: number | null;
  maxTokensParam: string;
  sampling: Omit<SamplingParams, 'maxTokens' | 'stopTokenIds'>;
  stop: string[];
  /** The carry-on to compose with the base, and its α; null: the base alone. */
  carryOn: { record: CarryOnVersionRecord; alpha: number } | null;
  /** Set when this request was sampled for harvesting: what to keep, and how to label it. */
  harvest: { policy: HarvestPolicy; requestId: string; tenantId: string | null } | null;
  /** The caller's tenant: admission is fair between tenants. */
  tenant: string | null;
  /** Aborts when the client goes away. */
  signal: AbortSignal;
  /** Called once with the final usage (rate-limit token charging). */
  onFinish?: (usage: Usage) => void;
}

export interface TokenDetail {
  id: number;
  logprob: number;
  top: Array<[number, number]>;
}

export interface ChoiceDelta {
  index: number;
  text: string;
  /** Tokens whose text is (part of) this delta; filled only when logprobs were asked for. */
  tokens: TokenDetail[];
  finishReason?: FinishReason;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface GenerationDeps {
  engine: Engine;
  scheduler: Scheduler;
  tokenizer: ModelTokenizer;
  contextLength: number;
  timeoutMs: number;
  registry: CarryOnRegistry;
  /** Null when harvesting is off for this gateway. */
  harvestSink: HarvestSink | null;
  hiddenSize: number;
  /** Null in contexts that do not export metrics (benchmarks). */
  metrics: Metrics | null;
}

/**
 * Serving logic shared by /v1/completions and /v1/chat/completions: admission, context-length
 * checks, one engine sequence per choice, text assembly with stop strings, usage and cancellation.
 */
export class Generator {
  /** Runs still producing tokens, so shutdown can wait for them or end them cleanly. */
  private readonly active = new Set<GenerationRun>();

  constructor(private readonly deps: GenerationDeps) {}

  get activeRuns(): number {
    return this.active.size;
  }

  /** Resolves when no run is active, or after `deadlineMs`, whichever is first; true when all finished. */
  async drain(deadlineMs: number): Promise<boolean> {
    const end = Date.now() + deadlineMs;
    while (this.active.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return this.active.size === 0;
  }

  /** Past the drain deadline: every open choice ends now with finish_reason "length", a proper last chunk. */
  endAll(): void {
    for (const run of [...this.active]) run.expire();
  }

  /** Validates and admits; throws ApiError before anything is sent to the client. */
  async start(req: GenerationRequest): Promise<GenerationRun> {
    const maxTokens = this.resolveMaxTokens(req);
    const queuedAt = performance.now();
    const release = await this.deps.scheduler.acquire(req.n, req.signal, req.tenant);
    this.deps.metrics?.queueTime.observe((performance.now() - queuedAt) / 1000);
    let lease: CarryOnLease | null = null;
    try {
      // Lazy load: the first request for a carry-on version waits for it; later ones find it resident.
      if (req.carryOn) lease = await this.deps.registry.acquire(req.carryOn.record);
    } catch (err) {
      release();
      throw err;
    }
    const run: GenerationRun = new GenerationRun(this.deps, req, maxTokens, () => {
      this.active.delete(run);
      lease?.release();
      release();
    }, lease ? { key: lease.key, alpha: req.carryOn!.alpha } : null, queuedAt);
    this.active.add(run);
    return run;
  }

  private resolveMaxTokens(req: GenerationRequest): number {
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

/** One admitted request: its choices stream out of `deltas()`; `usage` is final once that ends. */
export class GenerationRun {
  readonly usage: Usage;
  private readonly queue = new AsyncQueue<ChoiceDelta>();
  private readonly seqIds: number[] = [];
  private open: number;
  private readonly finished = new Set<number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly deps: GenerationDeps,
    private readonly req: GenerationRequest,
    maxTokens: number,
    private readonly release: () => void,
    carryOn: CarryOnUse | null,
    /** When the request arrived (before queueing): TTFT and e2e latency count from here, as vLLM's do. */
    private readonly startedAt: number,
  ) {
    this.usage = { prompt_tokens: req.promptIds.length, completion_tokens: 0, total_tokens: req.promptIds.length };
    this.open = req.n;
    const context = req.promptIds.slice(-6);
    const stopTokenIds = deps.tokenizer.eosId >= 0 ? [deps.tokenizer.eosId] : [];
    for (let index = 0; index < req.n; index++) {
      const assembler = new TextAssembler(deps.tokenizer, context, req.stop);
      // n > 1 with a seed: each choice gets its own, derived, seed so choices differ but stay reproducible.
      const seed = req.sampling.seed === null ? null : (req.sampling.seed + index * 0x9e3779b1) >>> 0;
      const params: SamplingParams = { ...req.sampling, seed, maxTokens, stopTokenIds };
      const seqId = deps.engine.submit(req.promptIds, params, {
        onEvent: (ev) => {
          this.observeToken(index, ev.token >= 0, ev.finish);
          const delta: ChoiceDelta = { index, text: '', tokens: [] };
          if (ev.token >= 0) {
            this.usage.completion_tokens++;
            this.usage.total_tokens++;
            const isStopToken = ev.finish === 'stop' && stopTokenIds.includes(ev.token);
            if (!isStopToken) {
              const { delta: text, stop } = assembler.push(ev.token);
              delta.text = text;
              if (req.sampling.topLogprobs >= 0) delta.tokens.push({ id: ev.token, logprob: ev.logprob ?? 0, top: ev.top ?? [] });
              if (stop) {
                deps.engine.cancel(seqId);
                delta.finishReason = 'stop';
              }
            }
          }
          if (!delta.finishReason && ev.finish) {
            delta.text += assembler.flush();
            delta.finishReason = ev.finish;
          }
          this.queue.push(delta);
          if (delta.finishReason) this.choiceDone(index);
        },
        onError: (message) => this.fail(new ApiError('internal_error', message)),
        onCapture: (capture) => this.harvest(capture, index),
      }, carryOn, deps.harvestSink && req.harvest ? req.harvest.policy.layers : null);
      this.seqIds.push(seqId);
    }
    this.timer = setTimeout(() => this.expire(), deps.timeoutMs);
    req.signal.addEventListener('abort', () => this.cancel(), { once: true });
  }

  private readonly lastTokenAt = new Map<number, number>();

  /** TTFT for a choice's first token, inter-token latency after, and the finish reason. */
  private observeToken(index: number, isToken: boolean, finish: FinishReason | undefined): void {
    const m = this.deps.metrics;
    if (!m) return;
    const now = performance.now();
    const label = m.carryOnLabel(this.req.carryOn?.record.carryOnId ?? null);
    if (isToken) {
      const last = this.lastTokenAt.get(index);
      if (last === undefined) m.timeToFirstToken.observe((now - this.startedAt) / 1000);
      else m.interTokenLatency.observe((now - last) / 1000);
      this.lastTokenAt.set(index, now);
      m.generationTokens.inc({ carry_on: label });
    }
    if (finish) m.requestsFinished.inc({ finished_reason: finish, carry_on: label });
  }

  /** Hands a finished choice's hidden states to the harvest sink; a full queue drops it there, never waits. */
  private harvest(capture: Parameters<typeof toHarvestedSequence>[0], index: number): void {
    const h = this.req.harvest;
    if (!h || !this.deps.harvestSink) return;
    const seq = toHarvestedSequence(capture, h.policy.keep, this.deps.hiddenSize, {
      requestId: `${h.requestId}#${index}`,
      tenantId: h.tenantId,
      carryOnId: this.req.carryOn?.record.carryOnId ?? null,
    });
    if (seq) this.deps.harvestSink.offer(seq);
  }

  deltas(): AsyncIterable<ChoiceDelta> {
    return this.queue;
  }

  /** Client went away: stop every sequence at the next step and free its slots. */
  cancel(): void {
    if (this.open === 0) return;
    this.open = 0;
    this.finish();
    this.queue.end();
  }

  /** Past the deadline: end every open choice with finish_reason "length" rather than hang. */
  expire(): void {
    for (let index = 0; index < this.req.n; index++) {
      if (!this.finished.has(index)) this.queue.push({ index, text: '', tokens: [], finishReason: 'length' });
    }
    this.cancel();
  }

  private choiceDone(index: number): void {
    if (this.open === 0 || this.finished.has(index)) return;
    this.finished.add(index);
    if (--this.open === 0) {
      this.finish();
      this.queue.end();
    }
  }

  private fail(err: Error): void {
    if (this.open === 0) return;
    this.open = 0;
    this.finish();
    this.queue.fail(err);
  }

  private finish(): void {
    clearTimeout(this.timer);
    this.req.onFinish?.(this.usage);
    const m = this.deps.metrics;
    if (m) {
      m.e2eLatency.observe((performance.now() - this.startedAt) / 1000);
      m.promptTokens.inc({ carry_on: m.carryOnLabel(this.req.carryOn?.record.carryOnId ?? null) }, this.usage.prompt_tokens);
    }
    for (const id of this.seqIds) this.deps.engine.cancel(id);
    this.release();
  }
}
