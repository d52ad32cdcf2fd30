import { AsyncQueue } from './async-queue.js';
import type { CarryOnVersionRecord } from './carryon/catalog.js';
import type { CarryOnLease, CarryOnRegistry } from './carryon/registry.js';
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
  /** Aborts when the client goes away. */
  signal: AbortSignal;
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
}

/**
 * Serving logic shared by /v1/completions and /v1/chat/completions: admission, context-length
 * checks, one engine sequence per choice, text assembly with stop strings, usage and cancellation.
 */
export class Generator {
  constructor(private readonly deps: GenerationDeps) {}

  /** Validates and admits; throws ApiError before anything is sent to the client. */
  async start(req: GenerationRequest): Promise<GenerationRun> {
    const maxTokens = this.resolveMaxTokens(req);
    const release = await this.deps.scheduler.acquire(req.n, req.signal);
    let lease: CarryOnLease | null = null;
    try {
      // Lazy load: the first request for a carry-on version waits for it; later ones find it resident.
      if (req.carryOn) lease = await this.deps.registry.acquire(req.carryOn.record);
    } catch (err) {
      release();
      throw err;
    }
    return new GenerationRun(this.deps, req, maxTokens, () => {
      lease?.release();
      release();
    }, lease ? { key: lease.key, alpha: req.carryOn!.alpha } : null);
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
      }, carryOn);
      this.seqIds.push(seqId);
    }
    this.timer = setTimeout(() => this.expire(), deps.timeoutMs);
    req.signal.addEventListener('abort', () => this.cancel(), { once: true });
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
  private expire(): void {
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
    for (const id of this.seqIds) this.deps.engine.cancel(id);
    this.release();
  }
}
