/**
 * The non-blocking entry to the harvest queue. `offer` reserves the sequence's bytes in the shared
 * queue counter and posts it with its buffers transferred, or drops the whole sequence when the queue
 * is full. It never waits: no lock, no await, no disk. Used by `Harvester` on the serving thread; an
 * engine worker can build one from `Harvester.createProducerPort()` to post without a main-thread hop.
 */
import type { MessagePort, TransferListItem } from 'node:worker_threads';
import type { SequenceMessage } from './worker-messages.js';
import { HarvestCounters } from './stats.js';
import type { HarvestedSequence, HarvestSink } from './types.js';

/** What an engine worker needs to produce into the harvest queue (all of it is transferable/shareable). */
export interface HarvestProducerHandle {
  port: MessagePort;
  counters: SharedArrayBuffer;
  maxQueueBytes: number;
}

interface PostTarget {
  postMessage(value: SequenceMessage, transferList: readonly TransferListItem[]): void;
}

/** Fixed cost per sequence (ids, strings, message envelope), so tiny sequences still count. */
const SEQUENCE_OVERHEAD_BYTES = 256;

export function sequenceQueueBytes(seq: HarvestedSequence): number {
  let n = SEQUENCE_OVERHEAD_BYTES + seq.tokenIds.byteLength + seq.targetIds.byteLength + seq.isCompletion.byteLength;
  for (const h of seq.hidden) n += h.byteLength;
  return n + 2 * (seq.requestId.length + (seq.carryOnId?.length ?? 0) + (seq.tenantId?.length ?? 0));
}

export class HarvestProducer implements HarvestSink {
  /** Cleared when the writer is gone: every later offer is a counted drop. */
  alive = true;

  constructor(
    private readonly target: PostTarget,
    readonly counters: HarvestCounters,
    readonly maxQueueBytes: number,
  ) {}

  /** In an engine worker: the handle received from `Harvester.createProducerPort()`. */
  static fromHandle(handle: HarvestProducerHandle): HarvestProducer {
    return new HarvestProducer(handle.port, new HarvestCounters(handle.counters), handle.maxQueueBytes);
  }

  /**
   * Hands the sequence to the writer, taking ownership of its arrays (their buffers are transferred
   * and detached here), or drops it whole. True if queued.
   */
  offer(seq: HarvestedSequence): boolean {
    const bytes = sequenceQueueBytes(seq);
    if (!this.alive || !this.counters.tryReserve(bytes, this.maxQueueBytes)) return this.drop(bytes);
    try {
      const owned = ownedCopy(seq);
      this.target.postMessage({ type: 'seq', seq: owned.seq, bytes }, owned.transfer);
    } catch {
      // Not cloneable (e.g. an already-detached buffer): a drop, never an exception into serving code.
      this.counters.release(bytes);
      return this.drop(bytes);
    }
    this.counters.add('accepted');
    return true;
  }

  private drop(bytes: number): false {
    this.counters.add('dropped');
    this.counters.add('droppedBytes', bytes);
    return false;
  }
}

/**
 * Arrays that own their whole ArrayBuffer are transferred as they are (O(1)). A view into a larger
 * buffer (a subarray of an ORT output, a pooled Buffer) is copied first: transferring its buffer would
 * detach memory the caller still uses, and cloning it would copy the entire underlying buffer.
 */
function ownedCopy(seq: HarvestedSequence): { seq: HarvestedSequence; transfer: ArrayBuffer[] } {
  const transfer = new Set<ArrayBuffer>();
  const own = <T extends Float32Array | Int32Array | Uint8Array>(a: T): T => {
    const whole = a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;
    const out = whole && !transfer.has(a.buffer) ? a : (a.slice() as T);
    transfer.add(out.buffer as ArrayBuffer);
    return out;
  };
  const out: HarvestedSequence = {
    ...seq,
    layers: [...seq.layers],
    hidden: seq.hidden.map(own),
    tokenIds: own(seq.tokenIds),
    targetIds: own(seq.targetIds),
    isCompletion: own(seq.isCompletion),
  };
  return { seq: out, transfer: [...transfer] };
}
