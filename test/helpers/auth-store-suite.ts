import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Authenticator, DEFAULT_TENANT, generateApiKey, hashKey, keyPrefix, newKeyId, syncConfigKeys } from '../../src/auth/authenticator.js';
import { ApiError } from '../../src/core/errors.js';
import type { Store } from '../../src/store/store.js';

/**
 * The authenticator and key store against one backend: test/unit/auth-store.test.ts runs it on
 * SQLite, test/integration/auth-store-postgres.test.ts on PostgreSQL (a server, so not a unit test).
 * `open` gives a store on an empty database; `close` ends it.
 */
export function authStoreSuite(open: () => Promise<Store>, close: (store: Store) => Promise<void>): void {
  let store: Store;
  let auth: Authenticator;

  beforeEach(async () => {
    store = await open();
    auth = new Authenticator(store.apiKeys, store.tenants);
  });
  afterEach(async () => {
    await close(store);
  });

  async function addKey(tenantId: string | null, scope: 'admin' | 'inference' = 'inference') {
    const key = generateApiKey();
    const record = await store.apiKeys.insert({ id: newKeyId(), tenantId, scope, name: null, hash: hashKey(key), prefix: keyPrefix(key) });
    return { key, record };
  }

  describe('authenticator', () => {
    it('accepts a live key, with its tenant, and nothing else', async () => {
      await store.tenants.create('t1', 'T1');
      const { key, record } = await addKey('t1');
      expect(await auth.authenticate(key)).toEqual({ scope: 'inference', keyId: record.id, tenantId: 't1', defaultCarryOn: null, harvest: null });
      expect(await auth.authenticate(`${key}x`)).toBeNull();
      expect(await auth.authenticate('')).toBeNull();
    });

    it('a revoked key fails at once, and so do the keys of a deleted tenant', async () => {
      await store.tenants.create('t1', 'T1');
      const a = await addKey('t1');
      const b = await addKey('t1');
      await store.apiKeys.revoke(a.record.id);
      expect(await auth.authenticate(a.key)).toBeNull();
      expect(await auth.authenticate(b.key)).not.toBeNull();
      await store.tenants.markDeleted('t1');
      expect(await auth.authenticate(b.key)).toBeNull();
    });

    it('keys are sk- plus 32 random bytes, shown by a prefix that never reveals a short key', () => {
      const key = generateApiKey();
      expect(key).toMatch(/^sk-[A-Za-z0-9_-]{43}$/);
      expect(keyPrefix(key)).toBe(key.slice(0, 8));
      expect(keyPrefix('sk-short')).toBe('sk-s');
      expect(newKeyId()).toMatch(/^key_[0-9a-f]{16}$/);
    });

    it('carries the harvest policy with defaults filled in', async () => {
      await store.tenants.create('t1', 'T1');
      const { key, record } = await addKey('t1');
      await store.apiKeys.update(record.id, { harvest: { sample_rate: 0.5 }, defaultCarryOn: 'style@stable' });
      expect(await auth.authenticate(key)).toMatchObject({ defaultCarryOn: 'style@stable', harvest: { sampleRate: 0.5, layers: ['final'], keep: 'both' } });
    });

    it('x-carryon-tenant: a global admin may act for a live tenant; other keys only for their own', async () => {
      await store.tenants.create('t1', 'T1');
      await store.tenants.create('t2', 'T2');
      const admin = (await auth.authenticate((await addKey(null, 'admin')).key))!;
      expect(await auth.actAs(admin, 't1')).toMatchObject({ scope: 'admin', tenantId: 't1', keyId: admin.keyId });
      await expect(auth.actAs(admin, 'nope')).rejects.toThrow(ApiError);
      const user = (await auth.authenticate((await addKey('t1')).key))!;
      expect(await auth.actAs(user, 't1')).toBe(user);
      await expect(auth.actAs(user, 't2')).rejects.toThrow(/cannot act for tenant 't2'/);
      const tenantAdmin = (await auth.authenticate((await addKey('t1', 'admin')).key))!;
      await expect(auth.actAs(tenantAdmin, 't2')).rejects.toThrow(ApiError);
    });
  });

  describe('store transactions', () => {
    it('a callback that throws rolls back everything it did in the transaction', async () => {
      await store.tenants.create('t1', 'T1');
      const { key } = await addKey('t1');
      await expect(
        store.carryOns.deleteForTenant('t1', async (tx) => {
          await store.tenants.markDeleted('t1', tx);
          await store.apiKeys.revokeForTenant('t1', tx);
          throw new Error('boom');
        }),
      ).rejects.toThrow('boom');
      expect(await store.tenants.get('t1')).not.toBeNull();
      expect(await auth.authenticate(key)).not.toBeNull();
    });

    it('statements from outside wait for an open transaction instead of joining it', async () => {
      await store.tenants.create('t1', 'T1');
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      const tx = store.carryOns.deleteForTenant('t1', async (t) => {
        await store.tenants.markDeleted('t1', t);
        await held;
        throw new Error('rolled back');
      });
      // Issued while the transaction is open: it must neither see its uncommitted delete nor be rolled back with it.
      const outside = store.tenants.create('t2', 'T2');
      const seen = store.tenants.get('t1');
      await new Promise((r) => setTimeout(r, 50));
      release();
      await expect(tx).rejects.toThrow('rolled back');
      expect(await outside).toMatchObject({ id: 't2' });
      expect(await seen).not.toBeNull();
      expect((await store.tenants.list()).map((t) => t.id)).toEqual(['t1', 't2']);
    });
  });

  describe('configured keys', () => {
    it('are live exactly while configured; the default tenant is created for inference keys', async () => {
      const boot = (inferenceKeys: string[]) =>
        syncConfigKeys(store.apiKeys, store.tenants, { adminKey: 'sk-admin-aaaaaaaaaaaa', adminKeyName: 'CARRYON_ADMIN_KEY', inferenceKeys });
      await boot(['sk-u1-bbbbbbbbbbbb', 'sk-u2-cccccccccccc']);
      expect(await store.tenants.get(DEFAULT_TENANT)).not.toBeNull();
      expect(await auth.authenticate('sk-admin-aaaaaaaaaaaa')).toMatchObject({ scope: 'admin', tenantId: null });
      expect(await auth.authenticate('sk-u1-bbbbbbbbbbbb')).toMatchObject({ scope: 'inference', tenantId: DEFAULT_TENANT });
      const ids = (await store.apiKeys.list()).map((k) => k.id);

      // A restart without u2: u2 is revoked, the others keep their rows (ids stable across boots).
      expect(await boot(['sk-u1-bbbbbbbbbbbb'])).toEqual({ inserted: 0, revoked: 1 });
      expect(await auth.authenticate('sk-u2-cccccccccccc')).toBeNull();
      expect((await store.apiKeys.list()).map((k) => k.id)).toEqual(ids);

      // Configured again: live again.
      await boot(['sk-u1-bbbbbbbbbbbb', 'sk-u2-cccccccccccc']);
      expect(await auth.authenticate('sk-u2-cccccccccccc')).not.toBeNull();
      expect((await store.apiKeys.list()).every((k) => k.origin === 'config')).toBe(true);
    });
  });
}
