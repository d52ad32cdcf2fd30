import { createHash } from 'node:crypto';
import { ByteBudgetLru } from './byte-budget-lru.js';

/**
 * What one cached block holds for its `blockTokens` positions: the base's keys and values (every
 * layer, in KvPool's per-slot layout, see KvPool.readPositions) and the base's final hidden rows
 * plus any extra layer rows the body exports. The base is frozen, so all of it depends only on the
 * tokens up to the block's end: the same for the base and for every carry-on. The hidden rows are
 * what lets a carry-on (or a harvest capture, or an embedding) read a cached prefix without the base
 * running again.
 */
export interface PrefixBlock {
  hash: string;
  namespace: string;
  kv: Float32Array;
  hidden: Float32Array;
  layers: Map<number, Float32Array>;
}

export interface PrefixCacheCounters {
  /** Prompt tokens looked up (every prompt token of every sequence that may use the cache). */
  queries: number;
  /** Of those, tokens served from the cache. */
  hits: number;
  /** Blocks evicted for space. */
  evictions: number;
}

/**
 * Automatic prefix caching of the frozen base. A prompt is cut into blocks of `blockTokens` tokens;
 * block i is named by a hash chain, sha256(name of block i-1 ‖ its tokens), rooted in the
 * sequence's namespace (its tenant by default), so equal names mean equal prefixes within one
 * namespace and a tenant never hits another tenant's blocks. Blocks are copies (a sequence's KV
 * lives in its pool slot, which the body reads in place), so no live sequence pins one and every
 * block may be evicted, least recently used first. The caller bounds the bytes (`limit`) by what the
 * live KV pool leaves of the engine's budget: the cache only ever uses memory admission does not.
 */
export class PrefixCache {
  private readonly blocks: ByteBudgetLru<PrefixBlock>;
  private counters: PrefixCacheCounters = { queries: 0, hits: 0, evictions: 0 };

  constructor(
    readonly blockTokens: number,
    /** Bytes one cached position costs: keys and values of every layer, plus the hidden rows. */
    readonly bytesPerToken: number,
    budgetBytes: number,
  ) {
    if (!Number.isInteger(blockTokens) || blockTokens < 1) throw new Error(`prefix cache block of ${blockTokens} tokens`);
    this.blocks = new ByteBudgetLru(budgetBytes, () => this.counters.evictions++);
  }

  get bytes(): number {
    return this.blocks.bytes;
  }

  get size(): number {
    return this.blocks.size;
  }

  /** The bytes one block takes. */
  get blockBytes(): number {
    return this.blockTokens * this.bytesPerToken;
  }

  /** Counters since the last call (the step loop reports them per step). */
  takeCounters(): PrefixCacheCounters {
    const c = this.counters;
    this.counters = { queries: 0, hits: 0, evictions: 0 };
    return c;
  }

  /** The chain names of the first `count` full blocks of `ids`, continuing from `from` names already known. */
  chain(namespace: string, ids: number[], count: number, from: string[] = []): string[] {
    const names = from.slice(0, count);
    for (let b = names.length; b < count; b++) {
      const h = createHash('sha256');
      h.update(b === 0 ? `prefix-root\0${namespace}` : names[b - 1]);
      const tokens = Int32Array.from(ids.slice(b * this.blockTokens, (b + 1) * this.blockTokens));
      h.update(new Uint8Array(tokens.buffer));
      names.push(h.digest('base64'));
    }
    return names;
  }

  /**
   * The longest cached run of blocks at the start of `ids`, leaving at least one token to compute
   * (its logits are needed). Counts the query and the hit. The blocks found become the most
   * recently used, the first of them last: a chain's head outlives its tail, since without it the
   * tail can never be found again.
   */
  lookup(namespace: string, ids: number[]): { blocks: PrefixBlock[]; names: string[] } {
    this.counters.queries += ids.length;
    const names = this.chain(namespace, ids, Math.floor((ids.length - 1) / this.blockTokens));
    let found = 0;
    while (found < names.length && this.blocks.has(names[found])) found++;
    const blocks = new Array<PrefixBlock>(found);
    for (let i = found - 1; i >= 0; i--) blocks[i] = this.blocks.get(names[i])!;
    this.counters.hits += blocks.length * this.blockTokens;
    return { blocks, names };
  }

  has(name: string): boolean {
    return this.blocks.has(name);
  }

  /**
   * Keeps a block within `limit` bytes (the lesser of this cache's budget and what the live pool
   * leaves), evicting least recently used blocks for it; a block that cannot fit is not kept.
   */
  insert(block: PrefixBlock, limit: number): boolean {
    return this.blocks.insert(block.hash, block, this.blockBytes, limit);
  }

  /** Evicts least recently used blocks until at most `bytes` are held. */
  shrinkTo(bytes: number): void {
    this.blocks.shrinkTo(bytes);
  }

  /** Drops every block, or a namespace's (a deleted tenant's, say). Returns how many went. */
  clear(namespace?: string): number {
    return this.blocks.deleteWhere(namespace === undefined ? undefined : (block) => block.namespace === namespace);
  }
}
