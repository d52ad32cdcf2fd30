import path from 'node:path';
import { nowIso } from './db.js';
import type { SqlDriver } from './sql-driver.js';

/** One finished harvest shard as the index knows it (the file is the truth for its contents). */
export interface HarvestShardRecord {
  id: string;
  tenantId: string | null;
  /** Absolute path of the `.safetensors` file. */
  path: string;
  bytes: number;
  rows: number;
  sequences: number;
  /** Unix ms when the shard was opened (its oldest data). */
  createdAt: number;
  /** The shard's safetensors `__metadata__` (string values, as in the file). */
  metadata: Record<string, string>;
  /** When the shard reached CARRYON_HARVEST_PUSH_URL; null: not (yet) pushed. */
  pushedAt: string | null;
  /** Its key in the object store (CARRYON_OBJECT_STORE_URL); null: only on the disk of the replica that wrote it. */
  objectKey: string | null;
}

export type NewHarvestShard = Omit<HarvestShardRecord, 'pushedAt' | 'objectKey'>;

/** A shard's place in the index, without its metadata. */
export type HarvestShardEntry = Pick<HarvestShardRecord, 'id' | 'tenantId' | 'path' | 'bytes' | 'createdAt' | 'objectKey'>;

type EntryRow = Pick<ShardRow, 'id' | 'tenant_id' | 'path' | 'bytes' | 'created_at' | 'object_key'>;

interface ShardRow {
  id: string;
  tenant_id: string | null;
  path: string;
  bytes: number;
  rows: number;
  sequences: number;
  created_at: number;
  metadata: string;
  pushed_at: string | null;
  object_key: string | null;
}

/**
 * The harvest shard index (`harvest_shards`). The writer reports each shard once it is on disk;
 * a crash between the rename and this insert makes the next start's rescan report it again, so
 * `insert` is idempotent on the id.
 */
export class HarvestShardRepository {
  constructor(
    private readonly db: SqlDriver,
    /** Paths are stored relative to it, like carry-on folders, so the data folder can move. */
    private readonly dataDir: string,
  ) {}

  /** Adds a shard; true when it was new (false: already indexed, row unchanged). */
  async insert(s: NewHarvestShard): Promise<boolean> {
    const { changes } = await this.db.run(
      `INSERT INTO harvest_shards (id, tenant_id, path, bytes, rows, sequences, created_at, metadata)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
      [s.id, s.tenantId, path.relative(this.dataDir, s.path), s.bytes, s.rows, s.sequences, s.createdAt, JSON.stringify(s.metadata)],
    );
    return changes > 0;
  }

  async get(id: string): Promise<HarvestShardRecord | null> {
    const row = await this.db.get<ShardRow>('SELECT * FROM harvest_shards WHERE id = ?', [id]);
    return row ? this.toRecord(row) : null;
  }

  /** Oldest first; `tenantId` narrows to one tenant (`null`: shards of no tenant). */
  async list(filter: { tenantId?: string | null } = {}): Promise<HarvestShardRecord[]> {
    return (await this.select<ShardRow>('SELECT * FROM harvest_shards', filter)).map((r) => this.toRecord(r));
  }

  /**
   * What retention and forgetting need, oldest first, without the metadata (whose per-sequence lists
   * can be large): `tenantId` narrows as in `list`.
   */
  async entries(filter: { tenantId?: string | null } = {}): Promise<HarvestShardEntry[]> {
    const rows = await this.select<EntryRow>('SELECT id, tenant_id, path, bytes, created_at, object_key FROM harvest_shards', filter);
    return rows.map((r) => this.toEntry(r));
  }

  /** Every indexed id: what the writer's rescan must not report again. */
  async ids(): Promise<string[]> {
    return (await this.db.query<{ id: string }>('SELECT id FROM harvest_shards')).map((r) => r.id);
  }

  /** Shards not yet pushed, oldest first. */
  async unpushed(): Promise<HarvestShardRecord[]> {
    const rows = await this.db.query<ShardRow>('SELECT * FROM harvest_shards WHERE pushed_at IS NULL ORDER BY created_at, id');
    return rows.map((r) => this.toRecord(r));
  }

  /** Shards not yet in the object store, oldest first (each replica uploads those it has on disk). */
  async notUploaded(): Promise<HarvestShardEntry[]> {
    const rows = await this.db.query<EntryRow>('SELECT id, tenant_id, path, bytes, created_at, object_key FROM harvest_shards WHERE object_key IS NULL ORDER BY created_at, id');
    return rows.map((r) => this.toEntry(r));
  }

  /** Records that the shard is in the object store under `key`; false when it is no longer indexed. */
  async markUploaded(id: string, key: string): Promise<boolean> {
    return (await this.db.run('UPDATE harvest_shards SET object_key = ? WHERE id = ?', [key, id])).changes > 0;
  }

  /** Records a successful push; false when the shard is no longer indexed. */
  async markPushed(id: string): Promise<boolean> {
    return (await this.db.run('UPDATE harvest_shards SET pushed_at = ? WHERE id = ?', [nowIso(), id])).changes > 0;
  }

  async totals(): Promise<{ shards: number; bytes: number; rows: number; sequences: number }> {
    // CAST: PostgreSQL's SUM of a BIGINT is a NUMERIC (a string to pg); cast back, it is a number on both backends.
    const t = (await this.db.get<{ shards: number; bytes: number | null; rows: number | null; sequences: number | null }>(
      `SELECT COUNT(*) AS shards, CAST(SUM(bytes) AS BIGINT) AS bytes, CAST(SUM(rows) AS BIGINT) AS rows,
         CAST(SUM(sequences) AS BIGINT) AS sequences FROM harvest_shards`,
    )) as { shards: number; bytes: number | null; rows: number | null; sequences: number | null };
    return { shards: t.shards, bytes: t.bytes ?? 0, rows: t.rows ?? 0, sequences: t.sequences ?? 0 };
  }

  async delete(id: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM harvest_shards WHERE id = ?', [id])).changes > 0;
  }

  async deleteForTenant(tenantId: string | null): Promise<number> {
    const { changes } =
      tenantId === null
        ? await this.db.run('DELETE FROM harvest_shards WHERE tenant_id IS NULL')
        : await this.db.run('DELETE FROM harvest_shards WHERE tenant_id = ?', [tenantId]);
    return changes;
  }

  /** `select` narrowed by tenant (`null`: shards of no tenant), oldest first. */
  private select<R>(select: string, filter: { tenantId?: string | null }): Promise<R[]> {
    const order = 'ORDER BY created_at, id';
    if (filter.tenantId === undefined) return this.db.query<R>(`${select} ${order}`);
    if (filter.tenantId === null) return this.db.query<R>(`${select} WHERE tenant_id IS NULL ${order}`);
    return this.db.query<R>(`${select} WHERE tenant_id = ? ${order}`, [filter.tenantId]);
  }

  private toEntry(r: EntryRow): HarvestShardEntry {
    return { id: r.id, tenantId: r.tenant_id, path: path.resolve(this.dataDir, r.path), bytes: r.bytes, createdAt: r.created_at, objectKey: r.object_key };
  }

  private toRecord(r: ShardRow): HarvestShardRecord {
    return {
      id: r.id,
      tenantId: r.tenant_id,
      path: path.resolve(this.dataDir, r.path),
      bytes: r.bytes,
      rows: r.rows,
      sequences: r.sequences,
      createdAt: r.created_at,
      metadata: JSON.parse(r.metadata) as Record<string, string>,
      pushedAt: r.pushed_at,
      objectKey: r.object_key,
    };
  }
}
