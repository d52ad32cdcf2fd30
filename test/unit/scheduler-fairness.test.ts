import { describe, expect, it } from 'vitest';
import { Scheduler } from '../../src/serving/scheduler.js';

/** Admission order when slots free up: fair between tenants, FIFO within one. */
describe('scheduler fairness', () => {
  it('gives a freed slot to the tenant with the fewest running sequences, then to the one served longest ago', async () => {
    const s = new Scheduler({ maxLive: 2, maxWaiting: 100 });
    const order: string[] = [];
    const releases = new Map<string, () => void>();
    const ask = (name: string, tenant: string) =>
      s.acquire(1, undefined, tenant).then((release) => {
        order.push(name);
        releases.set(name, release);
      });
    const pending = [ask('a1', 'a'), ask('a2', 'a'), ask('a3', 'a'), ask('a4', 'a'), ask('a5', 'a'), ask('b1', 'b'), ask('b2', 'b'), ask('c1', 'c')];
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['a1', 'a2']);
    expect(s.waitingRequests).toBe(6);
    // a holds both slots: the first free one goes to b (none running), the next to c, not to a3.
    releases.get('a1')!();
    await Promise.resolve();
    releases.get('a2')!();
    await Promise.resolve();
    expect(order).toEqual(['a1', 'a2', 'b1', 'c1']);
    // b and c each run one, a none: a goes next; then b (served before c's turn came round again).
    releases.get('c1')!();
    await Promise.resolve();
    expect(order.at(-1)).toBe('a3');
    releases.get('b1')!();
    await Promise.resolve();
    expect(order.at(-1)).toBe('b2');
    for (const name of ['a3', 'b2']) releases.get(name)!();
    await Promise.resolve();
    releases.get('a4')!();
    await Promise.all(pending);
    expect(order).toEqual(['a1', 'a2', 'b1', 'c1', 'a3', 'b2', 'a4', 'a5']);
    for (const r of releases.values()) r();
    expect(s.runningSequences).toBe(0);
    expect(s.runningFor('a')).toBe(0);
  });

  it('stays first come, first served within one tenant, and a request too big to fit does not block smaller ones forever', async () => {
    const s = new Scheduler({ maxLive: 3, maxWaiting: 100 });
    const order: string[] = [];
    const hold = await s.acquire(2, undefined, 't');
    const big = s.acquire(3, undefined, 't').then((r) => (order.push('big'), r));
    const small = s.acquire(1, undefined, 't').then((r) => (order.push('small'), r));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['small']);
    (await small)();
    hold();
    (await big)();
    expect(order).toEqual(['small', 'big']);
  });

  it('grants background work only a slot no request waits for, and says when one frees', async () => {
    const s = new Scheduler({ maxLive: 2, maxWaiting: 10 });
    const spare: number[] = [];
    s.onSpareSlot(() => spare.push(s.runningSequences));
    const background = s.tryAcquireSpare('a');
    expect(background).not.toBeNull();
    const request = await s.acquire(1, undefined, 'b');
    expect(s.tryAcquireSpare('a')).toBeNull(); // full
    const waiting = s.acquire(1, undefined, 'c');
    background!(); // the freed slot goes to the waiting request, not to background work
    const granted = await waiting;
    expect(spare).toEqual([]);
    request();
    expect(spare).toEqual([1]); // now a slot is free and nobody waits
    expect(s.tryAcquireSpare(null)).not.toBeNull();
    granted();
    s.drain();
    expect(s.tryAcquireSpare('a')).toBeNull();
  });
});
