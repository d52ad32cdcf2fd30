import path from 'node:path';
import { nowIso, statementCache, type Db, type Prepare } from './db.js';

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
}

export type NewHarvestShard = Omit<HarvestShardRecord, 'pushedAt'>;

/** A shard's place in the index, without its metadata. */
export type HarvestShardEntry = Pick<HarvestShardRecord, 'id' | 'tenantId' | 'path' | 'bytes' | 'createdAt'>;

type EntryRow = Pick<ShardRow, 'id' | 'tenant_id' | 'path' | 'bytes' | 'created_at'>;

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
}

/**
 * The harvest shard index (`harvest_shards`). The writer reports each shard once it is on disk;
 * a crash between the rename and this insert makes the next start's rescan report it again, so
 * `insert` is idempotent on the id.
 */
export class HarvestShardRepository {
  private readonly sql: Prepare;

  constructor(
    db: Db,
    /** Paths are stored relative to it, like carry-on folders, so the data folder can move. */
    private readonly dataDir: string,
  ) {
    this.sql = statementCache(db);
  }

  /** Adds a shard; true when it was new (false: already indexed, row unchanged). */
  insert(s: NewHarvestShard): boolean {
    return (
      this.sql(
        `INSERT INTO harvest_shards (id, tenant_id, path, bytes, rows, sequences, created_at, metadata)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
      ).run(s.id, s.tenantId, path.relative(this.dataDir, s.path), s.bytes, s.rows, s.sequences, s.createdAt, JSON.stringify(s.metadata))
        .changes > 0
    );
  }

  get(id: string): HarvestShardRecord | null {
    const row = this.sql<[string], ShardRow>('SELECT * FROM harvest_shards WHERE id = ?').get(id);
    return row ? this.toRecord(row) : null;
  }

  /** Oldest first; `tenantId` narrows to one tenant (`null`: shards of no tenant). */
  list(filter: { tenantId?: string | null } = {}): HarvestShardRecord[] {
    const order = 'ORDER BY created_at, id';
    const rows =
      filter.tenantId === undefined
        ? this.sql<[], ShardRow>(`SELECT * FROM harvest_shards ${order}`).all()
        : filter.tenantId === null
          ? this.sql<[], ShardRow>(`SELECT * FROM harvest_shards WHERE tenant_id IS NULL ${order}`).all()
          : this.sql<[string], ShardRow>(`SELECT * FROM harvest_shards WHERE tenant_id = ? ${order}`).all(filter.tenantId);
    return rows.map((r) => this.toRecord(r));
  }

  /**
   * What retention and forgetting need, oldest first, without the metadata (whose per-sequence lists
   * can be large): `tenantId` narrows as in `list`.
   */
  entries(filter: { tenantId?: string | null } = {}): HarvestShardEntry[] {
    const cols = 'SELECT id, tenant_id, path, bytes, created_at FROM harvest_shards';
    const order = 'ORDER BY created_at, id';
    const rows =
      filter.tenantId === undefined
        ? this.sql<[], EntryRow>(`${cols} ${order}`).all()
        : filter.tenantId === null
          ? this.sql<[], EntryRow>(`${cols} WHERE tenant_id IS NULL ${order}`).all()
          : this.sql<[string], EntryRow>(`${cols} WHERE tenant_id = ? ${order}`).all(filter.tenantId);
    return rows.map((r) => ({ id: r.id, tenantId: r.tenant_id, path: path.resolve(this.dataDir, r.path), bytes: r.bytes, createdAt: r.created_at }));
  }

  /** Every indexed id: what the writer's rescan must not report again. */
  ids(): string[] {
    return this.sql<[], { id: string }>('SELECT id FROM harvest_shards').all().map((r) => r.id);
  }

  /** Shards not yet pushed, oldest first. */
  unpushed(): HarvestShardRecord[] {
    return this.sql<[], ShardRow>('SELECT * FROM harvest_shards WHERE pushed_at IS NULL ORDER BY created_at, id')
      .all()
      .map((r) => this.toRecord(r));
  }

  /** Records a successful push; false when the shard is no longer indexed. */
  markPushed(id: string): boolean {
    return this.sql('UPDATE harvest_shards SET pushed_at = ? WHERE id = ?').run(nowIso(), id).changes > 0;
  }

  totals(): { shards: number; bytes: number; rows: number; sequences: number } {
    const t = this.sql<[], { shards: number; bytes: number | null; rows: number | null; sequences: number | null }>(
      'SELECT COUNT(*) AS shards, SUM(bytes) AS bytes, SUM(rows) AS rows, SUM(sequences) AS sequences FROM harvest_shards',
    ).get() as { shards: number; bytes: number | null; rows: number | null; sequences: number | null };
    return { shards: t.shards, bytes: t.bytes ?? 0, rows: t.rows ?? 0, sequences: t.sequences ?? 0 };
  }

  delete(id: string): boolean {
    return this.sql('DELETE FROM harvest_shards WHERE id = ?').run(id).changes > 0;
  }

  deleteForTenant(tenantId: string | null): number {
    return tenantId === null
      ? this.sql('DELETE FROM harvest_shards WHERE tenant_id IS NULL').run().changes
      : this.sql('DELETE FROM harvest_shards WHERE tenant_id = ?').run(tenantId).changes;
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
    };
  }
}
