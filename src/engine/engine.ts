import { Worker } from 'node:worker_threads';
import type { CaptureResult } from './capture.js';
import type { CarryOnSpec } from './carry-on-session.js';
import type { ResponseFormatSpec, VocabularyBytes } from './structured/token-mask.js';
import type { CarryOnUse, EngineInit, FromWorker, ModelInfo, SamplingParams, StepStats, TokenEvent, ToWorker } from './worker-messages.js';

export interface SequenceHandlers {
  onEvent(ev: TokenEvent): void;
  onError(message: string): void;
  /**
   * Called once, after the sequence ends however it ends, when `harvestLayers` was given to submit.
   * A function property, not a method: the engine keeps it apart from the handlers object.
   */
  onCapture?: (capture: CaptureResult) => void;
}

/**
 * Main-thread face of the engine worker. It forwards sequences and routes the worker's token events
 * back to each sequence's handlers; it keeps no queue of its own (the scheduler owns admission).
 */
export class Engine {
  private nextSeqId = 1;
  private nextJobId = 1;
  private readonly sequences = new Map<number, SequenceHandlers>();
  /** Outlives `sequences`: a cancelled sequence's capture still arrives after it is gone from there. */
  private readonly captureSinks = new Map<number, (c: CaptureResult) => void>();
  private readonly carryOnLoads = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private dead: Error | null = null;
  /** Observers of each step that produced tokens (metrics). */
  private readonly stepListeners: Array<(s: StepStats) => void> = [];
  /** Largest decode batch seen so far: lets callers check that batching happens at all. */
  maxDecodeRows = 0;
  private closing: (() => void) | null = null;
  /** When the worker last reported progress, or work arrived at an idle engine. */
  private lastProgressAt = performance.now();
  private watchdog: NodeJS.Timeout | null = null;
  private readonly stallListeners: Array<(message: string) => void> = [];

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
  ) {
    worker.on('message', (msg: FromWorker) => {
      this.lastProgressAt = performance.now();
      this.onMessage(msg);
    });
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => this.fail(new Error(`engine worker exited with code ${code}`)));
  }

  static start(init: EngineInit): Promise<Engine> {
    const worker = new Worker(new URL('./worker-entry.mjs', import.meta.url));
    return new Promise((resolve, reject) => {
      const onBoot = (msg: FromWorker) => {
        if (msg.type === 'ready') {
          worker.off('message', onBoot);
          worker.off('error', reject);
          resolve(new Engine(worker, msg.info));
        } else if (msg.type === 'fatal') {
          void worker.terminate();
          reject(new Error(msg.message));
        }
      };
      worker.on('message', onBoot);
      worker.once('error', reject);
      worker.postMessage({ type: 'init', init } satisfies ToWorker);
    });
  }

  get alive(): boolean {
    return this.dead === null;
  }

  get liveSequences(): number {
    return this.sequences.size;
  }

  /** Starts a sequence; events arrive until one carries `finish`, or onError. Returns its id for cancel(). */
  submit(
    promptIds: number[],
    params: SamplingParams,
    handlers: SequenceHandlers,
    carryOn: CarryOnUse | null = null,
    harvestLayers: Array<'final' | number> | null = null,
    format: ResponseFormatSpec | null = null,
    /** Prefix-cache namespace: sequences share cached prompt blocks only within one; null: not cached. */
    cacheNamespace: string | null = null,
  ): number {
    return this.start(handlers, (seqId) => {
      if (harvestLayers && handlers.onCapture) this.captureSinks.set(seqId, handlers.onCapture);
      return { type: 'add', seqId, promptIds, params, carryOn, harvestLayers: handlers.onCapture ? harvestLayers : null, format, cacheNamespace };
    });
  }

  /** Drops the prefix cache, or one namespace of it, before any sequence submitted after this call. */
  clearPrefixCache(namespace?: string): void {
    if (!this.dead) this.post({ type: 'clearPrefixCache', namespace });
  }

  private vocabularySent = false;

  /**
   * Sends the tokens' bytes to the worker, once (later calls do nothing): sequences with a response
   * format need them. `vocabulary` is called only the first time; building a 152k-token table costs.
   */
  useVocabulary(vocabulary: () => VocabularyBytes): void {
    if (this.vocabularySent || this.dead) return;
    this.vocabularySent = true;
    const vocab = vocabulary();
    this.worker.postMessage({ type: 'vocab', vocab } satisfies ToWorker, [vocab.bytes.buffer as ArrayBuffer, vocab.offsets.buffer as ArrayBuffer]);
  }

  /**
   * Watches for a stuck engine: with sequences live and no word from the worker for `timeoutMs`,
   * every live request fails and `listener` hears why (readiness turns 503, so an orchestrator
   * replaces the process). The worker is left alone: a forward pass cannot be interrupted, and
   * terminating a worker inside a native call can abort the whole process.
   */
  watchSteps(timeoutMs: number, listener: (message: string) => void): void {
    this.stallListeners.push(listener);
    if (this.watchdog) return;
    this.watchdog = setInterval(() => {
      if (this.dead || this.sequences.size === 0) return;
      const silent = performance.now() - this.lastProgressAt;
      if (silent <= timeoutMs) return;
      const message = `the engine stopped stepping: no step finished in ${Math.round(silent)} ms (CARRYON_ENGINE_STEP_TIMEOUT_MS=${timeoutMs})`;
      this.fail(new Error(message));
      for (const l of this.stallListeners) l(message);
    }, Math.max(1, Math.min(1000, Math.floor(timeoutMs / 4))));
    this.watchdog.unref();
  }

  onStep(listener: (s: StepStats) => void): void {
    this.stepListeners.push(listener);
  }

  /** Stops a sequence at the worker's next step boundary and frees its KV cache. */
  cancel(seqId: number): void {
    if (!this.sequences.delete(seqId)) return;
    this.post({ type: 'cancel', seqId });
  }

  /** Loads a carry-on graph into the worker (a session with one thread); resolves when it can run. */
  loadCarryOn(spec: CarryOnSpec): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    const requestId = this.nextJobId++;
    return new Promise((resolve, reject) => {
      this.carryOnLoads.set(requestId, { resolve, reject });
      this.post({ type: 'loadCarryOn', requestId, spec });
    });
  }

  /** Frees a carry-on session once no live sequence uses it. */
  unloadCarryOn(key: string): void {
    if (!this.dead) this.post({ type: 'unloadCarryOn', key });
  }

  /**
   * Starts an embedding sequence: admitted into the step loop like a prompt (KV budget, prefill
   * chunks), it ends with one event carrying the pooled vector. Returns its id for cancel().
   */
  submitEmbedding(promptIds: number[], handlers: SequenceHandlers): number {
    return this.start(handlers, (seqId) => ({ type: 'addEmbedding', seqId, promptIds }));
  }

  /** Registers a new sequence's handlers and posts the message `add` builds for it (a dead engine fails it). */
  private start(handlers: SequenceHandlers, add: (seqId: number) => ToWorker): number {
    const seqId = this.nextSeqId++;
    if (this.dead) {
      queueMicrotask(() => handlers.onError(this.dead!.message));
      return seqId;
    }
    this.noteWork();
    this.sequences.set(seqId, handlers);
    this.post(add(seqId));
    return seqId;
  }

  async close(): Promise<void> {
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.dead) return;
    const closed = new Promise<void>((r) => (this.closing = r));
    this.post({ type: 'close' });
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    await this.worker.terminate();
  }

  /** Work arriving at an idle engine starts the watchdog's clock afresh. */
  private noteWork(): void {
    if (this.sequences.size === 0) this.lastProgressAt = performance.now();
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case 'tokens':
        this.maxDecodeRows = Math.max(this.maxDecodeRows, msg.step.decodeRows);
        for (const l of this.stepListeners) l(msg.step);
        for (const ev of msg.events) {
          const h = this.sequences.get(ev.seqId);
          if (!h) continue; // cancelled while the step ran
          if (ev.finish) this.sequences.delete(ev.seqId);
          h.onEvent(ev);
        }
        return;
      case 'seqError': {
        const h = this.sequences.get(msg.seqId);
        this.sequences.delete(msg.seqId);
        this.captureSinks.delete(msg.seqId); // its capture, if any, was posted before the error
        h?.onError(msg.message);
        return;
      }
      case 'captured': {
        const sink = this.captureSinks.get(msg.capture.seqId);
        this.captureSinks.delete(msg.capture.seqId);
        sink?.(msg.capture);
        return;
      }
      case 'carryOnLoaded': {
        const load = this.carryOnLoads.get(msg.requestId);
        this.carryOnLoads.delete(msg.requestId);
        if (msg.error) load?.reject(new Error(msg.error));
        else load?.resolve();
        return;
      }
      case 'fatal':
        this.fail(new Error(msg.message));
        return;
      case 'closed':
        this.dead = new Error('engine closed');
        this.closing?.();
        return;
      case 'ready':
        return;
    }
  }

  /** A dead worker must not leave any request hanging. */
  private fail(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    for (const [, h] of this.sequences) h.onError(`engine failure: ${err.message}`);
    this.sequences.clear();
    this.captureSinks.clear();
    for (const [, load] of this.carryOnLoads) load.reject(err);
    this.carryOnLoads.clear();
  }
}
