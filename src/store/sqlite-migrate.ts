import { migrationSql, newerSchemaMessage, SCHEMA_VERSION } from './migrations.js';
import type { SqliteDriver } from './sqlite-driver.js';

/**
 * Runs every migration past `user_version`, each in its own transaction with its version bump.
 * Synchronous, before the driver serves anything, so nothing can interleave with it in-process.
 */
export function migrateSqlite(driver: SqliteDriver): void {
  const { db } = driver;
  const current = driver.userVersion;
  if (current > SCHEMA_VERSION) throw new Error(newerSchemaMessage(driver.location, current));
  // Re-read inside each write transaction: another process may be migrating the same file.
  const step = db.transaction((): boolean => {
    const v = driver.userVersion;
    if (v >= SCHEMA_VERSION) return false;
    db.exec(migrationSql('sqlite', v));
    db.pragma(`user_version = ${v + 1}`);
    return true;
  });
  while (step.immediate()) {
    // one migration per transaction, so a failure leaves the database at the last good version
  }
}
