import { ApiKeyRepository } from './api-keys.js';
import { CarryOnRepository } from './carry-ons.js';
import { openDatabase, openSqlite, type DatabaseOptions } from './db.js';
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
  private closing: Promise<void> | null = null;

  private constructor(
    readonly db: SqlDriver,
    readonly dataDir: string,
  ) {
    this.tenants = new TenantRepository(db);
    this.apiKeys = new ApiKeyRepository(db);
    this.carryOns = new CarryOnRepository(db, dataDir);
    this.harvestShards = new HarvestShardRepository(db, dataDir);
    this.rateBuckets = new RateBucketRepository(db);
  }

  /** The configured backend: PostgreSQL when `opts.url` is set, else the SQLite file in `opts.dataDir`. */
  static async connect(opts: DatabaseOptions): Promise<Store> {
    return new Store(await openDatabase(opts), opts.dataDir);
  }

  /** The SQLite file in `dataDir`, synchronously (tools and benchmarks that never use PostgreSQL). */
  static open(dataDir: string): Store {
    return new Store(openSqlite(dataDir), dataDir);
  }

  /** Closes the database once its open transaction (if any) ends; idempotent, as shutdown paths may call it more than once. */
  end(): Promise<void> {
    this.closing ??= this.db.close();
    return this.closing;
  }

  /** `end` for callers that do not wait (SQLite closes at once when idle); a failure is a warning, not a crash. */
  close(): void {
    this.end().catch((err: Error) => process.emitWarning(`closing the metadata store failed: ${err.message}`, { code: 'CARRYON_DATABASE' }));
  }
}
