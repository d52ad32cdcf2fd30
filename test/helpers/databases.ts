import { scratchDatabase } from '../../bench/lib/scratch-database.js';
import { startTestBucket } from './object-store.js';

/**
 * The metadata backends the store's tests run on: SQLite always; PostgreSQL when
 * CARRYON_TEST_DATABASE_URL names a server whose user may create databases (.ci/postgres starts a
 * throwaway one). With CARRYON_POSTGRES_REQUIRED=1 (CI) a missing URL fails the run, not skips it.
 */
export type Backend = 'sqlite' | 'postgres' | 'postgres+bucket';

const ADMIN_URL = process.env.CARRYON_TEST_DATABASE_URL ?? '';

if (process.env.CARRYON_POSTGRES_REQUIRED === '1' && !ADMIN_URL) {
  throw new Error('CARRYON_POSTGRES_REQUIRED=1 but CARRYON_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run (see .ci/postgres)');
}

export const POSTGRES_AVAILABLE = ADMIN_URL !== '';
export const BACKENDS: Backend[] = POSTGRES_AVAILABLE ? ['sqlite', 'postgres'] : ['sqlite'];
/**
 * For the store, admin and harvest tests: the backends, and PostgreSQL with carry-on graphs and
 * harvest shards in a bucket (s3rver, started in-process), as a scaled-out install keeps them.
 */
export const STORE_SETUPS: Backend[] = POSTGRES_AVAILABLE ? [...BACKENDS, 'postgres+bucket'] : BACKENDS;

export interface TestDatabase {
  backend: Backend;
  /** The PostgreSQL URL of this database; null for SQLite (the file in the data folder). */
  url: string | null;
  /** What startTestGateway needs to use it. */
  env: Record<string, string>;
  /** With a bucket: the keys of the objects the gateway put there; null without one. */
  objectKeys: (() => Promise<string[]>) | null;
  /** Drops the PostgreSQL database (connections and all) and stops the bucket; nothing for SQLite. */
  drop(): Promise<void>;
}

/** A fresh, empty database on `backend`, so test files never see each other's rows. */
export async function testDatabase(backend: Backend): Promise<TestDatabase> {
  if (backend === 'sqlite') return { backend, url: null, env: {}, objectKeys: null, drop: async () => undefined };
  const db = await scratchDatabase(ADMIN_URL, 'carryon_test');
  const env = { CARRYON_DATABASE_URL: db.url, CARRYON_DATABASE_POOL_SIZE: '4' };
  if (backend === 'postgres') return { backend, url: db.url, env, objectKeys: null, drop: db.drop };
  const bucket = await startTestBucket();
  const drop = async () => {
    await db.drop();
    await bucket.close();
  };
  const prefix = `store-${Date.now()}`;
  return { backend, url: db.url, env: { ...env, ...bucket.env(prefix) }, objectKeys: () => bucket.keys(prefix), drop };
}

/** The server's admin URL, for tests that need one that is not a fresh database (its credentials, its port). */
export function adminUrl(): string {
  if (!ADMIN_URL) throw new Error('CARRYON_TEST_DATABASE_URL is not set');
  return ADMIN_URL;
}
