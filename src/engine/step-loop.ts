import { SequenceCapture, type CaptureResult } from './capture.js';
import { mergeRow, type CarryOnCache, type CarryOnSession } from './carry-on-session.js';
import { BatchSlots } from './batch-slots.js';
import type { KvPool } from './kv-pool.js';
import type { BodyResult, ModelRunner } from './model-runner.js';
import { GREEDY_PARAMS, type SamplingParams, type StepStats, type TokenEvent } from './worker-messages.js';
import { Sampler } from './sampler.js';
import { normalizeMean } from './pooling.js';
import type { ResponseFormatSpec, StructuredOutputs, TokenConstraint } from './structured/token-mask.js';
import { PrefixCache } from './prefix-cache.js';
import { PromptBlocks, type RestoredPrefix } from './prompt-blocks.js';
import { CarryOnPrefixStates } from './carry-on-states.js';

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
  /** The prompt as prefix-cache blocks, until it is read; null: this sequence does not use the cache. */
  prompt: PromptBlocks | null;
  /** Cached positions the carry-on, capture or pooling must still read (the base skipped them). */
  restored: RestoredPrefix | null;
  /** Prompt tokens served from the prefix cache (reported with the first token). */
  cachedTokens: number;
  /** Its own running cost of a prompt token in the body (a token costs more the further it is). */
  msPerToken: number | null;
}

/** What a sequence brings besides its prompt and sampling parameters. */
export interface SequenceOptions {
  /** null: the base alone. With α = 0 the carry-on is not run at all: the base, exactly. */
  carryOn?: { session: CarryOnSession; alpha: number } | null;
  harvestLayers?: Array<'final' | number> | null;
  format?: ResponseFormatSpec | null;
  /** The prefix-cache namespace (the tenant's, or a shared one); null: no prefix caching. */
  cacheNamespace?: string | null;
}

export interface StepLoopOptions {
  prefillChunk: number;
  /**
   * Admission bound on the shared KV pool (slots × longest row × bytes per position). Rows already
   * admitted may still grow past it: a running sequence is never stopped for memory.
   */
  kvBudgetBytes: number;
  /**
   * The prefix cache: prompts' blocks of `blockTokens` tokens kept within `budgetBytes` and within
   * what the live pool leaves of kvBudgetBytes. Absent or budget 0: off.
   */
  prefixCache?: { blockTokens: number; budgetBytes: number };
  /**
   * A prompt chunk runs in slices of about this many milliseconds, and a newcomer cuts it short
   * after the current slice (see prefillRow); 0: each chunk in one body call.
   */
  prefillSliceMs?: number;
}

