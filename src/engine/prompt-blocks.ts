import { concatFloat32 } from '../core/float-arrays.js';
import type { KvPool } from './kv-pool.js';
import type { BodyResult } from './model-runner.js';
import type { PrefixBlock, PrefixCache } from './prefix-cache.js';

/** Cached positions a sequence starts from: their tokens and the base's rows for them. */
export interface RestoredPrefix {
  ids: number[];
  body: BodyResult;
  /** The cached blocks' names, in order. */
  names: string[];
}

/**
 * One sequence's prompt as prefix-cache blocks: what it found cached when it was admitted, and the
 * blocks it completes as its prompt is read, which it adds to the cache. The base's rows of a block
 * arrive over one or more prompt chunks (chunks need not align with blocks), so the rows since the
 * last complete block wait in `tail`.
 */
export class PromptBlocks {
  /** Blocks from the start that are complete (found in the cache or computed). */
  private done = 0;
  private names: string[] = [];
  private found: PrefixBlock[] | null = null;
  private tail: BodyResult | null = null;

  constructor(
    private readonly cache: PrefixCache,
    readonly namespace: string,
    private readonly promptIds: number[],
    private readonly hiddenSize: number,
  ) {}

  /** Tokens the cache holds for this prompt (looked up once, at the first call). */
  cachedTokens(): number {
    if (!this.found) {
      const { blocks, names } = this.cache.lookup(this.namespace, this.promptIds);
      this.found = blocks;
      this.names = names;
    }
    return this.found.length * this.cache.blockTokens;
  }

  /**
   * Writes the cached blocks into the sequence's (fresh, big enough) pool slot and returns the
   * prefix it now starts from; null when nothing was cached. The blocks are copies, so evicting
   * them later changes nothing here.
   */
  restore(pool: KvPool, slot: number): RestoredPrefix | null {
    const tokens = this.cachedTokens();
    const blocks = this.found ?? [];
    this.found = [];
    if (tokens === 0) return null;
    const b = this.cache.blockTokens;
    blocks.forEach((block, i) => pool.writePositions(slot, i * b, b, block.kv));
    pool.setLength(slot, tokens);
    this.done = blocks.length;
    const layers = new Map<number, Float32Array>();
    for (const k of blocks[0].layers.keys()) layers.set(k, concatFloat32(blocks.map((bl) => bl.layers.get(k)!)));
    return { ids: this.promptIds.slice(0, tokens), body: { hidden: concatFloat32(blocks.map((bl) => bl.hidden)), layers }, names: blocks.map((bl) => bl.hash) };
  }

  /**
   * After a body pass that fed this prompt's next `fed` tokens into `slot` (`body` holds their
   * rows): every block now complete goes into the cache, within `limit` bytes.
   */
  afterChunk(pool: KvPool, slot: number, body: BodyResult, fed: number, limit: number): void {
    const d = this.hiddenSize;
    const b = this.cache.blockTokens;
    this.tail = appendRows(this.tail, body, fed * d);
    const complete = Math.floor(Math.min(pool.length(slot), this.promptIds.length) / b);
    if (complete > this.names.length) this.names = this.cache.chain(this.namespace, this.promptIds, complete, this.names);
    while (this.done < complete) {
      const name = this.names[this.done];
      if (!this.cache.has(name)) {
        const layers = new Map<number, Float32Array>();
        for (const [k, rows] of this.tail.layers) layers.set(k, rows.slice(0, b * d));
        this.cache.insert(
          { hash: name, namespace: this.namespace, kv: pool.readPositions(slot, this.done * b, b), hidden: this.tail.hidden.slice(0, b * d), layers },
          limit,
        );
      }
      this.tail = dropRows(this.tail, b * d);
      this.done++;
    }
  }
}


/** `rows` floats of each of body's arrays appended to `tail` (copied: the body's arrays are the pass's outputs). */
function appendRows(tail: BodyResult | null, body: BodyResult, floats: number): BodyResult {
  const join = (a: Float32Array | undefined, b: Float32Array) => (a && a.length > 0 ? concatFloat32([a, b.subarray(0, floats)]) : b.slice(0, floats));
  const layers = new Map<number, Float32Array>();
  for (const [k, rows] of body.layers) layers.set(k, join(tail?.layers.get(k), rows));
  return { hidden: join(tail?.hidden, body.hidden), layers };
}

function dropRows(tail: BodyResult, floats: number): BodyResult {
  const layers = new Map<number, Float32Array>();
  for (const [k, rows] of tail.layers) layers.set(k, rows.subarray(floats));
  return { hidden: tail.hidden.subarray(floats), layers };
}
