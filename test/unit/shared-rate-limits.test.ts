import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RateLimiter, type SharedRateBuckets } from '../../src/serving/rate-limit.js';
import { Store } from '../../src/store/store.js';

/**
 * Two rate limiters standing for two replicas, on one store's shared buckets (the real repository
 * and SQL, on SQLite here; test/integration/shared-rate-limits.test.ts runs two gateways on
 * PostgreSQL), with one clock the test moves.
 */
let store: Store | null = null;
let dir = '';
afterEach(async () => {
  await store?.end();
  store = null;
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function replicas(limits: { requestsPerMinute: number; tokensPerMinute: number }, shared: SharedRateBuckets, clock: { t: number }) {
  const problems: Array<string | null> = [];
  const make = () => new RateLimiter(limits, () => clock.t, shared, (p) => problems.push(p));
  return { a: make(), b: make(), problems };
}

async function openStore(): Promise<Store> {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-rate-'));
  store = await Store.connect({ dataDir: dir });
  return store;
}

describe('rate limits shared by replicas', () => {
  it('requests admitted on either replica count against one limit once they have synced', async () => {
    const clock = { t: 1_000_000 };
    const { a, b } = replicas({ requestsPerMinute: 6, tokensPerMinute: 0 }, (await openStore()).rateBuckets, clock);
    for (let i = 0; i < 3; i++) expect(a.admit('key-1').allowed).toBe(true);
    for (let i = 0; i < 3; i++) expect(b.admit('key-1').allowed).toBe(true);
    await a.sync();
    await b.sync();
    await a.sync(); // A learns of B's three
    expect(a.admit('key-1')).toMatchObject({ allowed: false, limitedBy: 'requests' });
    expect(b.admit('key-1')).toMatchObject({ allowed: false, limitedBy: 'requests' });
    // Another key has its own bucket.
    expect(b.admit('key-2').allowed).toBe(true);

    // Ten seconds refill one request (6 per minute), for both replicas together.
    clock.t += 10_000;
    expect(a.admit('key-1').allowed).toBe(true);
    await a.sync();
    await b.sync();
    expect(b.admit('key-1').allowed).toBe(false);
    expect(a.admit('key-1').allowed).toBe(false);
  });

  it("a key's first request on a replica waits for the key's shared level, so a key spent elsewhere is refused at once", async () => {
    const clock = { t: 2_000_000 };
    const { a, b } = replicas({ requestsPerMinute: 4, tokensPerMinute: 0 }, (await openStore()).rateBuckets, clock);
    for (let i = 0; i < 4; i++) expect(a.admit('key-1').allowed).toBe(true);
    await a.sync();
    b.startSync(60_000); // the timer never fires in this test: only warm() reads the store
    try {
      await b.warm('key-1');
      expect(b.admit('key-1')).toMatchObject({ allowed: false, limitedBy: 'requests' });
      await b.warm('key-3');
      expect(b.admit('key-3').allowed).toBe(true);
    } finally {
      await b.stopSync();
    }
  });

  it('tokens charged on one replica are refused on the other', async () => {
    const clock = { t: 5_000_000 };
    const { a, b } = replicas({ requestsPerMinute: 0, tokensPerMinute: 100 }, (await openStore()).rateBuckets, clock);
    expect(a.admit('key-1').allowed).toBe(true);
    a.charge('key-1', 150); // a long completion borrows from the next minute
    expect(b.admit('key-1').allowed).toBe(true); // B has not heard yet
    await a.sync();
    await b.sync();
    expect(b.admit('key-1')).toMatchObject({ allowed: false, limitedBy: 'tokens' });
    expect(Number(b.admit('key-1').headers['x-ratelimit-remaining-tokens'])).toBe(0);
  });

  it('while the shared store fails, each replica limits alone, says so once, and its spending counts once the store is back', async () => {
    const clock = { t: 9_000_000 };
    const real = (await openStore()).rateBuckets;
    let down = true;
    const flaky: SharedRateBuckets = {
      exchange: (use) => (down ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')) : real.exchange(use)),
    };
    const { a, b, problems } = replicas({ requestsPerMinute: 4, tokensPerMinute: 0 }, flaky, clock);
    for (let i = 0; i < 4; i++) expect(a.admit('key-1').allowed).toBe(true);
    await a.sync();
    await a.sync();
    expect(problems).toEqual(['connect ECONNREFUSED 127.0.0.1:5432']);
    expect(a.admit('key-1').allowed).toBe(false); // its own bucket still limits
    expect(b.admit('key-1').allowed).toBe(true); // B alone knows nothing of A's four
    down = false;
    await a.sync();
    expect(problems).toEqual(['connect ECONNREFUSED 127.0.0.1:5432', null]);
    await b.sync();
    expect(b.admit('key-1').allowed).toBe(false);
  });
});
