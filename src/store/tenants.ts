import { nowIso, statementCache, type Db, type Prepare } from './db.js';

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
  private readonly sql: Prepare;

  constructor(private readonly db: Db) {
    this.sql = statementCache(db);
  }

  /** A live (not deleted) tenant. */
  get(id: string): TenantRecord | null {
    const row = this.sql<[string], TenantRow>('SELECT * FROM tenants WHERE id = ? AND deleted_at IS NULL').get(id);
    return row ? toRecord(row) : null;
  }

  list(): TenantRecord[] {
    return this.sql<[], TenantRow>('SELECT * FROM tenants WHERE deleted_at IS NULL ORDER BY id').all().map(toRecord);
  }

  /**
   * Creates the tenant, or brings back a deleted one under the same id (its old keys stay revoked
   * and its old carry-ons deleted). Returns null when a live tenant already has the id.
   */
  create(id: string, name: string): TenantRecord | null {
    return this.db
      .transaction((): TenantRecord | null => {
        const existing = this.sql<[string], TenantRow>('SELECT * FROM tenants WHERE id = ?').get(id);
        if (existing && existing.deleted_at === null) return null;
        const now = nowIso();
        if (existing) {
          this.sql('UPDATE tenants SET name = ?, created_at = ?, deleted_at = NULL WHERE id = ?').run(name, now, id);
        } else {
          this.sql('INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)').run(id, name, now);
        }
        return { id, name, createdAt: now };
      })
      .immediate();
  }

  /** The live tenant, created (or brought back) when missing. */
  ensure(id: string, name: string): TenantRecord {
    return this.get(id) ?? this.create(id, name) ?? (this.get(id) as TenantRecord);
  }

  /** Soft delete; the caller revokes keys and removes carry-ons in the same transaction. */
  markDeleted(id: string): boolean {
    return this.sql('UPDATE tenants SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL').run(nowIso(), id).changes > 0;
  }
}
