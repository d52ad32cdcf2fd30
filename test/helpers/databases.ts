import { scratchDatabase } from '../../bench/lib/scratch-database.js';

/**
 * The metadata backends the store's tests run on: SQLite always; PostgreSQL when
 * CARRYON_TEST_DATABASE_URL names a server whose user may create databases (.ci/postgres starts a
 * throwaway one). With CARRYON_POSTGRES_REQUIRED=1 (CI) a missing URL fails the run, not skips it.
 */
export type Backend = 'sqlite' | 'postgres';

const ADMIN_URL = process.env.CARRYON_TEST_DATABASE_URL ?? '';

if (process.env.CARRYON_POSTGRES_REQUIRED === '1' && !ADMIN_URL) {
  throw new Error('CARRYON_POSTGRES_REQUIRED=1 but CARRYON_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run (see .ci/postgres)');
}

export const POSTGRES_AVAILABLE = ADMIN_URL !== '';
export const BACKENDS: Backend[] = POSTGRES_AVAILABLE ? ['sqlite', 'postgres'] : ['sqlite'];

export interface TestDatabase {
  backend: Backend;
  /** The PostgreSQL URL of this database; null for SQLite (the file in the data folder). */
  url: string | null;
  /** What startTestGateway needs to use it. */
  env: Record<string, string>;
  /** Drops the PostgreSQL database (connections and all); nothing for SQLite. */
  drop(): Promise<void>;
}

/** A fresh, empty database on `backend`, so test files never see each other's rows. */
export async function testDatabase(backend: Backend): Promise<TestDatabase> {
  if (backend === 'sqlite') return { backend, url: null, env: {}, drop: async () => undefined };
  const db = await scratchDatabase(ADMIN_URL, 'carryon_test');
  return { backend, url: db.url, env: { CARRYON_DATABASE_URL: db.url, CARRYON_DATABASE_POOL_SIZE: '4' }, drop: db.drop };
}

/** The server's admin URL, for tests that need one that is not a fresh database (its credentials, its port). */
export function adminUrl(): string {
  if (!ADMIN_URL) throw new Error('CARRYON_TEST_DATABASE_URL is not set');
  return ADMIN_URL;
}
