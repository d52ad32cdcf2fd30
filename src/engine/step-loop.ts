import { SequenceCapture, type CaptureResult } from './capture.js';
import { mergeRow, type CarryOnCache, type CarryOnSession } from './carry-on-session.js';
import { BatchSlots } from './batch-slots.js';
import type { KvPool } from './kv-pool.js';
import type { BodyResult, ModelRunner } from './model-runner.js';
import type { SamplingParams, StepStats, TokenEvent } from './worker-messages.js';
import { Sampler } from './sampler.js';
import { normalizeMean } from './pooling.js';
import type { ResponseFormatSpec, StructuredOutputs, TokenConstraint } from './structured/token-mask.js';

interface SequenceCarryOn {
  session: CarryOnSession;
  cache: CarryOnCache;
  alpha: number;
}

interface LiveSequence {
  seqId: number;
  params: SamplingParams;
  sampler: Sampler;
  /** Its KV slot in the shared pool; -1 while it waits for room. */
  slot: number;
  /** Prompt tokens not yet prefilled; the first sampled token comes after the last of them. */
  pending: number[];
  /** The token to feed on the next decode step. */
  last: number;
  generated: number;
  carryOn: SequenceCarryOn | null;
  /** Hidden-state capture for harvesting; null when this sequence is not sampled. */
  capture: SequenceCapture | null;
  /**
   * Set for an embedding: the running sum of the prompt's final hidden rows. Such a sequence reads
   * its prompt like any other (same admission, KV budget and prefill chunks) and then ends with
   * the mean, without sampling.
   */
  pooled: Float64Array | null;
  /** The response format's position, applied to the final logits (after any carry-on); null: free text. */
  constraint: TokenConstraint | null;
}

export interface StepLoopOptions {
  prefillChunk: number;
  /**
   * Admission bound on the shared KV pool (slots × longest row × bytes per position). Rows already
   * admitted may still grow past it: a running sequence is never stopped for memory.
   */
  kvBudgetBytes: number;
}

/** An embedding never samples; its sampler exists only so every live sequence has one. */
const EMBEDDING_PARAMS: SamplingParams = {
  temperature: 0, topP: 1, topK: 0, seed: 0, presencePenalty: 0, frequencyPenalty: 0, maxTokens: 0, stopTokenIds: [], topLogprobs: -1,
};

/** What the LM head needs for one sampled row. */
interface HeadRow {
  seq: LiveSequence;
  x: Float32Array;
}

/**
 * The engine's heart: continuous batching over the live sequences. Each step runs
 *   1. one batched body pass over every decoding sequence (one new token each, each at its own
 *      length, reading the shared KV pool in place; the new keys and values are appended to it),
 *   2. prompt chunks within a per-step token budget, shortest prompt first (see planPrefill), so a
 *      long prompt never stalls the others for more than a chunk,
 *   3. the carry-ons, grouped by carry-on, over just their sequences' new tokens,
 *   4. one batched LM-head call over every row that samples, then sampling.
 * Sequences join, leave, get cancelled or hit their limits only between steps. The slot order of
 * the shared KV pool belongs to BatchSlots; admission into it (the KV budget) happens here.
 */
