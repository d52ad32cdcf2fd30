import { describe, expect, it } from 'vitest';
import type { CarryOnCache, CarryOnSession } from '../../src/engine/carry-on-session.js';
import { CarryOnPrefixStates } from '../../src/engine/carry-on-states.js';
import { PrefixCache, type PrefixBlock } from '../../src/engine/prefix-cache.js';

const B = 4;
/** One float per position is enough to tell blocks apart here. */
const cache = (budgetBlocks: number) => new PrefixCache(B, 1, budgetBlocks * B);

function store(c: PrefixCache, namespace: string, ids: number[], limit = Infinity): string[] {
  const names = c.chain(namespace, ids, Math.floor(ids.length / B));
  names.forEach((hash, i) => {
    const block: PrefixBlock = { hash, namespace, kv: new Float32Array([i]), hidden: new Float32Array(0), layers: new Map() };
    c.insert(block, limit);
  });
  return names;
}

describe('prefix cache bookkeeping', () => {
  it('names a block by everything before it: same tokens after a different prefix is a different block', () => {
    const c = cache(100);
    const [a0, a1] = c.chain('t', [1, 2, 3, 4, 5, 6, 7, 8], 2);
    const [b0, b1] = c.chain('t', [9, 2, 3, 4, 5, 6, 7, 8], 2);
    expect(a0).not.toBe(b0);
    expect(a1).not.toBe(b1);
    expect(c.chain('t', [1, 2, 3, 4, 5, 6, 7, 8, 9], 2)).toEqual([a0, a1]);
    expect(c.chain('u', [1, 2, 3, 4], 1)[0]).not.toBe(a0);
  });

  it('finds the longest cached run, leaving the last token to compute, within one namespace only', () => {
    const c = cache(100);
    store(c, 't', [1, 2, 3, 4, 5, 6, 7, 8]);
    expect(c.lookup('t', [1, 2, 3, 4, 5, 6, 7, 8, 9]).blocks).toHaveLength(2);
    expect(c.lookup('t', [1, 2, 3, 4, 5, 6, 7, 8]).blocks).toHaveLength(1);
    expect(c.lookup('t', [1, 2, 3, 4, 5, 0, 7, 8, 9]).blocks).toHaveLength(1);
    expect(c.lookup('u', [1, 2, 3, 4, 5, 6, 7, 8, 9]).blocks).toHaveLength(0);
    expect(c.takeCounters()).toEqual({ queries: 9 + 8 + 9 + 9, hits: 8 + 4 + 4, evictions: 0 });
  });

  it('evicts least recently used blocks, a chain’s tail before its head, within the lesser of budget and limit', () => {
    const c = cache(3);
    store(c, 't', [1, 2, 3, 4, 5, 6, 7, 8]);
    c.lookup('t', [1, 2, 3, 4, 5, 6, 7, 8, 9]); // touches the chain: head most recent
    store(c, 't', [9, 9, 9, 9]);
    store(c, 't', [8, 8, 8, 8]); // over budget: the old chain's tail goes first
    expect(c.size).toBe(3);
    expect(c.lookup('t', [1, 2, 3, 4, 5, 6, 7, 8, 9]).blocks).toHaveLength(1);
    expect(c.takeCounters().evictions).toBe(1);
    c.shrinkTo(B);
    expect(c.size).toBe(1);
    expect(c.bytes).toBe(B);
    expect(c.insert({ hash: 'x', namespace: 't', kv: new Float32Array(0), hidden: new Float32Array(0), layers: new Map() }, B - 1)).toBe(false);
  });

  it('clears one namespace or all', () => {
    const c = cache(100);
    store(c, 't', [1, 2, 3, 4]);
    store(c, 'u', [1, 2, 3, 4]);
    expect(c.clear('t')).toBe(1);
    expect(c.lookup('u', [1, 2, 3, 4, 5]).blocks).toHaveLength(1);
    expect(c.clear()).toBe(1);
    expect(c.bytes).toBe(0);
  });
});

describe('carry-on states over cached prefixes', () => {
  const tensor = (floats: number) => ({ data: new Float32Array(floats) }) as unknown as import('onnxruntime-node').Tensor;
  const cacheOf = (length: number, floats: number): CarryOnCache => ({ length, tensors: new Map([['past_key_0', tensor(floats)]]), secondary: [] });
  const session = () => ({}) as CarryOnSession;

  it('resumes from the longest kept state along the prefix, for that session only', () => {
    const states = new CarryOnPrefixStates(1 << 20);
    const a = session();
    states.keep(a, 'n1', cacheOf(4, 10), Infinity);
    const into = cacheOf(0, 0);
    expect(states.restore(a, ['n0', 'n1', 'n2'], B, into)).toBe(2 * B);
    expect(into.length).toBe(4);
    expect(states.restore(session(), ['n0', 'n1'], B, cacheOf(0, 0))).toBe(0);
    expect(states.restore(a, ['n0'], B, cacheOf(0, 0))).toBe(0);
  });

  it('stays within its budget and forgets a released session', () => {
    const states = new CarryOnPrefixStates(100);
    const a = session();
    states.keep(a, 'x', cacheOf(4, 10), Infinity);
    states.keep(a, 'y', cacheOf(4, 10), Infinity);
    states.keep(a, 'z', cacheOf(4, 10), Infinity);
    expect(states.bytes).toBe(80); // 40 bytes each, the oldest evicted
    expect(states.restore(a, ['x'], B, cacheOf(0, 0))).toBe(0);
    states.forget(a);
    expect(states.bytes).toBe(0);
    expect(states.restore(a, ['z'], B, cacheOf(0, 0))).toBe(0);
  });
});
