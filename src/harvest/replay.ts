/**
 * Harvest replays: a key's harvest policy may name several bases (`bases`), so that a mixture
 * carry-on can be trained on live traffic. The base that serves a request captures its own states
 * as it runs (no extra pass); every other named base gets the same tokens afterwards, in one prefill
 * on its own engine. Causal attention makes that prefill's states the ones the base would have had
 * serving the request token by token. Replays run off the request's path and only in spare capacity:
 * a slot no request waits for. Each replayed sequence carries the request's id, so the trainer
 * joins the bases' shards by it; a replay that cannot run is dropped and counted, never retried.
 */
import type { CaptureResult } from '../engine/capture.js';
import type { Engine } from '../engine/engine.js';
import { GREEDY_PARAMS, type SamplingParams } from '../engine/worker-messages.js';
import { toHarvestedSequence } from './capture-to-sequence.js';
import type { HarvestedSequence, HarvestPolicy, HarvestSink } from './types.js';

/** A served base that replays can run on. */
export interface ReplayBase {
  fingerprint: string;
  engine: Engine;
  contextLength: number;
  hiddenSize: number;
}

/** Sequence slots for background work (the gateway's scheduler): granted only when no request wants them. */
export interface SpareCapacity {
  tryAcquireSpare(tenant: string | null): (() => void) | null;
  onSpareSlot(listener: () => void): void;
}

/** One finished choice of a sampled request, to be replayed on the other bases its policy names. */
export interface ReplayRequest {
  /** The base that served it (its own states are already captured). */
  servedBy: string;
  policy: HarvestPolicy;
  /** Its capture before `keep`: every position the engine ran. Only the ids are read (and copied). */
  capture: CaptureResult;
  label: Pick<HarvestedSequence, 'requestId' | 'tenantId' | 'carryOnId'>;
  /** The request's prefix-cache namespace: replays of one tenant share cached prompt blocks. */
  cacheNamespace: string | null;
}

export interface ReplayStats {
  /** Sequences replayed and offered to the writer. */
  replayed: number;
  /** Not replayed: the queue was full, the wait too long, or the writer's queue full. */
  dropped: number;
  /** Not replayed: the base is not served (or not ready), or the sequence is longer than its context. */
  skipped: number;
  /** The replay's engine failed it. */
  failed: number;
  queued: number;
  running: number;
}

interface Job {
  base: ReplayBase;
  tokenIds: Int32Array;
  targetIds: Int32Array;
  isCompletion: Uint8Array;
  request: Omit<ReplayRequest, 'capture'>;
  queuedAt: number;
}

export interface HarvestReplayOptions {
  sink: HarvestSink;
  capacity: SpareCapacity;
  /** Replays waiting for a slot at most; beyond, new ones are dropped. */
  maxQueued?: number;
  /** A replay still waiting after this long is dropped: a saturated gateway sheds replays, not requests. */
  maxWaitMs?: number;
  now?: () => number;
}

/** Greedy, one token: the replay wants the prefill's states, and the step loop ends a sequence on a sampled token. */
const REPLAY_PARAMS: SamplingParams = { ...GREEDY_PARAMS, maxTokens: 1 };

export class HarvestReplay {
  private readonly bases = new Map<string, ReplayBase>();
  private readonly queue: Job[] = [];
  private running = 0;
  private readonly counts = { replayed: 0, dropped: 0, skipped: 0, failed: 0 };
  private readonly maxQueued: number;
  private readonly maxWaitMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: HarvestReplayOptions) {
    this.maxQueued = opts.maxQueued ?? 64;
    this.maxWaitMs = opts.maxWaitMs ?? 60_000;
    this.now = opts.now ?? Date.now;
    opts.capacity.onSpareSlot(() => this.pump());
  }

  /** A base that has started serving (by its name, as policies name it). */
  addBase(name: string, base: ReplayBase): void {
    this.bases.set(name, base);
  }

  /** Queues the request's replays; never throws or waits. Call before the capture is offered (that detaches its arrays). */
  replay(req: ReplayRequest): void {
    const { capture, ...request } = req;
    const rows = capture.tokenIds.length;
    for (const name of new Set(req.policy.bases ?? [])) {
      if (name === req.servedBy) continue;
      const base = this.bases.get(name);
      // The replay feeds `rows` tokens and samples one more.
      if (!base || !base.engine.alive || rows + 1 > base.contextLength) {
        this.counts.skipped++;
        continue;
      }
      if (this.queue.length >= this.maxQueued) {
        this.counts.dropped++;
        continue;
      }
      this.queue.push({
        base,
        tokenIds: capture.tokenIds.slice(),
        targetIds: capture.targetIds.slice(),
        isCompletion: capture.isCompletion.slice(),
        request,
        queuedAt: this.now(),
      });
    }
    this.pump();
  }

  stats(): ReplayStats {
    return { ...this.counts, queued: this.queue.length, running: this.running };
  }

  /** Starts queued replays while spare slots last; drops those that waited too long. */
  private pump(): void {
    while (this.queue.length > 0) {
      const job = this.queue[0];
      if (this.now() - job.queuedAt > this.maxWaitMs) {
        this.queue.shift();
        this.counts.dropped++;
        continue;
      }
      const release = this.opts.capacity.tryAcquireSpare(job.request.label.tenantId);
      if (!release) return;
      this.queue.shift();
      this.start(job, release);
    }
  }

  private start(job: Job, release: () => void): void {
    this.running++;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      this.running--;
      release();
    };
    const { base, request } = job;
    base.engine.submit(
      Array.from(job.tokenIds),
      REPLAY_PARAMS,
      {
        onEvent: (ev) => {
          if (ev.finish) end();
        },
        onError: () => {
          this.counts.failed++;
          end();
        },
        onCapture: (capture) => this.deliver(job, capture),
      },
      null,
      request.policy.layers,
      null,
      request.cacheNamespace,
    );
  }

  /** The replay's states with the request's own targets (its last row's target is the token the request generated). */
  private deliver(job: Job, capture: CaptureResult): void {
    if (capture.tokenIds.length !== job.tokenIds.length) {
      this.counts.failed++;
      return;
    }
    const seq = toHarvestedSequence(
      { ...capture, targetIds: job.targetIds, isCompletion: job.isCompletion },
      job.request.policy.keep,
      job.base.hiddenSize,
      { ...job.request.label, baseFingerprint: job.base.fingerprint },
    );
    if (!seq) return;
    if (this.opts.sink.offer(seq)) this.counts.replayed++;
    else this.counts.dropped++;
  }
}