export class StepLoop {
  /** Sequences holding a KV slot, in slot order. */
  private readonly slots: BatchSlots<LiveSequence>;
  /** Admitted by the main thread, waiting for KV room (FIFO). */
  private readonly waiting: LiveSequence[] = [];
  private readonly cancelled = new Set<number>();
  private running = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly runner: ModelRunner,
    private readonly options: StepLoopOptions,
    private readonly emit: (events: TokenEvent[], step: StepStats) => void,
    private readonly onSeqError: (seqId: number, message: string) => void,
    /** Called between steps, when no forward pass is running: the safe moment to release sessions. */
    private readonly onStepBoundary: () => void = () => {},
    /** Receives a harvested sequence's capture when it ends, however it ends. */
    private readonly onCapture: (capture: CaptureResult) => void = () => {},
  ) {
    this.slots = new BatchSlots(runner.newPool(), runner.config.max_position_embeddings);
  }

  private get pool(): KvPool {
    return this.slots.pool;
  }

  /** Structured outputs' vocabulary and caches; set once the main thread sends the vocabulary. */
  structured: StructuredOutputs | null = null;

  /** `carryOn` null: the base alone. With α = 0 the carry-on is not run at all: the base, exactly. */
  add(
    seqId: number,
    promptIds: number[],
    params: SamplingParams,
    carryOn: { session: CarryOnSession; alpha: number } | null,
    harvestLayers: Array<'final' | number> | null = null,
    format: ResponseFormatSpec | null = null,
  ): void {
    this.checkLength(promptIds, 'prompt');
    if (format && !this.structured) throw new Error('a response format needs the vocabulary, which was not sent');
    // Built here, at admission, not in a step: the automaton, and the first token's mask (cached per schema).
    const constraint = format ? this.structured!.constrain(format, params.stopTokenIds) : null;
    constraint?.mask();
    // A key's harvest policy may name blocks this base does not output (keys outlive model changes):
    // capture the layers that exist; harvesting must never fail the request itself.
    const layers = harvestLayers?.filter((l) => l === 'final' || this.runner.extraLayers.includes(l)) ?? [];
    this.enqueue(seqId, promptIds, params, {
      carryOn: carryOn && carryOn.alpha !== 0 ? { ...carryOn, cache: carryOn.session.newCache() } : null,
      capture: layers.length > 0 ? new SequenceCapture(layers, promptIds.length, this.runner.config.hidden_size) : null,
      pooled: null,
      constraint,
    });
  }

  /** An embedding: the base alone reads `promptIds`; the sequence ends with their pooled hidden state. */
  addEmbedding(seqId: number, promptIds: number[]): void {
    this.checkLength(promptIds, 'input');
    this.enqueue(seqId, promptIds, EMBEDDING_PARAMS, { carryOn: null, capture: null, pooled: new Float64Array(this.runner.config.hidden_size), constraint: null });
  }

  private checkLength(ids: number[], what: string): void {
    if (ids.length === 0) throw new Error(`empty ${what}`);
    if (ids.length > this.contextLength) throw new Error(`${what} of ${ids.length} tokens exceeds the context of ${this.contextLength}`);
  }

  private enqueue(seqId: number, promptIds: number[], params: SamplingParams, extra: Pick<LiveSequence, 'carryOn' | 'capture' | 'pooled' | 'constraint'>): void {
    this.waiting.push({ seqId, params, sampler: new Sampler(params), slot: -1, pending: promptIds.slice(), last: -1, generated: 0, ...extra });
    this.kick();
  }

  /** Stops every sequence at the next step boundary (closing). */
  cancelAll(): void {
    for (const seq of [...this.slots.all, ...this.waiting]) this.cancelled.add(seq.seqId);
  }

  /**
   * Resolves once no step is running: the moment the sessions may be released. Releasing an ONNX
   * Runtime session while a run is in flight aborts the whole process.
   */
  idle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Takes effect at the next step boundary; the KV slot is freed with the sequence. */
  cancel(seqId: number): void {
    if (this.slots.all.some((s) => s.seqId === seqId) || this.waiting.some((s) => s.seqId === seqId)) this.cancelled.add(seqId);
  }

  get size(): number {
    return this.slots.size + this.waiting.length;
  }

  /** Whether a step is in progress (forward passes may be running). */
  get busy(): boolean {
    return this.running;
  }

  /** Bytes the shared KV pool holds now. */
  get kvBytes(): number {
    return this.pool.bytes;
  }

  /** Whether a live sequence still uses this carry-on session (it must not be released yet). */
  uses(key: string): boolean {
    const uses = (s: LiveSequence) => s.carryOn?.session.spec.key === key;
    return this.slots.all.some(uses) || this.waiting.some(uses);
  }

  private get contextLength(): number {
    return this.runner.config.max_position_embeddings;
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    setImmediate(() => void this.run());
  }

  private async run(): Promise<void> {
    try {
      while (this.size > 0) {
        this.dropCancelled();
        this.slots.shrink((s) => this.pool.length(s.slot) + Math.min(Math.max(1, s.pending.length), this.options.prefillChunk));
        this.admit();
        this.onStepBoundary();
        if (this.slots.size === 0) break;
        await this.step();
        // Let queued messages (adds, cancels, embeddings) in between steps.
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.running = false;
      if (this.slots.size === 0) this.pool.release();
      this.onStepBoundary();
      if (this.size > 0) this.kick();
      else for (const resolve of this.idleWaiters.splice(0)) resolve();
    }
  }

  private dropCancelled(): void {
    for (const id of this.cancelled) {
      const w = this.waiting.findIndex((s) => s.seqId === id);
      if (w >= 0) this.finish(this.waiting.splice(w, 1)[0]);
      const seq = this.slots.all.find((s) => s.seqId === id);
      if (seq) this.remove(seq);
    }
    this.cancelled.clear();
  }

  /** Moves waiting sequences into pool slots while the pool stays within its budget (FIFO). */
  private admit(): void {
    while (this.waiting.length > 0) {
      const seq = this.waiting[0];
      const capacity = this.slots.roundCapacity(Math.min(seq.pending.length, this.options.prefillChunk));
      const slots = Math.max(this.pool.slots, this.slots.size + 1);
      if (this.slots.size > 0 && slots * capacity * this.pool.bytesPerPosition > this.options.kvBudgetBytes) return;
      // Grow only when the pool is full, and then double the slot count, so a burst of N arrivals
      // regrows the pool log N times (growing on every arrival reallocated and copied it each time).
      const within = Math.max(1, Math.floor(this.options.kvBudgetBytes / (capacity * this.pool.bytesPerPosition)));
      const full = this.slots.size + 1 > this.pool.slots;
      try {
        this.pool.ensure(full ? Math.max(slots, Math.min(2 * this.pool.slots, within)) : this.pool.slots, capacity);
      } catch (err) {
        // Out of memory for a bigger pool: wait for running rows to end; with none, this one cannot run.
        if (this.slots.size > 0) return;
        this.waiting.shift();
        this.finish(seq);
        this.onSeqError(seq.seqId, `KV cache allocation failed: ${err instanceof Error ? err.message : String(err)}`);
        continue;
      }
      this.waiting.shift();
      this.slots.push(seq);
    }
  }

  private async step(): Promise<void> {
    const heads: HeadRow[] = [];
    const failed = new Map<LiveSequence, string>();
    const fail = (seq: LiveSequence, err: unknown) => failed.set(seq, err instanceof Error ? err.message : String(err));

    const decoders = this.slots.decoders;
    const prefillers = this.slots.prefillers;
    const plan = this.planPrefill(prefillers);
    if (!this.reserveForStep(plan)) return;

    if (decoders.length > 0) {
      try {
        const body = await this.runner.forwardRows(this.pool, 0, decoders.length, decoders.map((s) => s.last));
        // Grouped by carry-on, so one carry-on's rows run back to back.
        const order = decoders.map((seq, r) => ({ seq, r })).sort((a, b) => carryOnKey(a.seq).localeCompare(carryOnKey(b.seq)));
        for (const { seq, r } of order) {
          try {
            heads.push({ seq, x: await this.compose(seq, [seq.last], rowOf(body, r, this.runner.config.hidden_size), 0) });
          } catch (err) {
            fail(seq, err);
          }
        }
      } catch (err) {
        for (const seq of decoders) fail(seq, err);
      }
    }

    const events: TokenEvent[] = [];
    const ended: LiveSequence[] = [];
    for (const [seq, take] of plan) {
      try {
        const feed = seq.pending.splice(0, take);
        const body = await this.runner.forwardRows(this.pool, seq.slot, 1, feed);
        if (seq.pooled) {
          const done = this.pool.length(seq.slot);
          accumulateRows(seq.pooled, body.hidden, feed.length);
          if (seq.pending.length === 0) {
            events.push({ seqId: seq.seqId, token: -1, finish: 'stop', embedding: normalizeMean(seq.pooled, done) });
            ended.push(seq);
          }
          continue;
        }
        const x = await this.compose(seq, feed, body, feed.length - 1);
        if (seq.pending.length === 0) heads.push({ seq, x });
      } catch (err) {
        fail(seq, err);
      }
    }

    if (heads.length > 0) {
      const d = this.runner.config.hidden_size;
      const v = this.runner.config.vocab_size;
      const merged = new Float32Array(heads.length * d);
      heads.forEach((h, i) => merged.set(h.x, i * d));
      try {
        const logits = await this.runner.forwardHead(merged, heads.length);
        heads.forEach((h, i) => {
          try {
            const ev = this.sample(h.seq, logits.subarray(i * v, (i + 1) * v));
            events.push(ev);
            if (ev.finish) ended.push(h.seq);
          } catch (err) {
            fail(h.seq, err); // a constraint that allows nothing fails its own sequence, not the batch
          }
        });
      } catch (err) {
        for (const h of heads) fail(h.seq, err);
      }
    }

    for (const [seq, message] of failed) {
      this.remove(seq);
      this.onSeqError(seq.seqId, message);
    }
    for (const seq of ended) if (!failed.has(seq)) this.remove(seq);
    // Prompts read in full this step decode from the next one on: move them into the decode range.
    for (const seq of prefillers) {
      if (seq.pending.length === 0 && this.slots.holds(seq) && !this.slots.isDecoding(seq)) this.slots.promote(seq);
    }
    // Every step that ran is reported, a prompt chunk that sampled nothing too (step metrics count it).
    if (events.length > 0 || plan.size > 0) this.emit(events, { decodeRows: decoders.length, prefillRows: plan.size, kvBytes: this.pool.bytes });
  }

  /**
   * Grows the pool so every row fits this step's tokens (`plan` for prompt rows, one for decode
   * rows). If it cannot (out of memory), the rows that needed the growth end with an error, rather
   * than the worker crashing with every other request, and the step is skipped: the next one
   * plans again for the rows left. Returns whether the step can run.
   */
  private reserveForStep(plan: Map<LiveSequence, number>): boolean {
    const need = (seq: LiveSequence) => this.pool.length(seq.slot) + (this.slots.isDecoding(seq) ? 1 : (plan.get(seq) ?? 0));
    try {
      this.slots.reserve(Math.max(0, ...this.slots.all.map(need)));
      return true;
    } catch (err) {
      for (const seq of this.slots.all.filter((s) => need(s) > this.pool.capacity)) {
        this.remove(seq);
        this.onSeqError(seq.seqId, `KV cache allocation failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      return false;
    }
  }

  /**
   * This step's prompt tokens: a budget of `prefillChunk` tokens, shortest prompt first, so a short
   * prompt arriving behind a long one is read in one step instead of waiting for every chunk of
   * the long one. The oldest prefilling sequence always gets a quarter of the budget, so a stream
   * of short prompts cannot starve a long one.
   */
  private planPrefill(prefillers: LiveSequence[]): Map<LiveSequence, number> {
    const plan = new Map<LiveSequence, number>();
    if (prefillers.length === 0) return plan;
    let budget = this.options.prefillChunk;
    const oldest = prefillers[0];
    const reserved = Math.min(oldest.pending.length, Math.max(1, Math.floor(budget / 4)));
    budget -= reserved;
    for (const seq of [...prefillers].sort((a, b) => a.pending.length - b.pending.length)) {
      const extra = seq === oldest ? reserved : 0;
      const take = Math.min(seq.pending.length - extra, budget);
      if (take + extra > 0) plan.set(seq, take + extra);
      budget -= Math.max(0, take);
    }
    return plan;
  }

  private sample(seq: LiveSequence, logits: Float32Array): TokenEvent {
    const pick = seq.sampler.sample(logits, seq.constraint);
    seq.constraint?.accept(pick.token);
    seq.generated++;
    seq.last = pick.token;
    seq.capture?.recordSample(pick.token);
    const ev: TokenEvent = { seqId: seq.seqId, token: pick.token, logprob: pick.logprob, top: pick.top };
    // A value nothing can extend ends the output here, as the stop token it would be forced to take next.
    const stop = seq.params.stopTokenIds.includes(pick.token) || seq.constraint?.finished === true;
    if (stop || seq.generated >= seq.params.maxTokens || this.pool.length(seq.slot) >= this.contextLength) {
      ev.finish = stop ? 'stop' : 'length';
    }
    return ev;
  }

  /**
   * After the base body: capture, then the sequence's carry-on over the same tokens (its KV cache
   * must see every position), then x + α · g ⊙ Δx on row `at`: the only row the LM head needs.
   */
  private async compose(seq: LiveSequence, feed: number[], body: BodyResult, at: number): Promise<Float32Array> {
    seq.capture?.recordForward(feed, body);
    const d = this.runner.config.hidden_size;
    const x = body.hidden.subarray(at * d, (at + 1) * d);
    if (!seq.carryOn) return x;
    const { delta, gate } = await seq.carryOn.session.forward(feed, body, seq.carryOn.cache);
    return mergeRow(x, delta.subarray(at * d, (at + 1) * d), gate.subarray(at * d, (at + 1) * d), seq.carryOn.alpha);
  }

  /** Frees a sequence's slot (its pool rows go with it) and hands over its capture. */
  private remove(seq: LiveSequence): void {
    if (this.slots.remove(seq)) this.finish(seq);
  }

  /** Hands over the capture, if any, of a sequence that has left. */
  private finish(seq: LiveSequence): void {
    seq.slot = -1;
    const result = seq.capture?.finish(seq.seqId);
    if (result) this.onCapture(result);
  }
}

/** Adds each of `rows` hidden rows into `sum` (float64, so a long input loses no precision). */
function accumulateRows(sum: Float64Array, hidden: Float32Array, rows: number): void {
  const d = sum.length;
  for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) sum[j] += hidden[r * d + j];
}

function carryOnKey(seq: LiveSequence): string {
  return seq.carryOn?.session.spec.key ?? '';
}

/** Row `r` of a batched body result, as views (the capture copies what it keeps). */
function rowOf(body: BodyResult, r: number, d: number): BodyResult {
  const layers = new Map<number, Float32Array>();
  for (const [k, v] of body.layers) layers.set(k, v.subarray(r * d, (r + 1) * d));
  return { hidden: body.hidden.subarray(r * d, (r + 1) * d), layers };
}
