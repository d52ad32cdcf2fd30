interface Entry<V> {
  value: V;
  bytes: number;
}

/**
 * Values held under a byte budget, the least recently used evicted first: the bookkeeping both
 * prefix caches (base blocks, carry-on states) share. The caller passes a `limit` with each insert,
 * what the live KV pool leaves of the engine's budget at that moment, so a cache only ever uses
 * memory that admission does not.
 */
export class ByteBudgetLru<V> {
  /** Insertion order is recency order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry<V>>();
  private used = 0;

  constructor(
    private readonly budgetBytes: number,
    /** Called once per entry evicted for space (not for deletes or clears). */
    private readonly onEvict: () => void = () => {},
  ) {}

  get bytes(): number {
    return this.used;
  }

  get size(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** The value, now the most recently used. */
  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.value;
  }

  /**
   * Keeps `value` within the lesser of the budget and `limit`, evicting least recently used entries
   * for it; one that cannot fit is not kept (false). A key already held is only touched.
   */
  insert(key: string, value: V, bytes: number, limit: number): boolean {
    const cap = Math.min(this.budgetBytes, limit);
    if (bytes > cap) return false;
    if (this.get(key) !== undefined) return true;
    this.shrinkTo(cap - bytes);
    this.entries.set(key, { value, bytes });
    this.used += bytes;
    return true;
  }

  /** Evicts least recently used entries until at most `bytes` are held. */
  shrinkTo(bytes: number): void {
    for (const [key, entry] of this.entries) {
      if (this.used <= Math.max(0, bytes)) return;
      this.remove(key, entry);
      this.onEvict();
    }
  }

  /** Drops every entry `match` selects (all of them without one). Returns how many went. */
  deleteWhere(match: (value: V) => boolean = () => true): number {
    let dropped = 0;
    for (const [key, entry] of this.entries) {
      if (!match(entry.value)) continue;
      this.remove(key, entry);
      dropped++;
    }
    return dropped;
  }

  private remove(key: string, entry: Entry<V>): void {
    this.entries.delete(key);
    this.used -= entry.bytes;
  }
}
