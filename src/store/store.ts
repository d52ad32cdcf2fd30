import { ApiKeyRepository } from './api-keys.js';
import { CarryOnRepository } from './carry-ons.js';
import { ChangeFeed } from './change-feed.js';
import { ChangeListener } from './change-listener.js';
import { DatabaseHealth } from './database-health.js';
import { PostgresDriver } from './postgres-driver.js';
import { openDatabase, type DatabaseOptions } from './db.js';
import { HarvestShardRepository } from './harvest-shards.js';
import { RateBucketRepository } from './rate-buckets.js';
import type { SqlDriver } from './sql-driver.js';
import { TenantRepository } from './tenants.js';

/**
 * The gateway's metadata (DATA_DIR/gateway.sqlite, or PostgreSQL with CARRYON_DATABASE_URL) and its
 * repositories. Files (carry-on graphs, harvest shards) stay under DATA_DIR either way.
 */
export class Store {
  readonly tenants: TenantRepository;
  readonly apiKeys: ApiKeyRepository;
  readonly carryOns: CarryOnRepository;
  readonly harvestShards: HarvestShardRepository;
  readonly rateBuckets: RateBucketRepository;
  /** Committed changes to keys, tenants and carry-ons, from this replica and (on PostgreSQL) every other. */
  readonly changes = new ChangeFeed();
  /** The database as the repositories use it: its transactions hold back their changes until COMMIT. */
  readonly db: SqlDriver;
  /** PostgreSQL only: this replica's LISTEN connection (see `listen`). */
  private listener: ChangeListener | null = null;
  /** PostgreSQL only: whether the server answers (readiness); null on SQLite, which is a local file. */
  health: DatabaseHealth | null = null;
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly driver: SqlDriver,
    readonly dataDir: string,
  ) {
    this.db = this.changes.transactions(driver);
    this.tenants = new TenantRepository(this.db, this.changes);
    this.apiKeys = new ApiKeyRepository(this.db, this.changes);
    this.carryOns = new CarryOnRepository(this.db, dataDir, this.changes);
    this.harvestShards = new HarvestShardRepository(this.db, dataDir);
    this.rateBuckets = new RateBucketRepository(this.db);
  }

  /**
   * On PostgreSQL: starts hearing other replicas' changes (one LISTEN connection that reconnects by
   * itself) and the health probe. Nothing on SQLite, where this process is the only writer.
   */
  async listen(warn: (msg: string) => void): Promise<void> {
    if (!(this.driver instanceof PostgresDriver) || this.listener) return;
    this.listener = new ChangeListener(this.driver, this.changes, warn);
    this.health = new DatabaseHealth(this.driver, this.listener);
    await this.listener.start();
  }

  /** Whether changes made elsewhere reach this replica at once: always on SQLite; on PostgreSQL while LISTENing. */
  get hearsChanges(): boolean {
    return !(this.driver instanceof PostgresDriver) || (this.listener?.listening ?? false);
  }

  /** The configured backend: PostgreSQL when `opts.url` is set, else the SQLite file in `opts.dataDir`. */
  static async connect(opts: DatabaseOptions): Promise<Store> {
    return new Store(await openDatabase(opts), opts.dataDir);
  }

  /** Closes the database once its open transaction (if any) ends; idempotent, as shutdown paths may call it more than once. */
  end(): Promise<void> {
    this.closing ??= (async () => {
      await this.listener?.stop();
      await this.driver.close();
    })();
    return this.closing;
  }

  /** `end` for callers that do not wait (SQLite closes at once when idle); a failure is a warning, not a crash. */
  close(): void {
    this.end().catch((err: Error) => process.emitWarning(`closing the metadata store failed: ${err.message}`, { code: 'CARRYON_DATABASE' }));
  }
}
