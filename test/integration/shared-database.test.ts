import fs from 'node:fs';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { SCHEMA_VERSION } from '../../src/store/migrations.js';
import { api } from '../helpers/admin.js';
import { adminUrl, POSTGRES_AVAILABLE, testDatabase, type TestDatabase } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';

/**
 * Two gateways on one PostgreSQL database (CARRYON_DATABASE_URL), each with its own data folder:
 * what one writes through its admin API, the other sees (keys it cached within a second, through
 * the change feed: test/integration/replica-changes.test.ts). Skips
 * without CARRYON_TEST_DATABASE_URL, unless CARRYON_POSTGRES_REQUIRED=1 (then the helper fails the run).
 */
describe.runIf(POSTGRES_AVAILABLE)('two gateways on one PostgreSQL database', () => {
  let database: TestDatabase;
  let a: TestGateway;
  let b: TestGateway;

  beforeAll(async () => {
    database = await testDatabase('postgres');
    // Booted together: both race to migrate the empty database and to sync the configured keys.
    [a, b] = await Promise.all(['a', 'b'].map((name) => startTestGateway({ CARRYON_DATA_DIR: freshDataDir(`carryon-shared-${name}-`), ...database.env })));
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await database?.drop();
    for (const g of [a, b]) if (g) fs.rmSync(g.dataDir, { recursive: true, force: true });
  });

  const models = (g: TestGateway, key: string) => new OpenAI({ baseURL: `${g.url}/v1`, apiKey: key, maxRetries: 0 }).models.list();
  /** `key` is refused on `g` within a second (the change feed's NOTIFY arrives just after the commit). */
  const refusedSoon = async (g: TestGateway, key: string) => {
    const deadline = Date.now() + 1_000;
    while ((await api(g, 'GET', '/v1/models', key)).status !== 401) {
      if (Date.now() > deadline) throw new Error('the key is still accepted after 1 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    await expect(models(g, key)).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
  };

  it('booting together, the schema was migrated once and the configured keys stored once', async () => {
    const applied = await a.store.db.query<{ version: number }>('SELECT version FROM carryon_migrations ORDER BY version');
    expect(applied.map((r) => r.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    const config = await b.store.db.query<{ name: string }>("SELECT name FROM api_keys WHERE origin = 'config' ORDER BY name");
    expect(config.map((k) => k.name)).toEqual(['CARRYON_ADMIN_KEY', 'CARRYON_API_KEYS[0]']);
    expect(await a.store.db.query('SELECT id FROM tenants')).toEqual([{ id: 'default' }]);
  });

  it('a tenant and key created on A authenticate on B; revoked on A, refused on B within a second', async () => {
    expect((await api(a, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'shared' })).status).toBe(201);
    const created = await api<CreatedApiKeyObject>(a, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'shared' });
    expect(created.status, created.text).toBe(201);
    const { key, id } = created.json;
    expect((await models(b, key)).data.map((m) => m.id)).toContain('stories260K');
    // B's admin API lists what A created.
    expect((await api<{ data: Array<{ id: string }> }>(b, 'GET', '/admin/keys?tenant=shared', ADMIN_KEY)).json.data.map((k) => k.id)).toEqual([id]);

    expect((await api(a, 'DELETE', `/admin/keys/${id}`, ADMIN_KEY)).status).toBe(200);
    await refusedSoon(b, key);
    await expect(models(a, key)).rejects.toMatchObject({ status: 401 });
  });

  it('a tenant deleted on B is gone on A: its keys refused, the id free again', async () => {
    expect((await api(b, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'brief' })).status).toBe(201);
    const { key } = (await api<CreatedApiKeyObject>(b, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'brief' })).json;
    expect((await models(a, key)).data.length).toBeGreaterThan(0);
    expect((await api(b, 'DELETE', '/admin/tenants/brief', ADMIN_KEY)).status).toBe(200);
    await refusedSoon(a, key);
    expect((await api(a, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'brief' })).status).toBe(201);
  });
});

describe.runIf(POSTGRES_AVAILABLE)('a gateway whose database is unusable does not start', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  const dataDir = () => {
    const d = freshDataDir('carryon-bad-database-');
    dirs.push(d);
    return d;
  };

  it('a server that cannot be reached: the message says where, without the password', async () => {
    const url = new URL(adminUrl());
    url.password = 'hunter2-secret';
    url.port = '1'; // nothing listens on port 1
    const err = await startTestGateway({ CARRYON_DATA_DIR: dataDir(), CARRYON_DATABASE_URL: url.toString() }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/cannot connect to PostgreSQL at .*:\*\*\*@127\.0\.0\.1:1\//);
    expect((err as Error).message).not.toContain('hunter2-secret');
  });

  it('a database written by a newer gateway: refused, naming both versions', async () => {
    const db = await testDatabase('postgres');
    try {
      const first = await startTestGateway({ CARRYON_DATA_DIR: dataDir(), ...db.env });
      await first.store.db.run('INSERT INTO carryon_migrations (version, applied_at) VALUES (?, ?)', [SCHEMA_VERSION + 1, new Date().toISOString()]);
      await first.close();
      const err = await startTestGateway({ CARRYON_DATA_DIR: dataDir(), ...db.env }).catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this gateway knows \\(${SCHEMA_VERSION}\\); upgrade the gateway`));
    } finally {
      await db.drop();
    }
  });
});
