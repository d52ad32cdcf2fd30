import type { ChangeFeed } from './change-feed.js';
import { nowIso } from './db.js';
import { parseStoredHarvestPolicy, type HarvestPolicy } from './harvest-policy.js';
import type { SqlDriver, SqlExecutor } from './sql-driver.js';

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
  constructor(
    private readonly db: SqlDriver,
    private readonly changes: ChangeFeed,
  ) {}

  async insert(k: NewApiKey, q: SqlExecutor = this.db): Promise<ApiKeyRecord> {
    await q.run(
      `INSERT INTO api_keys (id, tenant_id, scope, name, key_hash, prefix, default_carry_on, harvest_policy, origin, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [k.id, k.tenantId, k.scope, k.name, k.hash, k.prefix, k.defaultCarryOn ?? null, policyText(k.harvest), k.origin ?? 'api', nowIso()],
    );
    return (await this.get(k.id, q)) as ApiKeyRecord;
  }

  /** The key whose hash this is, with the stored hash for the caller's constant-time comparison. */
  async findByHash(hash: Buffer, q: SqlExecutor = this.db): Promise<{ record: ApiKeyRecord; storedHash: Buffer } | null> {
    const row = await q.get<ApiKeyRow>('SELECT * FROM api_keys WHERE key_hash = ?', [hash]);
    return row ? { record: toRecord(row), storedHash: row.key_hash } : null;
  }

  async get(id: string, q: SqlExecutor = this.db): Promise<ApiKeyRecord | null> {
    const row = await q.get<ApiKeyRow>('SELECT * FROM api_keys WHERE id = ?', [id]);
    return row ? toRecord(row) : null;
  }

  /** All keys, or one tenant's (`null`: the global admin keys), oldest first. */
  async list(tenantId?: string | null): Promise<ApiKeyRecord[]> {
    const rows =
      tenantId === undefined
        ? await this.db.query<ApiKeyRow>('SELECT * FROM api_keys ORDER BY created_at, id')
        : tenantId === null
          ? await this.db.query<ApiKeyRow>('SELECT * FROM api_keys WHERE tenant_id IS NULL ORDER BY created_at, id')
          : await this.db.query<ApiKeyRow>('SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, id', [tenantId]);
    return rows.map(toRecord);
  }

  async update(id: string, patch: ApiKeyPatch): Promise<ApiKeyRecord | null> {
    const sets: string[] = [];
    const values: Array<string | null> = [];
    const set = (column: string, value: string | null) => {
      sets.push(`${column} = ?`);
      values.push(value);
    };
    if (patch.name !== undefined) set('name', patch.name);
    if (patch.defaultCarryOn !== undefined) set('default_carry_on', patch.defaultCarryOn);
    if (patch.harvest !== undefined) set('harvest_policy', policyText(patch.harvest));
    if (sets.length === 0) return this.get(id);
    return this.db.transaction(async (tx) => {
      await tx.run(`UPDATE api_keys SET ${sets.join(', ')} WHERE id = ?`, [...values, id]);
      const updated = await this.get(id, tx);
      // Cached principals carry the default carry-on and harvest policy: every replica re-reads them.
      if (updated) await this.changes.publish(tx, { kind: 'key', tenant: updated.tenantId, id });
      return updated;
    });
  }

  /** Revokes a live key; false when it does not exist or was already revoked. */
  async revoke(id: string, q: SqlExecutor = this.db): Promise<boolean> {
    const revoked = (await q.run('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', [nowIso(), id])).changes > 0;
    if (revoked) await this.changes.publish(q, { kind: 'key', tenant: null, id });
    return revoked;
  }

  /** Revokes every live key of the tenant; `q`: the tenant deletion's transaction. */
  async revokeForTenant(tenantId: string, q: SqlExecutor = this.db): Promise<number> {
    return (await q.run('UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL', [nowIso(), tenantId])).changes;
  }

  /**
   * Makes the config-origin keys match the configuration: listed keys are live (inserted, or
   * restored if a previous boot revoked them), config keys no longer listed are revoked. The
   * environment is the source of truth for these keys, so the admin API cannot revoke them.
   */
  syncConfigKeys(keys: ConfigKey[], newId: () => string): Promise<{ inserted: number; revoked: number }> {
    return this.db.transaction(async (tx) => {
      let inserted = 0;
      const wanted = new Set<string>();
      for (const k of keys) {
        const hex = k.hash.toString('hex');
        if (wanted.has(hex)) continue;
        wanted.add(hex);
        const found = await this.findByHash(k.hash, tx);
        if (!found) {
          await this.insert({ ...k, id: newId(), origin: 'config' }, tx);
          inserted++;
        } else if (found.record.origin === 'config') {
          await tx.run('UPDATE api_keys SET scope = ?, tenant_id = ?, name = ?, prefix = ?, revoked_at = NULL WHERE id = ?', [
            k.scope,
            k.tenantId,
            k.name,
            k.prefix,
            found.record.id,
          ]);
        }
        // An API-created key that is also configured keeps its row: revoking it through the API still works.
      }
      let revoked = 0;
      for (const r of await tx.query<ApiKeyRow>("SELECT * FROM api_keys WHERE origin = 'config' AND revoked_at IS NULL")) {
        if (!wanted.has(r.key_hash.toString('hex'))) revoked += Number(await this.revoke(r.id, tx));
      }
      return { inserted, revoked };
    });
  }
}
