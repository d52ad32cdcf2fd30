import { SequenceCapture, type CaptureResult } from './capture.js';
import { mergeRow, type CarryOnCache, type CarryOnSession } from './carry-on-session.js';
import type { KvCache, ModelRunner } from './model-runner.js';
import type { SamplingParams, TokenEvent } from './protocol.js';
import { Sampler } from './sampler.js';

interface SequenceCarryOn {
  session: CarryOnSession;
  cache: CarryOnCache;
  alpha: number;
}

interface LiveSequence {
  seqId: number;
  params: SamplingParams;
  sampler: Sampler;
  cache: KvCache;
  /** Prompt tokens not yet prefilled; the first sampled token comes after the last of them. */
  pending: number[];
  /** The token to feed on the next decode step. */
  last: number;
  generated: number;
  carryOn: SequenceCarryOn | null;
  /** Hidden-state capture for harvesting; null when this sequence is not sampled. */
  capture: SequenceCapture | null;
}

/**
 * The engine's heart: a loop of steps over the set of live sequences. Each step advances every live
 * sequence once, by a prefill chunk or by one decoded token, so a long prompt never stalls the others.
 * Sequences join and leave only between steps, which is what continuous batching needs: a batched
 * forward pass can replace the per-sequence calls in `step()` without changing anything around it.
 */
export class StepLoop {
  private readonly live = new Map<number, LiveSequence>();
  private readonly cancelled = new Set<number>();
  private running = false;

  constructor(
    private readonly runner: ModelRunner,
    private readonly prefillChunk: number,
    private readonly emit: (events: TokenEvent[]) => void,
    private readonly onSeqError: (seqId: number, message: string) => void,
    /** Called between steps, when no forward pass is running: the safe moment to release sessions. */
    private readonly onStepBoundary: () => void = () => {},
    /** Receives a harvested sequence's capture when it ends, however it ends. */
    private readonly onCapture: (capture: CaptureResult) => void = () => {},
  ) {}

  /** `carryOn` null: the base alone. With α = 0 the carry-on is not run at all: the base, exactly. */
  add(
    seqId: number,
    promptIds: number[],
    params: SamplingParams,
    carryOn: { session: CarryOnSession; alpha: number } | null,
    harvestLayers: Array<'final' | number> | null = null,
  ): void {
    if (promptIds.length === 0) throw new Error('empty prompt');
    // A key's harvest policy may name blocks this base does not output (keys outlive model changes):
    // capture the layers that exist; harvesting must never fail the request itself.
    const layers = harvestLayers?.filter((l) => l === 'final' || this.runner.extraLayers.includes(l)) ?? [];
    this.live.set(seqId, {
      seqId,
      params,
      sampler: new Sampler(params),
      cache: this.runner.newCache(),
      pending: promptIds.slice(),
      last: -1,
      generated: 0,
      carryOn: carryOn && carryOn.alpha !== 0 ? { ...carryOn, cache: carryOn.session.newCache() } : null,
      capture: layers.length > 0 ? new SequenceCapture(layers, promptIds.length, this.runner.config.hidden_size) : null,
    });
    this.kick();
  }

  /** Takes effect at the next step boundary; the cache is dropped with the sequence. */
  cancel(seqId: number): void {
    if (this.live.has(seqId)) this.cancelled.add(seqId);
  }

  get size(): number {
    return this.live.size;
  }

  /** Whether a step is in progress (forward passes may be running). */
  get busy(): boolean {
    return this.running;
  }

  /** Whether a live sequence still uses this carry-on session (it must not be released yet). */
  uses(key: string): boolean {
    for (const seq of this.live.values()) if (seq.carryOn?.session.spec.key === key) return true;
    return false;
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    setImmediate(() => void this.run());
  }

  private async run(): Promise<void> {
    try {
      while (this.live.size > 0) {
        this.dropCancelled();
        this.onStepBoundary();
        if (this.live.size === 0) break;
        await this.step();
        // Let queued messages (adds, cancels, embeddings) in between steps.
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.running = false;
      this.onStepBoundary();
    }
  }

  private dropCancelled(): void {
    for (const id of this.cancelled) {
      const seq = this.live.get(id);
      if (seq) this.end(seq);
    }
    this.cancelled.clear();
  }

  /** Removes a sequence (its caches go with it) and hands over its capture, if any. */
  private end(seq: LiveSequence): void {
    this.live.delete(seq.seqId);
    const result = seq.capture?.finish(seq.seqId);
    if (result) this.onCapture(result);
  }

  private async step(): Promise<void> {
    const events: TokenEvent[] = [];
    for (const seq of [...this.live.values()]) {
      try {
        const ev = await this.advance(seq);
        if (ev) events.push(ev);
      } catch (err) {
        this.end(seq);
        this.onSeqError(seq.seqId, err instanceof Error ? err.message : String(err));
      }
    }
    if (events.length > 0) this.emit(events);
  }

  /** One step of one sequence: a prefill chunk (sampling only after the prompt's last token) or a decode. */
  private async advance(seq: LiveSequence): Promise<TokenEvent | null> {
    const feed = seq.pending.length > 0 ? seq.pending.splice(0, this.prefillChunk) : [seq.last];
    const lastRow = await this.forwardHidden(seq, feed);
    if (seq.pending.length > 0) return null;
    const logits = await this.runner.forwardHead(lastRow, 1);
    const pick = seq.sampler.sample(logits);
    seq.generated++;
    seq.last = pick.token;
    seq.capture?.recordSample(pick.token);
    const ev: TokenEvent = { seqId: seq.seqId, token: pick.token, logprob: pick.logprob, top: pick.top };
    const stop = seq.params.stopTokenIds.includes(pick.token);
    if (stop || seq.generated >= seq.params.maxTokens || seq.cache.length >= this.runner.config.max_position_embeddings) {
      ev.finish = stop ? 'stop' : 'length';
      this.end(seq);
    }
    return ev;
  }

  /**
   * Base body, then the sequence's carry-on over the same tokens (its KV cache must see every
   * position), then x + α · g ⊙ Δx on the last row: the only row the LM head needs.
   */
  private async forwardHidden(seq: LiveSequence, feed: number[]): Promise<Float32Array> {
    const body = await this.runner.forwardBody(feed, seq.cache);
    seq.capture?.recordForward(feed, body);
    const d = this.runner.config.hidden_size;
    const at = (feed.length - 1) * d;
    const x = body.hidden.subarray(at, at + d);
    if (!seq.carryOn) return x;
    const { delta, gate } = await seq.carryOn.session.forward(feed, body, seq.carryOn.cache);
    return mergeRow(x, delta.subarray(at, at + d), gate.subarray(at, at + d), seq.carryOn.alpha);
  }
}
