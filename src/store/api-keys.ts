import { nowIso, statementCache, type Db, type Prepare } from './db.js';
import { parseStoredHarvestPolicy, type HarvestPolicy } from './harvest-policy.js';

export type Scope = 'admin' | 'inference';
export type KeyOrigin = 'api' | 'config';

/** A key as the admin API and the authenticator see it: never the key, never its hash. */
export interface ApiKeyRecord {
  id: string;
  /** null: a global admin key. */
  tenantId: string | null;
  scope: Scope;
  name: string | null;
  prefix: string;
  defaultCarryOn: string | null;
  harvest: HarvestPolicy | null;
  origin: KeyOrigin;
  createdAt: string;
  revokedAt: string | null;
}

export interface NewApiKey {
  id: string;
  tenantId: string | null;
  scope: Scope;
  name: string | null;
  hash: Buffer;
  prefix: string;
  defaultCarryOn?: string | null;
  harvest?: HarvestPolicy | null;
  origin?: KeyOrigin;
}

/** Fields PATCH may change; `undefined` leaves a field as it is, `null` clears it. */
export interface ApiKeyPatch {
  name?: string | null;
  defaultCarryOn?: string | null;
  harvest?: HarvestPolicy | null;
}

/** A key that CARRYON_ADMIN_KEY / CARRYON_API_KEYS says must be valid. */
export interface ConfigKey {
  hash: Buffer;
  scope: Scope;
  tenantId: string | null;
  name: string;
  prefix: string;
}

interface ApiKeyRow {
  id: string;
  tenant_id: string | null;
  scope: Scope;
  name: string | null;
  key_hash: Buffer;
  prefix: string;
  default_carry_on: string | null;
  harvest_policy: string | null;
  origin: KeyOrigin;
  created_at: string;
  revoked_at: string | null;
}

const toRecord = (r: ApiKeyRow): ApiKeyRecord => ({
  id: r.id,
  tenantId: r.tenant_id,
  scope: r.scope,
  name: r.name,
  prefix: r.prefix,
  defaultCarryOn: r.default_carry_on,
  harvest: parseStoredHarvestPolicy(r.harvest_policy),
  origin: r.origin,
  createdAt: r.created_at,
  revokedAt: r.revoked_at,
});

const policyText = (p: HarvestPolicy | null | undefined): string | null => (p ? JSON.stringify(p) : null);

export class ApiKeyRepository {
  private readonly sql: Prepare;

  constructor(private readonly db: Db) {
    this.sql = statementCache(db);
  }

  insert(k: NewApiKey): ApiKeyRecord {
    this.sql(
        `INSERT INTO api_keys (id, tenant_id, scope, name, key_hash, prefix, default_carry_on, harvest_policy, origin, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(k.id, k.tenantId, k.scope, k.name, k.hash, k.prefix, k.defaultCarryOn ?? null, policyText(k.harvest), k.origin ?? 'api', nowIso());
    return this.get(k.id) as ApiKeyRecord;
  }

  /** The key whose hash this is, with the stored hash for the caller's constant-time comparison. */
  findByHash(hash: Buffer): { record: ApiKeyRecord; storedHash: Buffer } | null {
    const row = this.sql<[Buffer], ApiKeyRow>('SELECT * FROM api_keys WHERE key_hash = ?').get(hash);
    return row ? { record: toRecord(row), storedHash: row.key_hash } : null;
  }

  get(id: string): ApiKeyRecord | null {
    const row = this.sql<[string], ApiKeyRow>('SELECT * FROM api_keys WHERE id = ?').get(id);
    return row ? toRecord(row) : null;
  }

  /** All keys, or one tenant's (`null`: the global admin keys), oldest first. */
  list(tenantId?: string | null): ApiKeyRecord[] {
    const rows =
      tenantId === undefined
        ? this.sql<[], ApiKeyRow>('SELECT * FROM api_keys ORDER BY created_at, id').all()
        : tenantId === null
          ? this.sql<[], ApiKeyRow>('SELECT * FROM api_keys WHERE tenant_id IS NULL ORDER BY created_at, id').all()
          : this.sql<[string], ApiKeyRow>('SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, id').all(tenantId);
    return rows.map(toRecord);
  }

  update(id: string, patch: ApiKeyPatch): ApiKeyRecord | null {
    const sets: string[] = [];
    const values: Array<string | null> = [];
    const set = (column: string, value: string | null) => {
      sets.push(`${column} = ?`);
      values.push(value);
    };
    if (patch.name !== undefined) set('name', patch.name);
    if (patch.defaultCarryOn !== undefined) set('default_carry_on', patch.defaultCarryOn);
    if (patch.harvest !== undefined) set('harvest_policy', policyText(patch.harvest));
    if (sets.length > 0) this.sql(`UPDATE api_keys SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
    return this.get(id);
  }

  /** Revokes a live key; false when it does not exist or was already revoked. */
  revoke(id: string): boolean {
    return this.sql('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(nowIso(), id).changes > 0;
  }

  revokeForTenant(tenantId: string): number {
    return this.sql('UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL').run(nowIso(), tenantId).changes;
  }

  /**
   * Makes the config-origin keys match the configuration: listed keys are live (inserted, or
   * restored if a previous boot revoked them), config keys no longer listed are revoked. The
   * environment is the source of truth for these keys, so the admin API cannot revoke them.
   */
  syncConfigKeys(keys: ConfigKey[], newId: () => string): { inserted: number; revoked: number } {
    return this.db
      .transaction(() => {
        let inserted = 0;
        const wanted = new Set<string>();
        for (const k of keys) {
          const hex = k.hash.toString('hex');
          if (wanted.has(hex)) continue;
          wanted.add(hex);
          const found = this.findByHash(k.hash);
          if (!found) {
            this.insert({ ...k, id: newId(), origin: 'config' });
            inserted++;
          } else if (found.record.origin === 'config') {
            this.sql('UPDATE api_keys SET scope = ?, tenant_id = ?, name = ?, prefix = ?, revoked_at = NULL WHERE id = ?')
              .run(k.scope, k.tenantId, k.name, k.prefix, found.record.id);
          }
          // An API-created key that is also configured keeps its row: revoking it through the API still works.
        }
        let revoked = 0;
        for (const r of this.sql<[], ApiKeyRow>("SELECT * FROM api_keys WHERE origin = 'config' AND revoked_at IS NULL").all()) {
          if (!wanted.has(r.key_hash.toString('hex'))) revoked += Number(this.revoke(r.id));
        }
        return { inserted, revoked };
      })
      .immediate();
  }
}
