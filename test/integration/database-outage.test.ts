import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { api } from '../helpers/admin.js';
import { POSTGRES_AVAILABLE } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { PostgresCluster } from '../helpers/postgres-cluster.js';

/**
 * PostgreSQL stopped under load and started again, with the gateway left running: recently
 * checked keys keep inference going, everything that needs the database answers 503
 * database_unavailable (never a 401), readiness says why, and all of it recovers by itself.
 * The cluster is this file's own (it is stopped mid-test), on its own port.
 */
describe.runIf(POSTGRES_AVAILABLE)('the metadata database goes down and comes back', () => {
  let cluster: PostgresCluster;
  let gw: TestGateway;
  let seenKey: string;
  let seenId: string;
  let unseenKey: string;

  beforeAll(async () => {
    cluster = await PostgresCluster.create();
    gw = await startTestGateway({
      CARRYON_DATA_DIR: freshDataDir('carryon-outage-'),
      CARRYON_DATABASE_URL: cluster.url,
      CARRYON_DATABASE_RECONCILE_SECONDS: '1',
      CARRYON_DATABASE_GRACE_SECONDS: '300',
    });
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' })).status).toBe(201);
    const keys = [];
    for (let i = 0; i < 2; i++) keys.push((await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme' })).json);
    [{ key: seenKey, id: seenId }, { key: unseenKey }] = keys;
  }, 60_000);
  afterAll(async () => {
    await gw?.close();
    cluster?.destroy();
    if (gw) fs.rmSync(gw.dataDir, { recursive: true, force: true });
  });

  /** A short greedy completion on the base model: needs no database once the key is validated. */
  const complete = (key: string) =>
    api<{ error?: { code: string } }>(gw, 'POST', '/v1/completions', key, { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
  const ready = () => api<{ database_unavailable?: { error: string; since: string }; change_feed?: string }>(gw, 'GET', '/health/ready', null);

  async function until(what: string, ok: () => Promise<boolean>, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  it('a restart under load: used keys keep working, the rest is 503 database_unavailable, and everything recovers without a gateway restart', async () => {
    for (const key of [seenKey, USER_KEY]) expect((await complete(key)).status).toBe(200);
    expect((await ready()).json.change_feed).toBe('listening');

    // Load throughout: the keys used just before never see an error.
    let stop = false;
    const failures: string[] = [];
    let served = 0;
    const load = (async () => {
      while (!stop) {
        const rs = await Promise.all([complete(seenKey), complete(USER_KEY)]);
        for (const r of rs) {
          if (r.status === 200) served++;
          else failures.push(`${r.status} ${r.text}`);
        }
      }
    })();

    cluster.stop();
    try {
      const unseen = await complete(unseenKey);
      expect(unseen.status, unseen.text).toBe(503);
      expect(unseen.json.error?.code).toBe('database_unavailable');
      expect(unseen.text).toMatch(/metadata database is unreachable/);
      expect(unseen.headers['retry-after']).toBeDefined();

      const admin = await api<{ error: { code: string } }>(gw, 'GET', '/admin/tenants', ADMIN_KEY);
      expect(admin.status, admin.text).toBe(503);
      expect(admin.json.error.code).toBe('database_unavailable');

      // Readiness names the outage (and stays 200: taking every replica out of its Service would end the grace window's serving).
      await until('readiness reports the outage', async () => (await ready()).json.database_unavailable !== undefined, 5_000);
      const r = await ready();
      expect(r.status).toBe(200);
      expect(r.json.database_unavailable?.error).toBeTruthy();
      expect(r.json.database_unavailable?.since).toMatch(/^\d{4}-/);
      expect(r.text).not.toContain('password');
    } finally {
      cluster.start();
    }

    await until('readiness recovers', async () => {
      const r = await ready();
      return r.json.database_unavailable === undefined && r.json.change_feed === 'listening';
    }, 15_000);
    await until('admin routes recover', async () => (await api(gw, 'GET', '/admin/tenants', ADMIN_KEY)).status === 200, 5_000);
    stop = true;
    await load;
    expect(failures).toEqual([]);
    expect(served).toBeGreaterThan(4);

    // The key never seen before now works; a revocation takes effect again at once.
    await until('a key never seen before works', async () => (await complete(unseenKey)).status === 200, 5_000);
    expect((await api(gw, 'DELETE', `/admin/keys/${seenId}`, ADMIN_KEY)).status).toBe(200);
    expect((await complete(seenKey)).status).toBe(401);
  }, 60_000);
});
