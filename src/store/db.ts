import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';

export type Db = Database.Database;

export const DB_FILE = 'gateway.sqlite';

/** Long enough to ride out another process's write transaction, short enough to surface a stuck lock. */
const BUSY_TIMEOUT_MS = 5_000;

/** Opens (creating if needed) DATA_DIR/gateway.sqlite and brings its schema up to date. */
export function openDatabase(dataDir: string): Db {
  fs.mkdirSync(dataDir, { recursive: true });
  const db = new Database(path.join(dataDir, DB_FILE));
  try {
    // WAL: readers (every authenticated request) never wait for the admin API's writes.
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    // NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the last commits.
    db.pragma('synchronous = NORMAL');
    migrate(db);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/** Runs every migration past `user_version`, each in its own transaction with its version bump. */
export function migrate(db: Db): void {
  const current = schemaVersion(db);
  if (current > MIGRATIONS.length) {
    throw new Error(
      `${db.name} has schema version ${current}, newer than this gateway knows (${MIGRATIONS.length}); ` +
        'upgrade the gateway or restore a matching database',
    );
  }
  // Re-read inside each write transaction: another process may be migrating the same file.
  const step = db.transaction((): boolean => {
    const v = schemaVersion(db);
    if (v >= MIGRATIONS.length) return false;
    db.exec(MIGRATIONS[v]);
    db.pragma(`user_version = ${v + 1}`);
    return true;
  });
  while (step.immediate()) {
    // one migration per transaction, so a failure leaves the database at the last good version
  }
}

export function nowIso(): string {
  return new Date().toISOString();
}

export type Prepare = <P extends unknown[] = unknown[], R = unknown>(sql: string) => Database.Statement<P, R>;

/** Compiles each SQL text once: lookups on the request path (key by hash, carry-on resolve) stay cheap. */
export function statementCache(db: Db): Prepare {
  const cache = new Map<string, Database.Statement<unknown[], unknown>>();
  return <P extends unknown[] = unknown[], R = unknown>(sql: string): Database.Statement<P, R> => {
    let s = cache.get(sql);
    if (!s) {
      s = db.prepare(sql);
      cache.set(sql, s);
    }
    return s as unknown as Database.Statement<P, R>;
  };
}
