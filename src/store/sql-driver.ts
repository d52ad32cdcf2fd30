/**
 * The metadata store's one seam between SQL and a database: the repositories are written once
 * against it, and run on the embedded SQLite file (./sqlite-driver.ts) or on PostgreSQL
 * (./postgres-driver.ts). SQL is written with `?` placeholders and portable syntax (ON CONFLICT,
 * CAST, COALESCE); the PostgreSQL driver numbers the placeholders.
 */
export type Dialect = 'sqlite' | 'postgres';

/** What a parameter may be: BLOB/BYTEA columns take Buffers, INTEGER/BIGINT ones numbers. */
export type SqlValue = string | number | Buffer | null;

/** Runs statements: the driver itself, or the handle of an open transaction. */
export interface SqlExecutor {
  readonly dialect: Dialect;
  /** Every row; BIGINT columns come back as numbers (they hold ms timestamps and byte counts). */
  query<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R[]>;
  /** The first row, or undefined. */
  get<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R | undefined>;
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
}

export interface TransactionOptions {
  rowLocks?: boolean;
}

export interface SqlDriver extends SqlExecutor {
  /**
   * Runs `fn` in one write transaction: committed when it resolves, rolled back when it throws.
   * One writer at a time, on both backends (SQLite's BEGIN IMMEDIATE; an advisory lock on
   * PostgreSQL), because the repositories read then write (the next version number, "does the
   * tenant exist") and must not interleave with another writer in between. Statements of the
   * transaction go through `tx`, never through the driver (which waits for the transaction).
   *
   * `rowLocks`: on PostgreSQL, skip the store-wide write lock; the transaction locks the rows it
   * reads itself (`SELECT … FOR UPDATE SKIP LOCKED`), so claimers never wait on each other or on
   * admin writes. SQLite has one writer anyway (BEGIN IMMEDIATE either way).
   */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T> | T, opts?: TransactionOptions): Promise<T>;
  /** Where the data is, for messages: a file, or the URL without its password. */
  readonly location: string;
  close(): Promise<void>;
}
