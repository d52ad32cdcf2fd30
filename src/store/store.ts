import { ApiKeyRepository } from './api-keys.js';
import { CarryOnRepository } from './carry-ons.js';
import { openDatabase, type Db } from './db.js';
import { HarvestShardRepository } from './harvest-shards.js';
import { TenantRepository } from './tenants.js';

/** The gateway's persistent state (DATA_DIR/gateway.sqlite) and its repositories. */
export class Store {
  readonly tenants: TenantRepository;
  readonly apiKeys: ApiKeyRepository;
  readonly carryOns: CarryOnRepository;
  readonly harvestShards: HarvestShardRepository;

  private constructor(
    readonly db: Db,
    readonly dataDir: string,
  ) {
    this.tenants = new TenantRepository(db);
    this.apiKeys = new ApiKeyRepository(db);
    this.carryOns = new CarryOnRepository(db, dataDir);
    this.harvestShards = new HarvestShardRepository(db, dataDir);
  }

  static open(dataDir: string): Store {
    return new Store(openDatabase(dataDir), dataDir);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
