import { migratePostgres } from './postgres-migrate.js';
import { PostgresDriver } from './postgres-driver.js';
import type { SqlDriver } from './sql-driver.js';
import { migrateSqlite } from './sqlite-migrate.js';
import { SqliteDriver } from './sqlite-driver.js';

export { DB_FILE } from './sqlite-driver.js';

export interface DatabaseOptions {
  /** The data folder: SQLite's file lives in it when `url` is unset. */
  dataDir: string;
  /** CARRYON_DATABASE_URL (postgres://…); unset: DATA_DIR/gateway.sqlite. */
  url?: string | null;
  /** CARRYON_DATABASE_POOL_SIZE: PostgreSQL connections this process may hold. */
  poolSize?: number;
}

export const DEFAULT_POOL_SIZE = 10;

/** Opens the metadata database (creating the SQLite file if needed) and brings its schema up to date. */
export async function openDatabase(opts: DatabaseOptions): Promise<SqlDriver> {
  if (!opts.url) return openSqlite(opts.dataDir);
  const driver = await PostgresDriver.open(opts.url, opts.poolSize ?? DEFAULT_POOL_SIZE);
  try {
    await migratePostgres(driver);
  } catch (err) {
    await driver.close();
    throw err;
  }
  return driver;
}

export function nowIso(): string {
  return new Date().toISOString();
}

/** DATA_DIR/gateway.sqlite, migrated; synchronous, as SQLite allows (tools and benchmarks open it directly). */
export function openSqlite(dataDir: string): SqliteDriver {
  const driver = SqliteDriver.open(dataDir);
  try {
    migrateSqlite(driver);
  } catch (err) {
    driver.db.close();
    throw err;
  }
  return driver;
}
