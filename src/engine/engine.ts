import { Worker } from 'node:worker_threads';
import type { CaptureResult } from './capture.js';
import type { CarryOnSpec } from './carry-on-session.js';
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

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
  ) {
    worker.on('message', (msg: FromWorker) => this.onMessage(msg));
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
  ): number {
    const seqId = this.nextSeqId++;
    if (this.dead) {
      queueMicrotask(() => handlers.onError(this.dead!.message));
      return seqId;
    }
    this.sequences.set(seqId, handlers);
    if (harvestLayers && handlers.onCapture) this.captureSinks.set(seqId, handlers.onCapture);
    this.post({ type: 'add', seqId, promptIds, params, carryOn, harvestLayers: handlers.onCapture ? harvestLayers : null });
    return seqId;
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
    const seqId = this.nextSeqId++;
    if (this.dead) {
      queueMicrotask(() => handlers.onError(this.dead!.message));
      return seqId;
    }
    this.sequences.set(seqId, handlers);
    this.post({ type: 'addEmbedding', seqId, promptIds });
    return seqId;
  }

  async close(): Promise<void> {
    if (this.dead) return;
    const closed = new Promise<void>((r) => (this.closing = r));
    this.post({ type: 'close' });
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    await this.worker.terminate();
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
