import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { SqlDriver, SqlExecutor, SqlValue } from './sql-driver.js';

export const DB_FILE = 'gateway.sqlite';

/** Long enough to ride out another process's write transaction, short enough to surface a stuck lock. */
const BUSY_TIMEOUT_MS = 5_000;

type Statement = Database.Statement<unknown[], unknown>;

/**
 * The embedded one-node backend: DATA_DIR/gateway.sqlite through better-sqlite3. It is ONE
 * connection, so while a transaction is open (BEGIN IMMEDIATE … awaits … COMMIT) any other
 * statement on it would silently join that transaction: statements and transactions from outside
 * wait until it ends, and only the transaction's own handle runs meanwhile.
 */
export class SqliteDriver implements SqlDriver {
  readonly dialect = 'sqlite';
  readonly location: string;
  /** Compiled once per SQL text: lookups on the request path (key by hash, carry-on resolve) stay cheap. */
  private readonly statements = new Map<string, Statement>();
  /** Settles when the open transaction ends; null while none is open. */
  private openTx: Promise<void> | null = null;
  private readonly direct: SqlExecutor;

  private constructor(readonly db: Database.Database) {
    this.location = db.name;
    this.direct = {
      dialect: 'sqlite',
      query: async <R>(sql: string, params: readonly SqlValue[] = []) => this.prepare(sql).all(...params) as R[],
      get: async <R>(sql: string, params: readonly SqlValue[] = []) => this.prepare(sql).get(...params) as R | undefined,
      run: async (sql: string, params: readonly SqlValue[] = []) => ({ changes: this.prepare(sql).run(...params).changes }),
    };
  }

  /** Opens (creating if needed) DATA_DIR/gateway.sqlite with the pragmas the gateway relies on. */
  static open(dataDir: string): SqliteDriver {
    fs.mkdirSync(dataDir, { recursive: true });
    const db = new Database(path.join(dataDir, DB_FILE));
    try {
      // WAL: readers (every authenticated request) never wait for the admin API's writes.
      db.pragma('journal_mode = WAL');
      db.pragma('foreign_keys = ON');
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      // NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the last commits.
      db.pragma('synchronous = NORMAL');
      return new SqliteDriver(db);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  // Each waits in its own loop, and runs in the same synchronous stretch as the loop's last check:
  // an `await` in between would let a transaction open first, and the statement would join it.

  async query<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R[]> {
    while (this.openTx) await this.openTx;
    return this.direct.query<R>(sql, params);
  }

  async get<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R | undefined> {
    while (this.openTx) await this.openTx;
    return this.direct.get<R>(sql, params);
  }

  async run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    while (this.openTx) await this.openTx;
    return this.direct.run(sql, params);
  }

  async transaction<T>(fn: (tx: SqlExecutor) => Promise<T> | T): Promise<T> {
    while (this.openTx) await this.openTx;
    let end!: () => void;
    this.openTx = new Promise((resolve) => (end = resolve));
    try {
      // IMMEDIATE takes the write lock now (waiting up to busy_timeout for another process), so the
      // reads inside see what they will write over.
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const result = await fn(this.direct);
        this.db.exec('COMMIT');
        return result;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      }
    } finally {
      this.openTx = null;
      end();
    }
  }

  /** The schema version (`PRAGMA user_version`): synchronous, for the migrator. */
  get userVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  async close(): Promise<void> {
    while (this.openTx) await this.openTx;
    if (this.db.open) this.db.close();
  }

  private prepare(sql: string): Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }
}
