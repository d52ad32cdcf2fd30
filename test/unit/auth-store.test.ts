import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Authenticator, DEFAULT_TENANT, generateApiKey, hashKey, keyPrefix, newKeyId, syncConfigKeys } from '../../src/auth/authenticator.js';
import { ApiError } from '../../src/core/errors.js';
import { openDatabase, schemaVersion } from '../../src/store/db.js';
import { MIGRATIONS } from '../../src/store/migrations.js';
import { Store } from '../../src/store/store.js';

let dir: string;
let store: Store;
let auth: Authenticator;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-auth-'));
  store = Store.open(dir);
  auth = new Authenticator(store.apiKeys, store.tenants);
});
afterEach(() => {
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function addKey(tenantId: string | null, scope: 'admin' | 'inference' = 'inference') {
  const key = generateApiKey();
  const record = store.apiKeys.insert({ id: newKeyId(), tenantId, scope, name: null, hash: hashKey(key), prefix: keyPrefix(key) });
  return { key, record };
}

describe('store schema', () => {
  it('migrates a new database to the latest version, and reopening changes nothing', () => {
    expect(schemaVersion(store.db)).toBe(MIGRATIONS.length);
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('foreign_keys', { simple: true })).toBe(1);
    store.close();
    const again = openDatabase(dir);
    expect(schemaVersion(again)).toBe(MIGRATIONS.length);
    again.close();
    store = Store.open(dir);
  });

  it('refuses a database from a newer gateway', () => {
    const other = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-auth-newer-'));
    const db = openDatabase(other);
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    expect(() => openDatabase(other)).toThrow(/newer than this gateway knows/);
    fs.rmSync(other, { recursive: true, force: true });
  });
});

describe('authenticator', () => {
  it('accepts a live key, with its tenant, and nothing else', () => {
    store.tenants.create('t1', 'T1');
    const { key, record } = addKey('t1');
    expect(auth.authenticate(key)).toEqual({ scope: 'inference', keyId: record.id, tenantId: 't1', defaultCarryOn: null, harvest: null });
    expect(auth.authenticate(`${key}x`)).toBeNull();
    expect(auth.authenticate('')).toBeNull();
  });

  it('a revoked key fails at once, and so do the keys of a deleted tenant', () => {
    store.tenants.create('t1', 'T1');
    const a = addKey('t1');
    const b = addKey('t1');
    store.apiKeys.revoke(a.record.id);
    expect(auth.authenticate(a.key)).toBeNull();
    expect(auth.authenticate(b.key)).not.toBeNull();
    store.tenants.markDeleted('t1');
    expect(auth.authenticate(b.key)).toBeNull();
  });

  it('keys are sk- plus 32 random bytes, shown by a prefix that never reveals a short key', () => {
    const key = generateApiKey();
    expect(key).toMatch(/^sk-[A-Za-z0-9_-]{43}$/);
    expect(keyPrefix(key)).toBe(key.slice(0, 8));
    expect(keyPrefix('sk-short')).toBe('sk-s');
    expect(newKeyId()).toMatch(/^key_[0-9a-f]{16}$/);
  });

  it('carries the harvest policy with defaults filled in', () => {
    store.tenants.create('t1', 'T1');
    const { key, record } = addKey('t1');
    store.apiKeys.update(record.id, { harvest: { sample_rate: 0.5 }, defaultCarryOn: 'style@stable' });
    expect(auth.authenticate(key)).toMatchObject({ defaultCarryOn: 'style@stable', harvest: { sampleRate: 0.5, layers: ['final'], keep: 'both' } });
  });

  it('x-carryon-tenant: a global admin may act for a live tenant; other keys only for their own', () => {
    store.tenants.create('t1', 'T1');
    store.tenants.create('t2', 'T2');
    const admin = auth.authenticate(addKey(null, 'admin').key)!;
    expect(auth.actAs(admin, 't1')).toMatchObject({ scope: 'admin', tenantId: 't1', keyId: admin.keyId });
    expect(() => auth.actAs(admin, 'nope')).toThrow(ApiError);
    const user = auth.authenticate(addKey('t1').key)!;
    expect(auth.actAs(user, 't1')).toBe(user);
    expect(() => auth.actAs(user, 't2')).toThrow(/cannot act for tenant 't2'/);
    const tenantAdmin = auth.authenticate(addKey('t1', 'admin').key)!;
    expect(() => auth.actAs(tenantAdmin, 't2')).toThrow(ApiError);
  });
});

describe('configured keys', () => {
  it('are live exactly while configured; the default tenant is created for inference keys', () => {
    syncConfigKeys(store.apiKeys, store.tenants, { adminKey: 'sk-admin-aaaaaaaaaaaa', adminKeyName: 'CARRYON_ADMIN_KEY', inferenceKeys: ['sk-u1-bbbbbbbbbbbb', 'sk-u2-cccccccccccc'] });
    expect(store.tenants.get(DEFAULT_TENANT)).not.toBeNull();
    expect(auth.authenticate('sk-admin-aaaaaaaaaaaa')).toMatchObject({ scope: 'admin', tenantId: null });
    expect(auth.authenticate('sk-u1-bbbbbbbbbbbb')).toMatchObject({ scope: 'inference', tenantId: DEFAULT_TENANT });
    const ids = store.apiKeys.list().map((k) => k.id);

    // A restart without u2: u2 is revoked, the others keep their rows (ids stable across boots).
    const result = syncConfigKeys(store.apiKeys, store.tenants, { adminKey: 'sk-admin-aaaaaaaaaaaa', adminKeyName: 'CARRYON_ADMIN_KEY', inferenceKeys: ['sk-u1-bbbbbbbbbbbb'] });
    expect(result).toEqual({ inserted: 0, revoked: 1 });
    expect(auth.authenticate('sk-u2-cccccccccccc')).toBeNull();
    expect(store.apiKeys.list().map((k) => k.id)).toEqual(ids);

    // Configured again: live again.
    syncConfigKeys(store.apiKeys, store.tenants, { adminKey: 'sk-admin-aaaaaaaaaaaa', adminKeyName: 'CARRYON_ADMIN_KEY', inferenceKeys: ['sk-u1-bbbbbbbbbbbb', 'sk-u2-cccccccccccc'] });
    expect(auth.authenticate('sk-u2-cccccccccccc')).not.toBeNull();
    expect(store.apiKeys.list().every((k) => k.origin === 'config')).toBe(true);
  });
});
