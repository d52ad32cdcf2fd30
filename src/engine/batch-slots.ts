import type { KvPool } from './kv-pool.js';

/** What the slot table needs of a sequence: the pool slot it owns (-1 once it has left). */
export interface SlotHolder {
  slot: number;
}

/**
 * The one owner of the KV pool's slot order. Decoding sequences hold slots [0, decoding) and
 * sequences still reading their prompt the slots behind them, so every batched decode is one
 * contiguous run of pool rows. Slots move only when a sequence leaves or finishes its prompt
 * (one slot copy each), never per step.
 */
export class BatchSlots<T extends SlotHolder> {
  private readonly rows: T[] = [];
  private decodingCount = 0;

  constructor(
    readonly pool: KvPool,
    private readonly contextLength: number,
  ) {}

  get size(): number {
    return this.rows.length;
  }

  get decoders(): T[] {
    return this.rows.slice(0, this.decodingCount);
  }

  get prefillers(): T[] {
    return this.rows.slice(this.decodingCount);
  }

  get all(): readonly T[] {
    return this.rows;
  }

  /** Whether `seq` still holds its slot (it has not left). */
  holds(seq: T): boolean {
    return seq.slot >= 0 && this.rows[seq.slot] === seq;
  }

  isDecoding(seq: T): boolean {
    return this.holds(seq) && seq.slot < this.decodingCount;
  }

  /** Gives a newcomer the next slot, as a prefilling row; the pool must already have room for it. */
  push(seq: T): void {
    seq.slot = this.rows.length;
    this.pool.setLength(seq.slot, 0);
    this.rows.push(seq);
  }

  /** Swaps a sequence that finished its prompt into the first prefill slot, then widens the decode range. */
  promote(seq: T): void {
    this.swap(seq.slot, this.decodingCount);
    this.decodingCount++;
  }

  /** Frees a sequence's slot, keeping decode rows and prefill rows each contiguous. */
  remove(seq: T): boolean {
    const i = seq.slot;
    if (!this.holds(seq)) return false;
    if (i < this.decodingCount) {
      this.move(this.decodingCount - 1, i);
      this.decodingCount--;
      this.move(this.rows.length - 1, this.decodingCount);
    } else {
      this.move(this.rows.length - 1, i);
    }
    this.rows.pop();
    this.pool.setLength(this.rows.length, 0); // the vacated slot (the moves above leave it stale)
    seq.slot = -1;
    return true;
  }

  /**
   * Capacity follows the longest row in steps of 64 positions (never past the context): the body
   * reads every row up to the capacity (masked), so spare capacity costs reads on every step, while
   * a regrowth (one copy of the pool) comes only every 64 tokens.
   */
  roundCapacity(positions: number): number {
    return Math.min(Math.max(this.pool.capacity, Math.ceil(positions / 64) * 64), this.contextLength);
  }

  /** Grows the pool's capacity so a row can reach `positions`. */
  reserve(positions: number): void {
    if (positions > this.pool.capacity) this.pool.ensure(this.pool.slots, this.roundCapacity(positions));
  }

  /**
   * Gives memory back once the rows that made the pool big are gone: capacity when the longest
   * live row (`need` positions for its next step) needs under half of it, slots when under a quarter
   * are used. Either costs one copy of the live rows, so it is done only at those thresholds.
   */
  shrink(need: (seq: T) => number): void {
    if (this.rows.length === 0) return;
    const longest = Math.max(...this.rows.map(need));
    const capacity = Math.min(Math.ceil(longest / 64) * 64, this.contextLength);
    const slots = this.rows.length * 4 <= this.pool.slots ? Math.max(this.rows.length * 2, 1) : this.pool.slots;
    if (capacity * 2 <= this.pool.capacity || slots < this.pool.slots) {
      try {
        this.pool.reshape(slots, capacity * 2 <= this.pool.capacity ? capacity : this.pool.capacity);
      } catch {
        // Memory is only given back here; keeping the bigger pool is always correct.
      }
    }
  }

  /** Moves the sequence in slot `from` into slot `to` (whose sequence is leaving). */
  private move(from: number, to: number): void {
    if (from === to) return;
    this.pool.move(from, to);
    this.rows[to] = this.rows[from];
    this.rows[to].slot = to;
  }

  private swap(a: number, b: number): void {
    if (a === b) return;
    this.pool.swap(a, b);
    [this.rows[a], this.rows[b]] = [this.rows[b], this.rows[a]];
    this.rows[a].slot = a;
    this.rows[b].slot = b;
  }
}
