import { randomUUID } from 'node:crypto';
import type { CarryOnChange } from '../carryon/catalog.js';
import type { SqlDriver, SqlExecutor, SqlValue, TransactionOptions } from './sql-driver.js';

/** The PostgreSQL channel every replica LISTENs on. */
export const CHANGE_CHANNEL = 'carryon_changes';

/**
 * A committed metadata change that caches elsewhere must hear about: a key (revoked, edited), a
 * tenant (deleted), a carry-on (a version added or deleted, an alias moved).
 */
export type MetadataChange =
  | { kind: 'key'; tenant: string | null; id: string }
  | { kind: 'tenant'; tenant: string; id: string }
  | { kind: 'carry-on'; tenant: string; id: string; change: CarryOnChange };

export interface ChangeListener {
  /** A change committed here or on another replica. */
  change?(c: MetadataChange): void;
  /** Changes may have been missed (the LISTEN connection dropped): rebuild what was cached. */
  resync?(): void;
}

/** What travels in a NOTIFY payload: the change and the replica that made it (which ignores its own echo). */
interface Notice {
  origin: string;
  change: MetadataChange;
}

/**
 * Tells every replica about metadata changes, after they commit. Writers call `publish(q, change)`
 * with the executor that made the write: on PostgreSQL that sends `pg_notify` through it, which the
 * server delivers only if (and when) the write's transaction commits; in this process the change is
 * delivered after the commit too (see `transactions`), so a cache evicted here cannot be refilled
 * from a not-yet-committed row. On SQLite (one node) the in-process delivery is all there is.
 */
export class ChangeFeed {
  /** This replica's id in its notices. */
  readonly origin = randomUUID();
  private readonly listeners = new Set<ChangeListener>();
  /** Changes published inside an open transaction, by its handle: delivered once it commits. */
  private readonly pending = new WeakMap<SqlExecutor, MetadataChange[]>();

  subscribe(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  async publish(q: SqlExecutor, change: MetadataChange): Promise<void> {
    if (q.dialect === 'postgres') {
      const notice: Notice = { origin: this.origin, change };
      await q.run('SELECT pg_notify(?, ?)', [CHANGE_CHANNEL, JSON.stringify(notice)]);
    }
    const inTransaction = this.pending.get(q);
    if (inTransaction) inTransaction.push(change);
    else this.deliver(change);
  }

  /** A NOTIFY payload from the LISTEN connection; our own echoes (already delivered) are dropped. */
  receive(payload: string): void {
    let notice: Notice;
    try {
      notice = JSON.parse(payload) as Notice;
    } catch {
      return; // not ours: someone else NOTIFYing on the channel
    }
    if (notice.origin !== this.origin && notice.change && typeof notice.change.kind === 'string') this.deliver(notice.change);
  }

  resync(): void {
    for (const l of [...this.listeners]) this.safely(() => l.resync?.());
  }

  /**
   * `driver` with transactions that hold back their published changes until COMMIT (and drop
   * them on ROLLBACK). The repositories write through it.
   */
  transactions(driver: SqlDriver): SqlDriver {
    const pending = this.pending;
    const deliver = (c: MetadataChange) => this.deliver(c);
    return {
      dialect: driver.dialect,
      location: driver.location,
      query: <R>(sql: string, params?: readonly SqlValue[]) => driver.query<R>(sql, params),
      get: <R>(sql: string, params?: readonly SqlValue[]) => driver.get<R>(sql, params),
      run: (sql: string, params?: readonly SqlValue[]) => driver.run(sql, params),
      close: () => driver.close(),
      async transaction<T>(fn: (tx: SqlExecutor) => Promise<T> | T, opts?: TransactionOptions): Promise<T> {
        const changes: MetadataChange[] = [];
        const result = await driver.transaction((tx) => {
          // A handle of its own per transaction (SQLite reuses one), so changes are told apart.
          const handle: SqlExecutor = {
            dialect: tx.dialect,
            query: (sql, params) => tx.query(sql, params),
            get: (sql, params) => tx.get(sql, params),
            run: (sql, params) => tx.run(sql, params),
          };
          pending.set(handle, changes);
          return fn(handle);
        }, opts);
        for (const c of changes) deliver(c);
        return result;
      },
    };
  }

  private deliver(change: MetadataChange): void {
    for (const l of [...this.listeners]) this.safely(() => l.change?.(change));
  }

  /** A throwing listener must not turn a committed change into a failed request. */
  private safely(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      process.emitWarning(`metadata change listener failed: ${(err as Error).message}`, { code: 'CARRYON_LISTENER' });
    }
  }
}
