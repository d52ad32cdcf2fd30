import pg from 'pg';
import { redactUrl, withoutPassword } from './database-url.js';
import type { SqlDriver, SqlExecutor, SqlValue, TransactionOptions } from './sql-driver.js';

/** pg_advisory_xact_lock key of write transactions (one writer at a time, see SqlDriver.transaction). */
const WRITE_LOCK = 0x63617272; // 'carr'
/** A server that does not answer in this long is down or unreachable: boot fails rather than hang. */
const CONNECT_TIMEOUT_MS = 10_000;

const INT8_OID = 20;

/**
 * BIGINT columns hold ms timestamps, byte counts and COUNT(*)s, all far below 2^53: numbers, like
 * SQLite's. A value past that would lose digits silently, so it is an error instead.
 */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`BIGINT ${text} is past Number.MAX_SAFE_INTEGER`);
  return n;
}

const typeParsers = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary'): unknown =>
    oid === INT8_OID ? parseInt8 : (pg.types.getTypeParser(oid, format) as unknown)) as pg.CustomTypesConfig['getTypeParser'],
};

/** `?` placeholders → `$1, $2, …` (our SQL has no `?` inside string literals; those are skipped anyway). */
export function numberPlaceholders(sql: string): string {
  let n = 0;
  let quoted = false;
  let out = '';
  for (const ch of sql) {
    if (ch === "'") quoted = !quoted;
    out += ch === '?' && !quoted ? `$${++n}` : ch;
  }
  return out;
}

type Queryable = Pick<pg.PoolClient, 'query'>;

/** The PostgreSQL backend: a pg.Pool; each transaction holds one pooled client from BEGIN to COMMIT. */
export class PostgresDriver implements SqlDriver {
  readonly dialect = 'postgres';
  readonly location: string;
  /** Translated SQL and its prepared-statement name, per SQL text: pg prepares each once per connection. */
  private readonly statements = new Map<string, { name: string; text: string }>();
  private readonly direct: SqlExecutor;

  private constructor(
    readonly pool: pg.Pool,
    private readonly url: string,
  ) {
    this.location = redactUrl(url);
    this.direct = this.executor(pool);
  }

  /** A pool of up to `poolSize` connections; connects once now so a wrong URL fails boot, with the password redacted. */
  static async open(url: string, poolSize: number): Promise<PostgresDriver> {
    const pool = new pg.Pool({ connectionString: url, max: poolSize, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, types: typeParsers });
    // An idle client's connection dropping (server restart) must not crash the process; the next query reconnects.
    pool.on('error', (err) => process.emitWarning(`PostgreSQL connection lost: ${withoutPassword(err.message, url)}`, { code: 'CARRYON_DATABASE' }));
    const driver = new PostgresDriver(pool, url);
    try {
      await pool.query('SELECT 1');
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw driver.describeError('cannot connect to PostgreSQL', err);
    }
    return driver;
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R[]> {
    return this.direct.query<R>(sql, params);
  }

  get<R = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<R | undefined> {
    return this.direct.get<R>(sql, params);
  }

  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    return this.direct.run(sql, params);
  }

  async transaction<T>(fn: (tx: SqlExecutor) => Promise<T> | T, opts: TransactionOptions = {}): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      try {
        if (!opts.rowLocks) await client.query('SELECT pg_advisory_xact_lock($1)', [WRITE_LOCK]);
        const result = await fn(this.executor(client));
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch((rollbackErr: Error) => (broken = rollbackErr));
        throw err;
      }
    } finally {
      // A connection that could not roll back is in an unknown state: close it rather than pool it.
      client.release(broken);
    }
  }

  /** Holds a session-level advisory lock on one connection while `fn` runs on it (the migrator's). */
  async withSessionLock<T>(key: number, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('SELECT pg_advisory_lock($1)', [key]);
      try {
        return await fn(client);
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [key]).catch((err: Error) => (broken = err));
      }
    } finally {
      // A connection that could not unlock still holds the lock: close it (which releases it) rather than pool it.
      client.release(broken);
    }
  }

  /** A connection of its own, outside the pool (the change feed's LISTEN, which must stay on one session). */
  dedicatedClient(): pg.Client {
    return new pg.Client({ connectionString: this.url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, types: typeParsers });
  }

  /** `err`'s message without the password (for logs and readiness). */
  redact(err: unknown): string {
    const detail = err instanceof Error ? err.message || (err as NodeJS.ErrnoException).code || err.name : String(err);
    return withoutPassword(detail, this.url);
  }

  /** An Error for `what` failing, naming the database without its password. */
  describeError(what: string, err: unknown): Error {
    return new Error(`${what} at ${this.location}: ${this.redact(err)}`);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private executor(on: Queryable): SqlExecutor {
    const exec = async (sql: string, params: readonly SqlValue[] = []) => {
      const { name, text } = this.statement(sql);
      return on.query({ name, text, values: params as SqlValue[] });
    };
    return {
      dialect: 'postgres',
      query: async <R>(sql: string, params?: readonly SqlValue[]) => (await exec(sql, params)).rows as R[],
      get: async <R>(sql: string, params?: readonly SqlValue[]) => (await exec(sql, params)).rows[0] as R | undefined,
      run: async (sql: string, params?: readonly SqlValue[]) => ({ changes: (await exec(sql, params)).rowCount ?? 0 }),
    };
  }

  private statement(sql: string): { name: string; text: string } {
    let s = this.statements.get(sql);
    if (!s) {
      s = { name: `carryon_${this.statements.size + 1}`, text: numberPlaceholders(sql) };
      this.statements.set(sql, s);
    }
    return s;
  }
}
