import type { ChangeFeed } from './change-feed.js';
import { nowIso } from './db.js';
import type { SqlDriver, SqlExecutor } from './sql-driver.js';

export { TENANT_ID_PATTERN } from '../core/tenant-id.js';

export interface TenantRecord {
  id: string;
  name: string;
  createdAt: string;
}

interface TenantRow {
  id: string;
  name: string;
  created_at: string;
  deleted_at: string | null;
}

const toRecord = (r: TenantRow): TenantRecord => ({ id: r.id, name: r.name, createdAt: r.created_at });

export class TenantRepository {
  constructor(
    private readonly db: SqlDriver,
    private readonly changes: ChangeFeed,
  ) {}

  /** A live (not deleted) tenant. */
  async get(id: string): Promise<TenantRecord | null> {
    const row = await this.db.get<TenantRow>('SELECT * FROM tenants WHERE id = ? AND deleted_at IS NULL', [id]);
    return row ? toRecord(row) : null;
  }

  async list(): Promise<TenantRecord[]> {
    return (await this.db.query<TenantRow>('SELECT * FROM tenants WHERE deleted_at IS NULL ORDER BY id')).map(toRecord);
  }

  /**
   * Creates the tenant, or brings back a deleted one under the same id (its old keys stay revoked
   * and its old carry-ons deleted). Returns null when a live tenant already has the id.
   */
  create(id: string, name: string): Promise<TenantRecord | null> {
    return this.db.transaction(async (tx): Promise<TenantRecord | null> => {
      const existing = await tx.get<TenantRow>('SELECT * FROM tenants WHERE id = ?', [id]);
      if (existing && existing.deleted_at === null) return null;
      const now = nowIso();
      if (existing) {
        await tx.run('UPDATE tenants SET name = ?, created_at = ?, deleted_at = NULL WHERE id = ?', [name, now, id]);
      } else {
        await tx.run('INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)', [id, name, now]);
      }
      return { id, name, createdAt: now };
    });
  }

  /** The live tenant, created (or brought back) when missing. */
  async ensure(id: string, name: string): Promise<TenantRecord> {
    return (await this.get(id)) ?? (await this.create(id, name)) ?? ((await this.get(id)) as TenantRecord);
  }

  /** Soft delete; the caller revokes keys and removes carry-ons in the same transaction (`q`). */
  async markDeleted(id: string, q: SqlExecutor = this.db): Promise<boolean> {
    const deleted = (await q.run('UPDATE tenants SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL', [nowIso(), id])).changes > 0;
    // Every replica drops the tenant's cached keys (revoked in the same transaction).
    if (deleted) await this.changes.publish(q, { kind: 'tenant', tenant: id, id });
    return deleted;
  }
}
