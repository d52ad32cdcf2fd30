import type { Store } from '../store/store.js';
import type { BaseModelSource } from './base-model.js';
import { CarryOnAdmin } from './carry-on-admin.js';
import { CarryOnFiles } from './carry-on-files.js';
import { KeyAdmin } from './key-admin.js';
import { TenantAdmin } from './tenant-admin.js';

export interface AdminServices {
  tenants: TenantAdmin;
  keys: KeyAdmin;
  carryOns: CarryOnAdmin;
}

export interface AdminOptions {
  dataDir: string;
  baseModel: BaseModelSource;
  /** CARRYON_MAX_CARRYON_BYTES */
  maxCarryOnBytes: number;
  /** CARRYON_CARRYON_CHECK_TIMEOUT_MS */
  checkTimeoutMs: number;
}

/** The admin API's logic, wired to the store; the plugins under plugins/admin only route to it. */
export function createAdminServices(store: Store, opts: AdminOptions): AdminServices {
  const files = new CarryOnFiles(opts.dataDir);
  files.sweepStaleStaging();
  return {
    tenants: new TenantAdmin(store, files),
    keys: new KeyAdmin(store),
    carryOns: new CarryOnAdmin(store, files, { baseModel: opts.baseModel, maxGraphBytes: opts.maxCarryOnBytes, checkTimeoutMs: opts.checkTimeoutMs }),
  };
}
