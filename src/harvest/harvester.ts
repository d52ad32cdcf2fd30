/**
 * The serving thread's handle on harvesting. It owns the writer worker; `offer` is the only thing the
 * request path calls, and it never blocks or awaits (see producer.ts). Shards the worker finishes come
 * back here to `onShardFinished` (the gateway indexes them in its metadata store on this thread); the worker
 * deletes a shard's journal only after that callback resolves.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import type { CallResults, FromHarvestWorker, HarvestWorkerInit, ToHarvestWorker, WorkerCall } from './worker-messages.js';
import { HarvestProducer, type HarvestProducerHandle } from './producer.js';
import type { ShardInfo } from './shard-format.js';
import type { ForgetReport, RecoveryReport, RescanReport } from './shard-writer.js';
import type { SigmaCodec } from './sigma.js';
import { HarvestCounters, type HarvestStats } from './stats.js';
import type { HarvestedSequence, HarvestSink } from './types.js';

export interface HarvesterOptions {
  /** Root folder of the shards (one sub-folder per tenant). */
  dir: string;
  sigma?: SigmaCodec;
  /** A [d, D] projection applied before the codec (`.safetensors` or raw f32). */
  projectionPath?: string;
  /** Bytes of sequences posted but not yet drained by the writer; beyond it, offers drop. */
  maxQueueBytes: number;
  maxShardBytes: number;
  maxShardAgeMs: number;
  /** Index a finished shard; may be async. Runs on this thread. */
  onShardFinished: (info: ShardInfo) => void | Promise<void>;
  journalSyncMs?: number;
  /** Writer-side failures (disk errors, rejected sequences); default: console.error. */
  onError?: (err: Error) => void;
}

type PendingCall = { resolve: (v: CallResults[keyof CallResults]) => void; reject: (e: Error) => void };

export class Harvester implements HarvestSink {
  private readonly worker: Worker;
  private readonly counters = new HarvestCounters();
  private readonly producer: HarvestProducer;
  private readonly calls = new Map<number, PendingCall>();
  private readonly readyPromise: Promise<void>;
  private nextCallId = 1;
  private dead: Error | null = null;
  private closing: Promise<void> | null = null;

  constructor(private readonly opts: HarvesterOptions) {
    if (!(opts.maxQueueBytes > 0)) throw new Error('maxQueueBytes must be positive');
    const init: HarvestWorkerInit = {
      dir: opts.dir,
      sigma: { codec: opts.sigma ?? 'f16', projectionPath: opts.projectionPath },
      maxShardBytes: opts.maxShardBytes,
      maxShardAgeMs: opts.maxShardAgeMs,
      journalSyncMs: opts.journalSyncMs,
      counters: this.counters.buffer as SharedArrayBuffer,
    };
    this.worker = new Worker(new URL('./worker-entry.mjs', import.meta.url), { workerData: init });
    this.producer = new HarvestProducer(this.worker, this.counters, opts.maxQueueBytes);
    this.readyPromise = new Promise((resolve, reject) => {
      this.worker.on('message', (msg: FromHarvestWorker) => {
        if (msg.type === 'ready') resolve();
        else if (msg.type === 'initError') {
          reject(new Error(`harvest writer failed to start: ${msg.message}`));
          this.die(new Error(msg.message));
        } else this.onMessage(msg);
      });
      this.worker.on('error', (err) => {
        reject(err);
        this.die(err);
      });
      this.worker.on('exit', (code) => {
        const err = new Error(`harvest writer exited (code ${code})`);
        reject(err);
        this.die(err);
      });
    });
    // Callers that never await ready() must not see an unhandled rejection; offer() reports by dropping.
    this.readyPromise.catch(() => {});
  }

  /** Resolves once the writer is running (σ loaded, folder created); rejects with the reason otherwise. */
  ready(): Promise<void> {
    return this.readyPromise;
  }

  /**
   * Queues a finished sequence for writing, or drops it whole when the queue is full (or the writer
   * is gone). Takes ownership of the sequence's typed arrays (their buffers are transferred). Never
   * blocks; never throws for a full queue.
   */
  offer(seq: HarvestedSequence): boolean {
    return this.producer.offer(seq);
  }

  /** Writes every open shard and waits for their index callbacks (for SIGTERM). */
  async flush(): Promise<void> {
    await this.call({ op: 'flush' });
  }

  /**
   * Resolves once every sequence offered here before the call is in its shard's journal (or was
   * refused): the writer handles messages in the order they were posted, so a call answered after
   * the offers is answered after their appends. Offers through producer ports are not ordered with it.
   */
  async journaled(): Promise<void> {
    await this.call({ op: 'sync' });
  }

  /** Rebuilds shards from journals left by a crash; call once at start, then `rescan`. */
  recover(): Promise<RecoveryReport> {
    return this.call({ op: 'recover' });
  }

  /** Reports, through onShardFinished, valid shards on disk whose ids are not in `knownIds`. */
  rescan(knownIds: Iterable<string>): Promise<RescanReport> {
    return this.call({ op: 'rescan', knownIds: [...knownIds] });
  }

  /** Deletes all of a tenant's harvest files (open shard, journals, shards indexed or not). */
  forgetTenant(tenantId: string | null): Promise<ForgetReport> {
    return this.call({ op: 'forget', tenantId });
  }

  /**
   * A port and the shared queue counters for another thread (the engine worker) to offer sequences
   * directly with `HarvestProducer.fromHandle`: same queue bound, same stats. Transfer `port`.
   */
  createProducerPort(): HarvestProducerHandle {
    const { port1, port2 } = new MessageChannel();
    this.worker.postMessage({ type: 'port', port: port2 } satisfies ToHarvestWorker, [port2]);
    return { port: port1, counters: this.counters.buffer as SharedArrayBuffer, maxQueueBytes: this.opts.maxQueueBytes };
  }

  stats(): HarvestStats {
    return this.counters.snapshot();
  }

  /** Flushes, then stops the worker. Later offers are counted drops. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        if (!this.dead) await this.call({ op: 'close' });
      } finally {
        this.producer.alive = false;
        await this.worker.terminate();
      }
    })();
    return this.closing;
  }

  private call<K extends WorkerCall['op']>(call: Extract<WorkerCall, { op: K }>): Promise<CallResults[K]> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextCallId++;
    return new Promise<CallResults[K]>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as PendingCall['resolve'], reject });
      this.worker.postMessage({ type: 'call', id, call } satisfies ToHarvestWorker);
    });
  }

  private onMessage(msg: FromHarvestWorker): void {
    switch (msg.type) {
      case 'shard':
        void this.index(msg.info);
        return;
      case 'result':
      case 'callError': {
        const call = this.calls.get(msg.id);
        this.calls.delete(msg.id);
        if (msg.type === 'result') call?.resolve(msg.value);
        else call?.reject(new Error(msg.message));
        return;
      }
      case 'error':
        this.reportError(new Error(`harvest ${msg.context}: ${msg.message}`));
        return;
      default:
        return;
    }
  }

  private async index(info: ShardInfo): Promise<void> {
    let error: string | null = null;
    try {
      await this.opts.onShardFinished(info);
    } catch (err) {
      error = err instanceof Error ? err.message : String(err);
    }
    if (!this.dead) this.worker.postMessage({ type: 'indexed', shardId: info.id, error } satisfies ToHarvestWorker);
  }

  private reportError(err: Error): void {
    if (this.opts.onError) this.opts.onError(err);
    else console.error(err.message);
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    this.producer.alive = false;
    for (const call of this.calls.values()) call.reject(err);
    this.calls.clear();
  }
}
