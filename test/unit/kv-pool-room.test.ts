import { describe, expect, it } from 'vitest';
import { ByteBudgetLru } from '../../src/engine/byte-budget-lru.js';
import { KvPool } from '../../src/engine/kv-pool.js';
import { TensorNames } from '../../src/model/tensor-names.js';

/**
 * The pool's spare room for slots (a burst of arrivals grows it without copying) and the byte
 * budgeted LRU both prefix caches keep their entries in.
 */
const geometry = { layers: 2, kvHeads: 2, headDim: 4 };

/** The buffer the body would read layer 0's keys from. */
const keyBuffer = (pool: KvPool): ArrayBufferLike => (pool.bind(0, pool.slots)[TensorNames.pastKey(0)].data as Float32Array).buffer;

function fill(pool: KvPool, slot: number, n: number, base: number): void {
  const data = Float32Array.from({ length: pool.positionFloats(n) }, (_, i) => base + i);
  pool.writePositions(slot, 0, n, data);
  pool.setLength(slot, n);
}

describe('KvPool room for slots', () => {
  it('adds slots within the room without reallocating, keeping every slot and counting only live slots', () => {
    const pool = new KvPool(geometry);
    pool.ensure(1, 8, 4);
    fill(pool, 0, 5, 100);
    const before = keyBuffer(pool);
    expect(pool.slots).toBe(1);
    expect(pool.bytes).toBe(8 * pool.bytesPerPosition);
    pool.ensure(3, 8, 4);
    expect(keyBuffer(pool)).toBe(before);
    expect(pool.slots).toBe(3);
    expect(pool.bytes).toBe(3 * 8 * pool.bytesPerPosition);
    expect(pool.length(0)).toBe(5);
    expect(pool.length(2)).toBe(0);
    expect(Array.from(pool.readPositions(0, 0, 5).subarray(0, 3))).toEqual([100, 101, 102]);
  });

  it('reallocates past the room or for more capacity, and the contents survive', () => {
    const pool = new KvPool(geometry);
    pool.ensure(2, 8, 2);
    fill(pool, 0, 3, 1);
    fill(pool, 1, 8, 1000);
    const expected = [pool.readPositions(0, 0, 3), pool.readPositions(1, 0, 8)];
    const first = keyBuffer(pool);
    pool.ensure(3, 8, 6);
    const second = keyBuffer(pool);
    expect(second).not.toBe(first);
    pool.ensure(6, 8);
    expect(keyBuffer(pool)).toBe(second);
    pool.ensure(6, 16);
    expect(pool.capacity).toBe(16);
    expect(pool.readPositions(0, 0, 3)).toEqual(expected[0]);
    expect(pool.readPositions(1, 0, 8)).toEqual(expected[1]);
  });
});

describe('KvPool room for capacity', () => {
  it('grows capacity in place within the room, moving every slot intact, and gives memory back on shrink', () => {
    const pool = new KvPool(geometry);
    pool.ensure(3, 8, 3);
    fill(pool, 0, 8, 1);
    fill(pool, 1, 2, 500);
    fill(pool, 2, 7, 9000);
    const expected = [pool.readPositions(0, 0, 8), pool.readPositions(1, 0, 2), pool.readPositions(2, 0, 7)];
    pool.makeRoom(4, 40);
    const room = keyBuffer(pool);
    expect(pool.capacity).toBe(8); // the shape and counted bytes stay
    expect(pool.bytes).toBe(3 * 8 * pool.bytesPerPosition);
    for (const cap of [16, 24, 40]) {
      pool.ensure(3, cap);
      expect(keyBuffer(pool), `capacity ${cap}`).toBe(room);
      expect(pool.capacity).toBe(cap);
      expect([pool.readPositions(0, 0, 8), pool.readPositions(1, 0, 2), pool.readPositions(2, 0, 7)]).toEqual(expected);
    }
    // The body reads each slot's positions at the new stride: slot 2, head 1 starts where it should.
    const past = pool.bind(0, 3)[TensorNames.pastKey(0)].data as Float32Array;
    const at = (2 * geometry.kvHeads + 1) * 40 * geometry.headDim;
    expect(past[at]).toBe(expected[2][7 * geometry.headDim]);
    pool.ensure(4, 40); // a fourth slot still fits the room
    expect(keyBuffer(pool)).toBe(room);
    pool.reshape(3, 8); // shrinking allocates exactly, so the room's memory can go
    expect(keyBuffer(pool)).not.toBe(room);
    expect([pool.readPositions(0, 0, 8), pool.readPositions(1, 0, 2), pool.readPositions(2, 0, 7)]).toEqual(expected);
  });
});

describe('ByteBudgetLru', () => {
  it('evicts the least recently used within the lesser of budget and limit, and counts evictions', () => {
    let evicted = 0;
    const lru = new ByteBudgetLru<string>(30, () => evicted++);
    expect(lru.insert('a', 'A', 10, 100)).toBe(true);
    expect(lru.insert('b', 'B', 10, 100)).toBe(true);
    expect(lru.insert('c', 'C', 10, 100)).toBe(true);
    expect(lru.get('a')).toBe('A'); // b is now the oldest
    expect(lru.insert('d', 'D', 10, 100)).toBe(true);
    expect(lru.has('b')).toBe(false);
    expect([lru.has('a'), lru.has('c'), lru.has('d')]).toEqual([true, true, true]);
    expect(evicted).toBe(1);
    expect(lru.insert('e', 'E', 10, 15)).toBe(true); // the live pool leaves 15 bytes: only e stays
    expect(lru.size).toBe(1);
    expect(lru.bytes).toBe(10);
    expect(lru.insert('big', 'X', 40, 100)).toBe(false);
    expect(lru.size).toBe(1);
  });

  it('deletes by predicate without counting evictions', () => {
    let evicted = 0;
    const lru = new ByteBudgetLru<number>(100, () => evicted++);
    for (let i = 0; i < 6; i++) lru.insert(`k${i}`, i, 5, 100);
    expect(lru.deleteWhere((v) => v % 2 === 0)).toBe(3);
    expect(lru.bytes).toBe(15);
    lru.shrinkTo(5);
    expect(lru.size).toBe(1);
    expect(lru.get('k5')).toBe(5);
    expect(evicted).toBe(2);
    expect(lru.deleteWhere()).toBe(1);
    expect(lru.bytes).toBe(0);
  });
});
