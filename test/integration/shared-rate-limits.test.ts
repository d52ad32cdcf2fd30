import fs from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POSTGRES_AVAILABLE, testDatabase, type TestDatabase } from '../helpers/databases.js';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * Two gateways on one PostgreSQL database with a per-key limit of 4 requests a minute: the limit is
 * the key's, not each replica's. Skips without CARRYON_TEST_DATABASE_URL, unless
 * CARRYON_POSTGRES_REQUIRED=1 (then the helper fails the run).
 */
describe.runIf(POSTGRES_AVAILABLE)('per-key rate limits across two replicas', () => {
  let database: TestDatabase;
  let a: TestGateway;
  let b: TestGateway;

  beforeAll(async () => {
    database = await testDatabase('postgres');
    [a, b] = await Promise.all(
      ['a', 'b'].map((name) =>
        startTestGateway({
          CARRYON_DATA_DIR: freshDataDir(`carryon-rate-${name}-`),
          CARRYON_RATE_LIMIT_RPM: '4',
          CARRYON_RATE_LIMIT_SYNC_MS: '100',
          ...database.env,
        }),
      ),
    );
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await database?.drop();
    for (const g of [a, b]) if (g) fs.rmSync(g.dataDir, { recursive: true, force: true });
  });

  async function complete(g: TestGateway): Promise<{ status: number; remaining: string | undefined }> {
    const res = await request(`${g.url}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${USER_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 2, temperature: 0 }),
    });
    await res.body.text();
    return { status: res.statusCode, remaining: res.headers['x-ratelimit-remaining-requests'] as string | undefined };
  }

  it('two requests on A and two on B use up the key: after a sync both refuse, and the row in the database says so', async () => {
    expect((await complete(a)).status).toBe(200);
    expect((await complete(a)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 400)); // a few syncs: B hears of A's two
    const onB = await complete(b);
    expect(onB.status).toBe(200);
    expect(onB.remaining).toBe('1'); // B's own bucket alone would have said 3
    expect((await complete(b)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 400));
    expect((await complete(a)).status).toBe(429);
    expect((await complete(b)).status).toBe(429);
    const rows = await a.store.db.query<{ kind: string; level: number }>("SELECT kind, level FROM rate_buckets WHERE kind = 'requests'");
    expect(rows).toHaveLength(1);
    expect(rows[0].level).toBeLessThan(1);
  });
});
