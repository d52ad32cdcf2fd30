import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ApiError, databaseUnavailableError, isDatabaseUnavailable } from '../core/errors.js';
import type { HarvestPolicy } from '../harvest/types.js';
import type { ApiKeyRepository, ConfigKey, Scope } from '../store/api-keys.js';
import { runtimeHarvestPolicy } from '../harvest/policy.js';
import type { TenantRepository } from '../store/tenants.js';
import { KeyCache, type KeyCacheOptions } from './key-cache.js';

export type { Scope } from '../store/api-keys.js';

export interface Principal {
  scope: Scope;
  /** The key's row id (`key_…`): safe to log, unlike the key. */
  keyId: string;
  /** The tenant acted for; null: a global admin key acting for no tenant (it sees only the base). */
  tenantId: string | null;
  /** `<carry-on id>[@<version or alias>]` used when a request names only the base model. */
  defaultCarryOn: string | null;
  /** The key's harvest policy; null: its traffic is never harvested. */
  harvest: HarvestPolicy | null;
}

/** Admin keys may act for a tenant by sending its id in this header (see docs/admin.md, "Keys", and docs/api.md, "Extensions"). */
export const TENANT_HEADER = 'x-carryon-tenant';
/** The tenant that owns the CARRYON_API_KEYS keys. */
export const DEFAULT_TENANT = 'default';

/** `sk-` + 32 random bytes: 256 bits, so hashing without a salt is safe (no dictionary to try). */
export function generateApiKey(): string {
  return `sk-${randomBytes(32).toString('base64url')}`;
}

export function newKeyId(): string {
  return `key_${randomBytes(8).toString('hex')}`;
}

/** The first 8 characters, to recognise a key in listings; never more than half of a short key. */
export function keyPrefix(key: string): string {
  return key.slice(0, Math.min(8, Math.floor(key.length / 2)));
}

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** `Authorization: Bearer <key>` → key; anything else → null. */
export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : null;
}

/**
 * API keys are held only as SHA-256 hashes in the store. A presented key is hashed, its row found
 * by that hash, and the hashes compared again with timingSafeEqual. Without a cache every lookup
 * reads the store, so a revocation holds from the next request on. With one (PostgreSQL, see
 * ./key-cache.ts) a revocation holds once the change feed delivers it (milliseconds, on every
 * replica), and a key checked recently keeps working while the database is unreachable.
 */
export class Authenticator {
  private readonly cache: KeyCache<Principal> | null;

  constructor(
    private readonly keys: ApiKeyRepository,
    private readonly tenants: TenantRepository,
    cache?: KeyCacheOptions,
  ) {
    this.cache = cache ? new KeyCache<Principal>(cache) : null;
    this.cache?.start((hash) => this.validate(hash));
  }

  /** The key's principal; null for a key that is not valid. Throws database_unavailable (503, never a 401) for a key it cannot check. */
  async authenticate(presented: string): Promise<Principal | null> {
    const hash = hashKey(presented);
    const cache = this.cache;
    if (!cache) return (await this.validate(hash))?.principal ?? null;
    const cached = cache.find(hash);
    if (cached && cache.fresh(cached)) return cached.principal;
    const graced = () => {
      if (cached && cache.withinGrace(cached)) return cached.principal;
      throw databaseUnavailableError();
    };
    // Just failed: answer now rather than have every request wait out a connect timeout.
    if (cache.databaseRecentlyDown()) return graced();
    const ticket = cache.ticket();
    let valid: Awaited<ReturnType<Authenticator['validate']>>;
    try {
      valid = await this.validate(hash);
    } catch (err) {
      if (!isDatabaseUnavailable(err)) throw err;
      cache.databaseFailed();
      return graced();
    }
    cache.store(ticket, hash, valid);
    return valid?.principal ?? null;
  }

  /** Stops the cache's periodic reconcile. */
  close(): void {
    this.cache?.stop();
  }

  /** What the store says about the key with this hash now; null: not a valid key. */
  private async validate(hash: Buffer): Promise<{ principal: Principal; keyId: string; tenantId: string | null } | null> {
    const found = await this.keys.findByHash(hash);
    if (!found || !timingSafeEqual(hash, found.storedHash)) return null;
    const k = found.record;
    if (k.revokedAt !== null) return null;
    // Deleting a tenant revokes its keys in the same transaction; this holds even if a row was edited by hand.
    if (k.tenantId !== null && !(await this.tenants.get(k.tenantId))) return null;
    const principal: Principal = {
      scope: k.scope,
      keyId: k.id,
      tenantId: k.tenantId,
      defaultCarryOn: k.defaultCarryOn,
      harvest: k.harvest ? runtimeHarvestPolicy(k.harvest) : null,
    };
    return { principal, keyId: k.id, tenantId: k.tenantId };
  }

  /**
   * The principal acting for `tenant` (the TENANT_HEADER). A global admin may act for any live
   * tenant; any other key only for its own tenant, where the header changes nothing.
   */
  async actAs(principal: Principal, tenant: string): Promise<Principal> {
    if (principal.tenantId === tenant) return principal;
    if (principal.scope !== 'admin' || principal.tenantId !== null) {
      throw new ApiError('permission_denied', `This API key cannot act for tenant '${tenant}'.`, { param: TENANT_HEADER });
    }
    if (!(await this.tenants.get(tenant))) {
      throw new ApiError('invalid_value', `Invalid '${TENANT_HEADER}': there is no tenant '${tenant}'.`, { param: TENANT_HEADER });
    }
    // The admin's own defaults describe no tenant's traffic: acting for one starts from none.
    return { ...principal, tenantId: tenant, defaultCarryOn: null, harvest: null };
  }
}

export interface BootstrapKeys {
  /** Global admin key (CARRYON_ADMIN_KEY, or the generated one). */
  adminKey: string;
  adminKeyName: string;
  /** Inference keys of the `default` tenant (CARRYON_API_KEYS). */
  inferenceKeys: string[];
}

/**
 * Brings the configured keys into the store: they are live exactly while configured. The
 * `default` tenant is created (or brought back) when there are inference keys for it.
 */
export async function syncConfigKeys(
  keys: ApiKeyRepository,
  tenants: TenantRepository,
  boot: BootstrapKeys,
): Promise<{ inserted: number; revoked: number }> {
  const wanted: ConfigKey[] = [];
  if (boot.adminKey) {
    wanted.push({ hash: hashKey(boot.adminKey), scope: 'admin', tenantId: null, name: boot.adminKeyName, prefix: keyPrefix(boot.adminKey) });
  }
  if (boot.inferenceKeys.length > 0) await tenants.ensure(DEFAULT_TENANT, 'Default tenant');
  boot.inferenceKeys.forEach((key, i) => {
    wanted.push({ hash: hashKey(key), scope: 'inference', tenantId: DEFAULT_TENANT, name: `CARRYON_API_KEYS[${i}]`, prefix: keyPrefix(key) });
  });
  return keys.syncConfigKeys(wanted, newKeyId);
}
