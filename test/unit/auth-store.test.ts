import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { DB_FILE, openSqlite } from '../../src/store/db.js';
import { SCHEMA_VERSION } from '../../src/store/migrations.js';
import { Store } from '../../src/store/store.js';
import { authStoreSuite } from '../helpers/auth-store-suite.js';

// The same tests on PostgreSQL: test/integration/auth-store-postgres.test.ts (a server is no unit test).
const dirs = new Map<Store, string>();
authStoreSuite(
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-auth-'));
    const store = await Store.connect({ dataDir: dir });
    dirs.set(store, dir);
    return store;
  },
  async (store) => {
    await store.end();
    fs.rmSync(dirs.get(store)!, { recursive: true, force: true });
    dirs.delete(store);
  },
);

describe('SQLite schema', () => {
  it('migrates a new database to the latest version with its pragmas, and reopening changes nothing', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-auth-schema-'));
    const first = openSqlite(dir);
    expect(first.userVersion).toBe(SCHEMA_VERSION);
    expect(first.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(first.db.pragma('foreign_keys', { simple: true })).toBe(1);
    await first.close();
    const again = openSqlite(dir);
    expect(again.userVersion).toBe(SCHEMA_VERSION);
    await again.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a database from a newer gateway', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-auth-newer-'));
    const db = new Database(path.join(dir, DB_FILE));
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    expect(() => openSqlite(dir)).toThrow(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this gateway knows \\(${SCHEMA_VERSION}\\)`));
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
