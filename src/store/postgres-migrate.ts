import type pg from 'pg';
import { migrationSql, newerSchemaMessage, SCHEMA_VERSION } from './migrations.js';
import type { PostgresDriver } from './postgres-driver.js';

/** pg_advisory_lock key held while migrating: replicas booting together migrate one after another. */
const MIGRATION_LOCK = 0x6d696772; // 'migr'

/** One row per migration applied, so "it ran exactly once" can be checked, not just hoped for. */
const VERSION_TABLE = `CREATE TABLE IF NOT EXISTS carryon_migrations (
  version     INTEGER PRIMARY KEY,
  applied_at  TEXT NOT NULL
)`;

/** The schema version of a database: migrations applied so far. */
export async function postgresSchemaVersion(client: Pick<pg.PoolClient, 'query'>): Promise<number> {
  const { rows } = await client.query<{ v: number | null }>('SELECT MAX(version) AS v FROM carryon_migrations');
  return rows[0].v ?? 0;
}

/**
 * Brings the schema up to date under a session advisory lock: the first replica to take it
 * migrates, the others wait, then find nothing to do. Each migration commits with its version row,
 * so a failure leaves the database at the last good version.
 */
export async function migratePostgres(driver: PostgresDriver): Promise<void> {
  try {
    await driver.withSessionLock(MIGRATION_LOCK, async (client) => {
      await client.query(VERSION_TABLE);
      const current = await postgresSchemaVersion(client);
      if (current > SCHEMA_VERSION) throw new NewerSchemaError(newerSchemaMessage(driver.location, current));
      for (let v = current; v < SCHEMA_VERSION; v++) {
        await client.query('BEGIN');
        try {
          await client.query(migrationSql('postgres', v));
          await client.query('INSERT INTO carryon_migrations (version, applied_at) VALUES ($1, $2)', [v + 1, new Date().toISOString()]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw err;
        }
      }
    });
  } catch (err) {
    if (err instanceof NewerSchemaError) throw err;
    throw driver.describeError('migrating the schema failed', err);
  }
}

class NewerSchemaError extends Error {}