/** An embedding never samples; its sampler exists only so every live sequence has one. */
const EMBEDDING_PARAMS: SamplingParams = { ...GREEDY_PARAMS, maxTokens: 0 };

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
    const pc = options.prefixCache;
    // A cached position costs its keys and values plus the hidden rows a carry-on reads instead of the base.
    const rowBytes = runner.config.hidden_size * 4 * (1 + runner.extraLayers.length);
    this.prefixCache = pc && pc.budgetBytes > 0 ? new PrefixCache(pc.blockTokens, this.pool.bytesPerPosition + rowBytes, pc.budgetBytes) : null;
    // Carry-on states are small beside the base's blocks (a few carry-on blocks against the base's layers).
    this.carryOnStates = this.prefixCache ? new CarryOnPrefixStates(pc!.budgetBytes / 4) : null;
  }

  /** Null when prefix caching is off. */
  readonly prefixCache: PrefixCache | null;
  private readonly carryOnStates: CarryOnPrefixStates | null;

  private get pool(): KvPool {
    return this.slots.pool;
  }

  /** Structured outputs' vocabulary and caches; set once the main thread sends the vocabulary. */
  structured: StructuredOutputs | null = null;

  add(seqId: number, promptIds: number[], params: SamplingParams, options: SequenceOptions = {}): void {
    const { carryOn = null, harvestLayers = null, format = null, cacheNamespace = null } = options;
    this.checkLength(promptIds, 'prompt');
    if (format && !this.structured) throw new Error('a response format needs the vocabulary, which was not sent');
    // Built here, at admission, not in a step: the automaton, and the first token's mask (cached per schema).
    const constraint = format ? this.structured!.constrain(format, params.stopTokenIds) : null;
    constraint?.mask();
    // A key's harvest policy may name blocks this base does not output (keys outlive model changes):
    // capture the layers that exist; harvesting must never fail the request itself.
    const layers = harvestLayers?.filter((l) => l === 'final' || this.runner.extraLayers.includes(l)) ?? [];
    this.enqueue(seqId, promptIds, params, cacheNamespace, {
      carryOn: carryOn && carryOn.alpha !== 0 ? { ...carryOn, cache: carryOn.session.newCache() } : null,
      capture: layers.length > 0 ? new SequenceCapture(layers, promptIds.length, this.runner.config.hidden_size) : null,
      pooled: null,
      constraint,
    });
  }

  /** An embedding: the base alone reads `promptIds`; the sequence ends with their pooled hidden state. */
  addEmbedding(seqId: number, promptIds: number[]): void {
    this.checkLength(promptIds, 'input');
    // Not prefix-cached: embedding inputs (documents, not chats) seldom share a prefix.
    this.enqueue(seqId, promptIds, EMBEDDING_PARAMS, null, { carryOn: null, capture: null, pooled: new Float64Array(this.runner.config.hidden_size), constraint: null });
  }

  private checkLength(ids: number[], what: string): void {
    if (ids.length === 0) throw new Error(`empty ${what}`);
    if (ids.length > this.contextLength) throw new Error(`${what} of ${ids.length} tokens exceeds the context of ${this.contextLength}`);
  }

  private enqueue(
    seqId: number,
    promptIds: number[],
    params: SamplingParams,
    cacheNamespace: string | null,
    extra: Pick<LiveSequence, 'carryOn' | 'capture' | 'pooled' | 'constraint'>,
  ): void {
    const prompt = this.prefixCache && cacheNamespace !== null
      ? new PromptBlocks(this.prefixCache, cacheNamespace, promptIds, this.runner.config.hidden_size)
      : null;
    this.arrivals++;
    this.waiting.push({
      seqId, params, sampler: new Sampler(params), slot: -1, pending: promptIds.slice(), last: -1, generated: 0,
      prompt, restored: null, cachedTokens: 0, msPerToken: null, ...extra,
    });
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
      // Cached prompt positions arrive in the slot at once; the first chunk is read after them.
      const cached = seq.prompt?.cachedTokens() ?? 0;
      const capacity = this.slots.roundCapacity(cached + Math.min(seq.pending.length - cached, this.options.prefillChunk));
      const slots = Math.max(this.pool.slots, this.slots.size + 1);
      if (this.slots.size > 0 && slots * capacity * this.pool.bytesPerPosition > this.options.kvBudgetBytes) return;
      // When the pool must reallocate, make room for everyone waiting (at least double), so a burst
      // of arrivals costs one allocation, not a copy of the pool per arrival.
      const within = Math.max(1, Math.floor(this.options.kvBudgetBytes / (capacity * this.pool.bytesPerPosition)));
      const room = Math.min(within, Math.max(2 * this.pool.slots, this.slots.size + this.waiting.length));
      try {
        this.pool.ensure(slots, capacity, Math.max(slots, room));
      } catch (err) {
        // Out of memory for a bigger pool: wait for running rows to end; with none, this one cannot run.
        if (this.slots.size > 0) return;
        this.waiting.shift();
        this.finish(seq);
        this.onSeqError(seq.seqId, `KV cache allocation failed: ${err instanceof Error ? err.message : String(err)}`);
        continue;
      }
      this.makeRoomForPrompt(seq, slots, capacity, room);
      this.waiting.shift();
      this.slots.push(seq);
      this.restore(seq);
    }
    this.fitPrefixCache();
  }

  /**
   * Buffers for the whole prompt (and as many rows again), when the KV budget would allow it: the
   * pool then grows in place as the prompt is read (KvPool.relayout, about a millisecond) instead
   * of into new memory, whose first touch costs a page fault per 4 KiB (50–600 ms per regrowth at a
   * thousand positions on the development VM, paid by whoever arrived behind the prompt). The pool's
   * shape and counted bytes do not change: untouched room is address space only.
   */
  private makeRoomForPrompt(seq: LiveSequence, slots: number, capacity: number, room: number): void {
    const whole = this.slots.roundCapacity(seq.pending.length);
    const fit = Math.floor(this.options.kvBudgetBytes / (whole * this.pool.bytesPerPosition));
    const rows = Math.min(fit, Math.max(2 * slots, room));
    if (whole <= capacity || rows < slots) return;
    try {
      this.pool.makeRoom(rows, whole);
    } catch {
      // No memory for the room: the pool grows step by step, as it would have.
    }
  }

  /** Starts an admitted sequence from its cached prefix: the base never runs over those positions. */
  private restore(seq: LiveSequence): void {
    const restored = seq.prompt?.restore(this.pool, seq.slot) ?? null;
    if (!restored) return;
    seq.pending.splice(0, restored.ids.length);
    seq.cachedTokens = restored.ids.length;
    seq.restored = restored;
  }

  /** The cache keeps only what the live pool leaves of the KV budget: it never delays admission. */
  private fitPrefixCache(): void {
    this.carryOnStates?.shrinkTo(this.stateRoom());
    this.prefixCache?.shrinkTo(this.blockRoom());
  }

  /**
   * The prefix cache's room: its budget, within what the live pool leaves of the KV budget; base
   * blocks and carry-on states share it (each may use what the other does not).
   */
  private cacheRoom(): number {
    return Math.min(this.options.kvBudgetBytes - this.pool.bytes, this.options.prefixCache?.budgetBytes ?? 0);
  }

  private blockRoom(): number {
    return this.cacheRoom() - (this.carryOnStates?.bytes ?? 0);
  }

  private stateRoom(): number {
    return this.cacheRoom() - (this.prefixCache?.bytes ?? 0);
  }

  /**
   * The cached prefix a sequence started from, read by what the base's rows feed besides the
   * LM head: capture and the carry-on (its own KV over those positions).
   */
  private async replayRestored(seq: LiveSequence): Promise<void> {
    const restored = seq.restored;
    if (!restored) return;
    seq.restored = null;
    seq.capture?.recordForward(restored.ids, restored.body);
    if (seq.carryOn) await this.replayCarryOn(seq.carryOn, restored);
  }

  /** The carry-on's own KV over a cached prefix: from a kept state where there is one, then over the rest. */
  private async replayCarryOn(carryOn: SequenceCarryOn, restored: RestoredPrefix): Promise<void> {
    const states = this.carryOnStates;
    const from = states?.restore(carryOn.session, restored.names, this.prefixCache!.blockTokens, carryOn.cache) ?? 0;
    if (from < restored.ids.length) {
      const d = this.runner.config.hidden_size;
      const layers = new Map<number, Float32Array>();
      for (const [k, rows] of restored.body.layers) layers.set(k, rows.subarray(from * d));
      await carryOn.session.forward(restored.ids.slice(from), { hidden: restored.body.hidden.subarray(from * d), layers }, carryOn.cache);
      states?.keep(carryOn.session, restored.names[restored.names.length - 1], carryOn.cache, this.stateRoom());
    }
  }

  private async step(): Promise<void> {
    const heads: HeadRow[] = [];
    const failed = new Map<LiveSequence, string>();
    const fail = (seq: LiveSequence, err: unknown) => noteFailure(failed, seq, err);

    this.arrivalsAtStep = this.arrivals;
    const decoders = this.slots.decoders;
    const prefillers = this.slots.prefillers;
    const plan = this.planPrefill(prefillers);
    if (!this.reserveForStep(plan)) return;
    this.fitPrefixCache();

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

    // Short prompts this step finishes are read first and sample with the decoders. Longer work
    // runs after those tokens are out, one row at a time, each sampled as soon as it finishes, in
    // slices that a newcomer cuts short: a newcomer's first token waits for one slice of it at most.
    // A carry-on still to read a cached prefix is not quick: it runs over every cached row first.
    const isQuick = ([seq, take]: [LiveSequence, number]) =>
      take === seq.pending.length && take <= this.prefillSlice(seq) && !(seq.restored && seq.carryOn);
    const quick = [...plan].filter(isQuick);
    const sliced = [...plan].filter((entry) => !isQuick(entry));
    await this.prefillPhase(quick, heads, failed, decoders.length, false);
    // One row at a time, each sampled as soon as it finishes; a newcomer ends the step early.
    for (const entry of sliced) {
      if (this.arrivals !== this.arrivalsAtStep) break;
      await this.prefillPhase([entry], [], new Map(), 0, true);
    }
  }

  /**
   * Reads prompt rows (then samples every row in `heads` that finished, decoders' included),
   * settles who ended or failed, and reports. `sliced`: rows yield to newcomers between slices.
   */
  private async prefillPhase(
    rows: Array<[LiveSequence, number]>,
    heads: HeadRow[],
    failed: Map<LiveSequence, string>,
    decodeRows: number,
    sliced: boolean,
  ): Promise<void> {
    const fail = (seq: LiveSequence, err: unknown) => noteFailure(failed, seq, err);
    const events: TokenEvent[] = [];
    const ended: LiveSequence[] = [];
    for (const [seq, take] of rows) {
      if (!this.slots.holds(seq)) continue;
      try {
        await this.replayRestored(seq);
        await this.prefillRow(seq, take, heads, events, ended, sliced);
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
    this.settle(failed, ended, rows.map(([seq]) => seq));
    if (events.length > 0 || rows.length > 0) this.report(events, decodeRows, rows.length);
  }

  /** Sends a step's events and figures (a prompt chunk that sampled nothing too: step metrics count it). */
  private report(events: TokenEvent[], decodeRows: number, prefillRows: number): void {
    const prefillTokens = this.prefillTokens;
    this.prefillTokens = 0;
    this.emit(events, { decodeRows, prefillRows, prefillTokens, kvBytes: this.pool.bytes, prefixCache: this.prefixCacheStats() });
  }

  /** Ends the rows that failed or finished in a step, then moves prompts read in full into the decode range. */
  private settle(failed: Map<LiveSequence, string>, ended: LiveSequence[], prefillers: LiveSequence[]): void {
    for (const [seq, message] of failed) {
      this.remove(seq);
      this.onSeqError(seq.seqId, message);
    }
    for (const seq of ended) if (!failed.has(seq)) this.remove(seq);
    for (const seq of prefillers) {
      if (seq.pending.length === 0 && this.slots.holds(seq) && !this.slots.isDecoding(seq)) this.slots.promote(seq);
    }
  }

  /** Sequences added so far, and when the running step began: a newcomer cuts sliced chunks short. */
  private arrivals = 0;
  private arrivalsAtStep = 0;
  /** Prompt tokens the base computed since the last report. */
  private prefillTokens = 0;
  /** Running estimate of a prompt token's cost in the body, for a sequence not measured yet (null until measured). */
  private msPerPrefillToken: number | null = null;

  /**
   * Reads up to `take` of a sequence's prompt tokens, in slices (see prefillSlice). Between slices
   * the worker takes its messages; when `yieldToNewcomers`, a sequence that arrived meanwhile ends
   * the chunk early, so it waits for one slice, not for the whole chunk (the rest stays pending).
   */
  private async prefillRow(
    seq: LiveSequence,
    take: number,
    heads: HeadRow[],
    events: TokenEvent[],
    ended: LiveSequence[],
    yieldToNewcomers: boolean,
  ): Promise<void> {
    let left = take;
    while (left > 0) {
      const feed = seq.pending.splice(0, yieldToNewcomers ? Math.min(left, this.prefillSlice(seq)) : left);
      left -= feed.length;
      const started = performance.now();
      const body = await this.runner.forwardRows(this.pool, seq.slot, 1, feed);
      const perToken = (performance.now() - started) / feed.length;
      const ema = (old: number | null) => (old === null ? perToken : 0.7 * old + 0.3 * perToken);
      this.msPerPrefillToken = ema(this.msPerPrefillToken);
      seq.msPerToken = ema(seq.msPerToken);
      this.prefillTokens += feed.length;
      seq.prompt?.afterChunk(this.pool, seq.slot, body, feed.length, this.blockRoom());
      if (seq.pending.length === 0) seq.prompt = null;
      if (seq.pooled) {
        accumulateRows(seq.pooled, body.hidden, feed.length);
        if (seq.pending.length === 0) {
          events.push({ seqId: seq.seqId, token: -1, finish: 'stop', embedding: normalizeMean(seq.pooled, this.pool.length(seq.slot)) });
          ended.push(seq);
        }
      } else {
        const x = await this.compose(seq, feed, body, feed.length - 1);
        if (seq.pending.length === 0) heads.push({ seq, x });
      }
      if (left === 0 || !yieldToNewcomers) continue;
      await new Promise<void>((r) => setImmediate(r));
      if (this.arrivals !== this.arrivalsAtStep) return;
    }
  }

  /**
   * Tokens per body call of a prompt chunk: as many as take prefillSliceMs by the running estimate
   * (at least 16, where a CPU matmul is still efficient), so the wait a newcomer sees follows the
   * hardware: a GPU or a small model reads whole chunks, a slow CPU a few dozen tokens at a time.
   */
  private prefillSlice(seq: LiveSequence): number {
    const ms = this.options.prefillSliceMs ?? 0;
    const chunk = this.options.prefillChunk;
    const cost = seq.msPerToken ?? this.msPerPrefillToken;
    if (ms <= 0 || cost === null) return chunk;
    return Math.max(Math.min(16, chunk), Math.min(chunk, Math.floor(ms / Math.max(cost, 1e-6))));
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
    if (seq.generated === 1) ev.cachedTokens = seq.cachedTokens;
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

  private prefixCacheStats(): StepStats['prefixCache'] {
    const cache = this.prefixCache;
    return cache ? { bytes: cache.bytes + (this.carryOnStates?.bytes ?? 0), blocks: cache.size, ...cache.takeCounters() } : null;
  }

  /** Drops the prefix cache, or one namespace of it (a deleted tenant's). */
  clearPrefixCache(namespace?: string): void {
    this.prefixCache?.clear(namespace);
    // States are found through base blocks' names, so a tenant's go unreachable with its blocks; all go on a full clear.
    if (namespace === undefined) this.carryOnStates?.clear();
  }

  /** A carry-on session is being released: its states go with it. */
  forgetCarryOn(session: CarryOnSession): void {
    this.carryOnStates?.forget(session);
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

/** Records why a sequence failed this step; it is removed, and its request told, when the step settles. */
function noteFailure(failed: Map<LiveSequence, string>, seq: LiveSequence, err: unknown): void {
  failed.set(seq, err instanceof Error ? err.message : String(err));
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
