/**
 * Harvest counters in one BigInt64Array. Over a SharedArrayBuffer they are shared by the serving
 * thread (which reserves queue bytes and counts drops), the writer worker (which releases queue bytes
 * as it drains and counts what it writes) and any engine-side producer port, all with Atomics, so
 * `stats()` is exact and synchronous on every thread and no counter needs a message round trip.
 */
export const COUNTERS = [
  /** Bytes offered and not yet drained by the writer: the bounded queue's fill. */
  'queuedBytes',
  /** Sequences accepted into the queue. */
  'accepted',
  /** Sequences dropped whole because the queue was full (or the writer was gone). */
  'dropped',
  'droppedBytes',
  /** Sequences appended to a journal (durable once fsynced). */
  'journaled',
  /** Sequences in shards written (including recovered ones). */
  'sequencesWritten',
  /** Shard file bytes written (including recovered shards). */
  'bytesWritten',
  'shardsWritten',
  'recoveredShards',
  'recoveredSequences',
  'lostSequences',
  'lostBytes',
  'tempFilesDeleted',
  /** Failures: invalid sequences, disk errors, index callbacks that threw. */
  'errors',
] as const;

export type CounterName = (typeof COUNTERS)[number];
export type HarvestStats = Record<CounterName, number>;

const INDEX = Object.fromEntries(COUNTERS.map((n, i) => [n, i])) as Record<CounterName, number>;

export class HarvestCounters {
  private readonly cells: BigInt64Array;

  constructor(readonly buffer: SharedArrayBuffer | ArrayBuffer = new SharedArrayBuffer(COUNTERS.length * 8)) {
    if (buffer.byteLength < COUNTERS.length * 8) throw new Error('counter buffer too small');
    this.cells = new BigInt64Array(buffer, 0, COUNTERS.length);
  }

  add(name: CounterName, n = 1): void {
    if (n !== 0) Atomics.add(this.cells, INDEX[name], BigInt(n));
  }

  get(name: CounterName): number {
    return Number(Atomics.load(this.cells, INDEX[name]));
  }

  snapshot(): HarvestStats {
    return Object.fromEntries(COUNTERS.map((n) => [n, this.get(n)])) as HarvestStats;
  }

  /**
   * Claims `bytes` of queue room if the queue stays within `max`. A compare-exchange loop, so several
   * producers (the main thread, engine ports) can never overfill it together.
   */
  tryReserve(bytes: number, max: number): boolean {
    const i = INDEX.queuedBytes;
    const want = BigInt(bytes);
    const limit = BigInt(max);
    for (;;) {
      const cur = Atomics.load(this.cells, i);
      if (cur + want > limit) return false;
      if (Atomics.compareExchange(this.cells, i, cur, cur + want) === cur) return true;
    }
  }

  release(bytes: number): void {
    Atomics.sub(this.cells, INDEX.queuedBytes, BigInt(bytes));
  }
}
