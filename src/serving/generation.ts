import { AsyncQueue } from '../core/async-queue.js';
import type { CarryOnVersionRecord } from '../carryon/catalog.js';
import { toHarvestedSequence } from '../harvest/capture-to-sequence.js';
import type { HarvestReplay } from '../harvest/replay.js';
import type { HarvestPolicy, HarvestSink } from '../harvest/types.js';
import type { Metrics } from '../core/metrics.js';
import type { Engine } from '../engine/engine.js';
import type { CarryOnUse, FinishReason, SamplingParams, TokenEvent } from '../engine/worker-messages.js';
import type { ResponseFormatSpec } from '../engine/structured/token-mask.js';
import { ApiError } from '../core/errors.js';
import { TextAssembler } from './text-assembler.js';
import type { ModelTokenizer } from '../model/tokenizer.js';

/** An admitted generation, resolved by the inference service: what to run and for whom. */
export interface GenerationPlan {
  promptIds: number[];
  /** Which request field the prompt came from, for error messages ('messages' or 'prompt'). */
  promptParam: string;
  n: number;
  /** Tokens per choice at most (already checked against the context). */
  maxTokens: number;
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
  /** The response's index of this run's first choice (a request with several prompts runs one per prompt). */
  choiceOffset?: number;
  /** Structured output: every choice follows this grammar (see src/engine/structured); absent or null: free text. */
  format?: ResponseFormatSpec | null;
  /** Prompts share prefix-cache blocks only within one namespace (see Inference); null: not cached. */
  cacheNamespace: string | null;
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
  /** OpenAI's field: prompt tokens served from the prefix cache. */
  prompt_tokens_details: { cached_tokens: number };
}

/** What a run needs of the engine side; admission and leases are the inference service's. */
export interface RunDeps {
  engine: Engine;
  tokenizer: ModelTokenizer;
  timeoutMs: number;
  /** Null when harvesting is off for this gateway. */
  harvestSink: HarvestSink | null;
  /** Runs a sampled sequence on the other bases its policy names; null: only the serving base's states are kept. */
  harvestReplay: HarvestReplay | null;
  /** The serving base: its name (as policies name it) and fingerprint (written into its shards). */
  base: { name: string; fingerprint: string };
  hiddenSize: number;
  /** Null in contexts that do not export metrics (benchmarks). */
  metrics: Metrics | null;
}

