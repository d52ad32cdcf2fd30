import { describe, expect, it } from 'vitest';
import { SCHEMA_VERSION } from '../../src/store/migrations.js';
import { Store } from '../../src/store/store.js';
import { authStoreSuite } from '../helpers/auth-store-suite.js';
import { adminUrl, POSTGRES_AVAILABLE, testDatabase, type TestDatabase } from '../helpers/databases.js';

// test/unit/auth-store.test.ts runs the suite on SQLite; this is its PostgreSQL pass (it needs a server).
// Without CARRYON_TEST_DATABASE_URL it skips, unless CARRYON_POSTGRES_REQUIRED=1, where the helper fails the run.
describe.runIf(POSTGRES_AVAILABLE)('on PostgreSQL', () => {
  const databases = new Map<Store, TestDatabase>();
  authStoreSuite(
    async () => {
      const db = await testDatabase('postgres');
      const store = await Store.connect({ dataDir: '/nonexistent', url: db.url, poolSize: 4 });
      databases.set(store, db);
      return store;
    },
    async (store) => {
      await store.end();
      await databases.get(store)!.drop();
      databases.delete(store);
    },
  );

  describe('PostgreSQL schema', () => {
    it('stores booting together migrate once; reopening changes nothing', async () => {
      const db = await testDatabase('postgres');
      try {
        const stores = await Promise.all([1, 2, 3].map(() => Store.connect({ dataDir: '/nonexistent', url: db.url, poolSize: 2 })));
        const applied = await stores[0].db.query<{ version: number }>('SELECT version FROM carryon_migrations ORDER BY version');
        expect(applied.map((r) => r.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
        await Promise.all(stores.map((s) => s.end()));
        const again = await Store.connect({ dataDir: '/nonexistent', url: db.url });
        expect(await again.db.query('SELECT version FROM carryon_migrations')).toHaveLength(SCHEMA_VERSION);
        await again.end();
      } finally {
        await db.drop();
      }
    });

    it('refuses a database from a newer gateway, naming it without its password', async () => {
      const db = await testDatabase('postgres');
      try {
        const store = await Store.connect({ dataDir: '/nonexistent', url: db.url });
        await store.db.run('INSERT INTO carryon_migrations (version, applied_at) VALUES (?, ?)', [SCHEMA_VERSION + 1, new Date().toISOString()]);
        await store.end();
        const withPassword = new URL(db.url!);
        withPassword.password = 'hunter2-secret';
        // Trust auth on the test server accepts any password, so the URL with one still connects.
        const err = await Store.connect({ dataDir: '/nonexistent', url: withPassword.toString() }).catch((e: unknown) => e as Error);
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message).toMatch(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this gateway knows \\(${SCHEMA_VERSION}\\)`));
        expect((err as Error).message).toContain(':***@');
        expect((err as Error).message).not.toContain('hunter2-secret');
      } finally {
        await db.drop();
      }
    });

    it('a server that cannot be reached fails with where it tried, the password redacted', async () => {
      const url = new URL(adminUrl());
      url.password = 'hunter2-secret';
      url.port = '1'; // nothing listens on port 1
      const err = await Store.connect({ dataDir: '/nonexistent', url: url.toString() }).catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/^cannot connect to PostgreSQL at postgres(ql)?:\/\/.*:\*\*\*@127\.0\.0\.1:1\/.*: .*ECONNREFUSED/);
      expect((err as Error).message).not.toContain('hunter2-secret');
    });
  });
});