/** How the inference service hands a run its resources, and takes them back. */
export interface RunBinding {
  /** The leased carry-on session and its α; null: the base alone. */
  carryOn: CarryOnUse | null;
  /** When the request arrived (before queueing): TTFT and e2e latency count from here, as vLLM's do. */
  startedAt: number;
  /** Called once when the run ends, however it ends, with the final usage: release and charge here. */
  onEnd: (usage: Usage) => void;
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
    private readonly deps: RunDeps,
    private readonly req: GenerationPlan,
    private readonly binding: RunBinding,
  ) {
    const { carryOn } = binding;
    const maxTokens = req.maxTokens;
    this.usage = { prompt_tokens: req.promptIds.length, completion_tokens: 0, total_tokens: req.promptIds.length, prompt_tokens_details: { cached_tokens: 0 } };
    this.open = req.n;
    const context = req.promptIds.slice(-6);
    const stopTokenIds = deps.tokenizer.stopTokenIds;
    for (let index = 0; index < req.n; index++) {
      const assembler = new TextAssembler(deps.tokenizer, context, req.stop);
      // n > 1 with a seed: each choice gets its own, derived, seed so choices differ but stay reproducible.
      const seed = req.sampling.seed === null ? null : (req.sampling.seed + index * 0x9e3779b1) >>> 0;
      const params: SamplingParams = { ...req.sampling, seed, maxTokens, stopTokenIds };
      const seqId = deps.engine.submit(req.promptIds, params, {
        onEvent: (ev) => this.onToken(index, ev, assembler, stopTokenIds),
        onError: (message) => this.fail(new ApiError('internal_error', message)),
        onCapture: (capture) => this.harvest(capture, index),
      }, carryOn, deps.harvestSink && req.harvest ? req.harvest.policy.layers : null, req.format ?? null, req.cacheNamespace);
      this.seqIds.push(seqId);
    }
    this.timer = setTimeout(() => this.expire(), deps.timeoutMs);
    req.signal.addEventListener('abort', () => this.cancel(), { once: true });
  }

  private readonly lastTokenAt = new Map<number, number>();

  /** One engine event of choice `index` → one delta (text through stop strings, logprobs, finish). */
  private onToken(index: number, ev: TokenEvent, assembler: TextAssembler, stopTokenIds: number[]): void {
    this.observeToken(index, ev.token >= 0, ev.finish);
    const delta: ChoiceDelta = { index: this.choiceIndex(index), text: '', tokens: [] };
    // Choices share one prompt, counted once: its cached part is the most any choice found cached.
    const details = this.usage.prompt_tokens_details;
    if (ev.cachedTokens !== undefined) details.cached_tokens = Math.max(details.cached_tokens, ev.cachedTokens);
    if (ev.token >= 0) {
      this.usage.completion_tokens++;
      this.usage.total_tokens++;
      const isStopToken = ev.finish === 'stop' && stopTokenIds.includes(ev.token);
      if (!isStopToken) {
        const { delta: text, stop } = assembler.push(ev.token);
        delta.text = text;
        if (this.req.sampling.topLogprobs >= 0) delta.tokens.push({ id: ev.token, logprob: ev.logprob ?? 0, top: ev.top ?? [] });
        if (stop) delta.finishReason = 'stop';
      }
    }
    if (!delta.finishReason && ev.finish) {
      delta.text += assembler.flush();
      delta.finishReason = ev.finish;
    }
    this.queue.push(delta);
    if (delta.finishReason) this.choiceDone(index);
  }

  /** TTFT for a choice's first token, inter-token latency after, and the finish reason. */
  private observeToken(index: number, isToken: boolean, finish: FinishReason | undefined): void {
    const m = this.deps.metrics;
    if (!m) return;
    const now = performance.now();
    const label = m.carryOnLabel(this.req.carryOn?.record.carryOnId ?? null);
    if (isToken) {
      const last = this.lastTokenAt.get(index);
      if (last === undefined) m.timeToFirstToken.observe((now - this.binding.startedAt) / 1000);
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
    const label = {
      requestId: `${h.requestId}#${this.choiceIndex(index)}`,
      tenantId: h.tenantId,
      carryOnId: this.req.carryOn?.record.carryOnId ?? null,
    };
    // First: offering the sequence hands its arrays to the writer (they are transferred).
    if (h.policy.bases) {
      this.deps.harvestReplay?.replay({ servedBy: this.deps.base.name, policy: h.policy, capture, label, cacheNamespace: this.req.cacheNamespace });
    }
    const seq = toHarvestedSequence(capture, h.policy.keep, this.deps.hiddenSize, { ...label, baseFingerprint: this.deps.base.fingerprint });
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
      if (!this.finished.has(index)) this.queue.push({ index: this.choiceIndex(index), text: '', tokens: [], finishReason: 'length' });
    }
    this.cancel();
  }

  /** Choice `index` of this run as the response numbers it. */
  private choiceIndex(index: number): number {
    return (this.req.choiceOffset ?? 0) + index;
  }

  /** A choice has its last delta: its engine sequence stops (a stop string ends it before the engine would). */
  private choiceDone(index: number): void {
    if (this.open === 0 || this.finished.has(index)) return;
    this.finished.add(index);
    this.deps.engine.cancel(this.seqIds[index]);
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
    const m = this.deps.metrics;
    if (m) {
      m.e2eLatency.observe((performance.now() - this.binding.startedAt) / 1000);
      m.promptTokens.inc({ carry_on: m.carryOnLabel(this.req.carryOn?.record.carryOnId ?? null) }, this.usage.prompt_tokens);
    }
    for (const id of this.seqIds) this.deps.engine.cancel(id);
    this.binding.onEnd(this.usage);
  }
}
