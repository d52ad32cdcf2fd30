import path from 'node:path';
import { parseCarryOnManifest, type CarryOnManifest } from '../carryon/manifest.js';
import type {
  CarryOnChange,
  CarryOnChangeKind,
  CarryOnSummary as CatalogSummary,
  CarryOnVersionRecord as CatalogVersionRecord,
} from '../carryon/catalog.js';
import type { ChangeFeed } from './change-feed.js';
import { nowIso } from './db.js';
import type { SqlDriver, SqlExecutor } from './sql-driver.js';

/** Aliases start with a letter, so an alias can never be mistaken for a version number. */
export const ALIAS_PATTERN = /^[a-z][a-z0-9._-]{0,63}$/;
/** Built in: always the newest live version; cannot be set as an alias. */
export const LATEST = 'latest';

/** The graph's name inside the version folders of gateways before content-addressed storage (still read). */
export const LEGACY_GRAPH_FILE = 'carry-on.onnx';

/**
 * A reference to a carry-on as keys and requests name it: `<id>` (its newest version) or
 * `<id>@<version or alias>`. `@` cannot occur in an id, so the split is unambiguous.
 */
export const CARRYON_REF_PATTERN = /^([a-z0-9][a-z0-9._-]{0,63})(?:@([1-9][0-9]{0,14}|[a-z][a-z0-9._-]{0,63}))?$/;

export function parseCarryOnRef(ref: string): { carryOnId: string; versionOrAlias?: string } | null {
  const m = CARRYON_REF_PATTERN.exec(ref);
  if (!m) return null;
  return m[2] === undefined ? { carryOnId: m[1] } : { carryOnId: m[1], versionOrAlias: m[2] };
}

/** The store's record adds when the version was stored to what the engine needs (src/carryon/catalog.ts). */
export interface CarryOnVersionRecord extends CatalogVersionRecord {
  createdAt: string;
}

export interface CarryOnVersionInfo {
  version: number;
  sha256: string;
  bytes: number;
  createdAt: string;
  manifest: CarryOnManifest;
}

export interface CarryOnSummary extends CatalogSummary {
  /** Live versions, oldest first. */
  versions: CarryOnVersionInfo[];
  aliases: Record<string, number>;
}

export type { CarryOnChange, CarryOnChangeKind };

/** What `addVersion`'s install step put on disk for the version number it was given. */
export interface InstalledVersion {
  /** The durable graph file the row will point at. */
  graphPath: string;
  manifest: CarryOnManifest;
  sha256: string;
  bytes: number;
}

export type DeleteVersionResult =
  | { status: 'deleted'; files: string; carryOnDeleted: boolean }
  | { status: 'not-found' }
  | { status: 'aliased'; aliases: string[] };

interface VersionRow {
  tenant_id: string;
  carry_on_id: string;
  version: number;
  manifest: string;
  /**
   * Where the version's graph is, relative to the data folder: its blob `carry-ons/blobs/<sha256>.onnx`;
   * for versions stored before graphs were content-addressed, a version folder holding `carry-on.onnx`.
   */
  dir: string;
  sha256: string;
  bytes: number;
  created_at: string;
}

interface CarryOnRow {
  id: string;
  created_at: string;
}

interface AliasRow {
  carry_on_id: string;
  alias: string;
  version: number;
}

/** Live versions of live carry-ons of live tenants: the only ones anything may resolve to. */
const LIVE_VERSIONS = `
  SELECT v.* FROM carry_on_versions v
  JOIN carry_ons c ON c.tenant_id = v.tenant_id AND c.id = v.carry_on_id AND c.deleted_at IS NULL
  JOIN tenants t ON t.id = v.tenant_id AND t.deleted_at IS NULL
  WHERE v.deleted_at IS NULL`;

/**
 * Carry-ons, their immutable numbered versions and movable aliases. Version numbers are never
 * reused (deleted versions keep their row), so (tenant, id, version) names the same bytes forever
 * and the engine may cache sessions by it. Change events fire after the commit, on every replica
 * (through the store's change feed).
 */
export class CarryOnRepository {
  private readonly listeners = new Set<(e: CarryOnChange) => void>();
  private readonly resyncListeners = new Set<() => void>();
  /** Parsed manifests by (tenant, id, version): versions are immutable, so entries never go stale. */
  private readonly manifests = new Map<string, CarryOnManifest>();

  constructor(
    private readonly db: SqlDriver,
    /** Graph paths are stored relative to it, so the data folder can move (a volume remounted elsewhere). */
    private readonly dataDir: string,
    private readonly changes: ChangeFeed,
  ) {
    changes.subscribe({
      change: (c) => {
        if (c.kind === 'carry-on') this.emit(c.change);
      },
      resync: () => {
        for (const listener of [...this.resyncListeners]) listener();
      },
    });
  }

  /**
   * The version a request names: the newest live one when `versionOrAlias` is absent, '' or
   * 'latest'; a number; or an alias. null when the tenant does not own it or it is deleted.
   */
  async resolve(tenantId: string, carryOnId: string, versionOrAlias?: string, q: SqlExecutor = this.db): Promise<CarryOnVersionRecord | null> {
    const ref = versionOrAlias ?? '';
    const where = `${LIVE_VERSIONS} AND v.tenant_id = ? AND v.carry_on_id = ?`;
    let row: VersionRow | undefined;
    if (ref === '' || ref === LATEST) {
      row = await q.get<VersionRow>(`${where} ORDER BY v.version DESC LIMIT 1`, [tenantId, carryOnId]);
    } else if (/^[1-9][0-9]{0,14}$/.test(ref)) {
      row = await q.get<VersionRow>(`${where} AND v.version = ?`, [tenantId, carryOnId, Number(ref)]);
    } else {
      row = await q.get<VersionRow>(
        `${where} AND v.version = (SELECT a.version FROM carry_on_aliases a
           WHERE a.tenant_id = v.tenant_id AND a.carry_on_id = v.carry_on_id AND a.alias = ?)`,
        [tenantId, carryOnId, ref],
      );
    }
    return row ? this.toRecord(row) : null;
  }

  async listForTenant(tenantId: string): Promise<CarryOnSummary[]> {
    const carryOns = await this.db.query<CarryOnRow>(
      `SELECT c.id, c.created_at FROM carry_ons c JOIN tenants t ON t.id = c.tenant_id AND t.deleted_at IS NULL
       WHERE c.tenant_id = ? AND c.deleted_at IS NULL ORDER BY c.id`,
      [tenantId],
    );
    const versions = await this.db.query<VersionRow>(`${LIVE_VERSIONS} AND v.tenant_id = ? ORDER BY v.carry_on_id, v.version`, [tenantId]);
    const aliases = await this.db.query<AliasRow>('SELECT carry_on_id, alias, version FROM carry_on_aliases WHERE tenant_id = ? ORDER BY alias', [tenantId]);
    return carryOns.flatMap((c): CarryOnSummary[] => {
      const own = versions.filter((v) => v.carry_on_id === c.id);
      if (own.length === 0) return [];
      const summary: CarryOnSummary = {
        id: c.id,
        createdAt: c.created_at,
        latestVersion: own[own.length - 1].version,
        versions: own.map((v) => ({ version: v.version, sha256: v.sha256, bytes: v.bytes, createdAt: v.created_at, manifest: this.manifestOf(v) })),
        aliases: Object.fromEntries(aliases.filter((a) => a.carry_on_id === c.id).map((a) => [a.alias, a.version])),
      };
      return [summary];
    });
  }

  async get(tenantId: string, carryOnId: string): Promise<CarryOnSummary | null> {
    return (await this.listForTenant(tenantId)).find((c) => c.id === carryOnId) ?? null;
  }

  /** Subscribes to changes; returns the unsubscribe function. */
  onChange(listener: (e: CarryOnChange) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Subscribes to resyncs (see CarryOnCatalog.onResync); returns the unsubscribe function. */
  onResync(listener: () => void): () => void {
    this.resyncListeners.add(listener);
    return () => {
      this.resyncListeners.delete(listener);
    };
  }

  /**
   * Adds the next version of (tenant, id), creating or reviving the carry-on. `install` runs
   * inside the write transaction (holding the store's write lock) with the assigned number and
   * must make the graph durable before it resolves, so the row is only ever recorded pointing at a
   * complete file; if it throws, nothing is recorded. It must not use the store itself (the
   * transaction holds it). null when the tenant does not exist.
   */
  async addVersion(
    tenantId: string,
    carryOnId: string,
    install: (version: number) => InstalledVersion | Promise<InstalledVersion>,
  ): Promise<CarryOnVersionRecord | null> {
    const record = await this.db.transaction(async (tx): Promise<CarryOnVersionRecord | null> => {
      if (!(await tx.get('SELECT 1 FROM tenants WHERE id = ? AND deleted_at IS NULL', [tenantId]))) return null;
      const now = nowIso();
      await tx.run(
        `INSERT INTO carry_ons (tenant_id, id, created_at) VALUES (?, ?, ?)
         ON CONFLICT (tenant_id, id) DO UPDATE SET
           created_at = CASE WHEN carry_ons.deleted_at IS NULL THEN carry_ons.created_at ELSE excluded.created_at END,
           deleted_at = NULL`,
        [tenantId, carryOnId, now],
      );
      const { next } = (await tx.get<{ next: number }>(
        'SELECT COALESCE(MAX(version), 0) + 1 AS next FROM carry_on_versions WHERE tenant_id = ? AND carry_on_id = ?',
        [tenantId, carryOnId],
      )) as { next: number };
      const files = await install(next);
      await tx.run(
        `INSERT INTO carry_on_versions (tenant_id, carry_on_id, version, manifest, dir, sha256, bytes, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        [tenantId, carryOnId, next, JSON.stringify(files.manifest), path.relative(this.dataDir, files.graphPath), files.sha256, files.bytes, now],
      );
      await this.publish(tx, { tenantId, carryOnId, kind: 'version-added', version: next });
      return { tenantId, carryOnId, version: next, graphPath: files.graphPath, manifest: files.manifest, sha256: files.sha256, bytes: files.bytes, createdAt: now };
    });
    return record;
  }

  /** Points `alias` at a live version; false when that version does not exist. */
  async setAlias(tenantId: string, carryOnId: string, alias: string, version: number): Promise<boolean> {
    const ok = await this.db.transaction(async (tx): Promise<boolean> => {
      if (!(await this.resolve(tenantId, carryOnId, String(version), tx))) return false;
      await tx.run(
        `INSERT INTO carry_on_aliases (tenant_id, carry_on_id, alias, version) VALUES (?, ?, ?, ?)
         ON CONFLICT (tenant_id, carry_on_id, alias) DO UPDATE SET version = excluded.version`,
        [tenantId, carryOnId, alias, version],
      );
      await this.publish(tx, { tenantId, carryOnId, kind: 'alias-changed', alias });
      return true;
    });
    return ok;
  }

  async removeAlias(tenantId: string, carryOnId: string, alias: string): Promise<boolean> {
    const { changes } = await this.db.run('DELETE FROM carry_on_aliases WHERE tenant_id = ? AND carry_on_id = ? AND alias = ?', [tenantId, carryOnId, alias]);
    if (changes > 0) await this.publish(this.db, { tenantId, carryOnId, kind: 'alias-changed', alias });
    return changes > 0;
  }

  /**
   * Deletes one version. Refused while an alias points at it: moving traffic off a version is a
   * deliberate step (re-point the alias first), not a side effect. Deleting the last version
   * deletes the carry-on. `files` is the version's graph (or legacy folder) for the caller to pass
   * to `dropUnreferencedGraphs`.
   */
  async deleteVersion(tenantId: string, carryOnId: string, version: number): Promise<DeleteVersionResult> {
    const result = await this.db.transaction(async (tx): Promise<DeleteVersionResult> => {
      const row = await tx.get<VersionRow>(`${LIVE_VERSIONS} AND v.tenant_id = ? AND v.carry_on_id = ? AND v.version = ?`, [tenantId, carryOnId, version]);
      if (!row) return { status: 'not-found' };
      const aliases = (
        await tx.query<{ alias: string }>('SELECT alias FROM carry_on_aliases WHERE tenant_id = ? AND carry_on_id = ? AND version = ? ORDER BY alias', [
          tenantId,
          carryOnId,
          version,
        ])
      ).map((a) => a.alias);
      if (aliases.length > 0) return { status: 'aliased', aliases };
      const now = nowIso();
      await tx.run('UPDATE carry_on_versions SET deleted_at = ? WHERE tenant_id = ? AND carry_on_id = ? AND version = ?', [now, tenantId, carryOnId, version]);
      const remaining = await tx.get('SELECT 1 FROM carry_on_versions WHERE tenant_id = ? AND carry_on_id = ? AND deleted_at IS NULL LIMIT 1', [
        tenantId,
        carryOnId,
      ]);
      if (!remaining) await tx.run('UPDATE carry_ons SET deleted_at = ? WHERE tenant_id = ? AND id = ?', [now, tenantId, carryOnId]);
      await this.publish(tx, { tenantId, carryOnId, kind: 'deleted', version });
      return { status: 'deleted', files: this.absolute(row.dir), carryOnDeleted: !remaining };
    });
    if (result.status === 'deleted') this.forget(tenantId, carryOnId, version);
    return result;
  }

  /** Deletes every version and alias; returns their graph files (see `deleteVersion`), or null when there was no such carry-on. */
  async deleteCarryOn(tenantId: string, carryOnId: string): Promise<string[] | null> {
    return this.db.transaction((tx) => this.deleteCarryOnRows(tx, tenantId, carryOnId));
  }

  /**
   * Deletes all of a tenant's carry-ons; returns their graph files. `alongside` runs in the
   * same transaction (its statements go through the `tx` it is given), so deleting the tenant
   * itself commits together with its carry-ons, or not at all.
   */
  async deleteForTenant(tenantId: string, alongside?: (tx: SqlExecutor) => Promise<void>): Promise<string[]> {
    const dirs = await this.db.transaction(async (tx) => {
      await alongside?.(tx);
      const ids = (await tx.query<{ id: string }>('SELECT id FROM carry_ons WHERE tenant_id = ? AND deleted_at IS NULL', [tenantId])).map((r) => r.id);
      const dirs: string[] = [];
      for (const id of ids) dirs.push(...((await this.deleteCarryOnRows(tx, tenantId, id)) ?? []));
      return dirs;
    });
    return [...new Set(dirs)];
  }

  /**
   * Calls `drop` for each of `files` (absolute graph paths or legacy version folders) that no live
   * version points at any more, holding the store's write lock meanwhile: an upload installs its
   * graph inside its own write transaction, so it can neither reuse a blob that is being dropped
   * nor have its fresh blob dropped before its row commits. Returns the files dropped.
   */
  dropUnreferencedGraphs(files: string[], drop: (file: string) => void | Promise<void>): Promise<string[]> {
    return this.db.transaction(async (tx): Promise<string[]> => {
      const dropped: string[] = [];
      for (const file of new Set(files)) {
        const rel = path.relative(this.dataDir, file);
        if (await tx.get('SELECT 1 FROM carry_on_versions WHERE dir = ? AND deleted_at IS NULL LIMIT 1', [rel])) continue;
        await drop(file);
        dropped.push(file);
      }
      return dropped;
    });
  }

  private async deleteCarryOnRows(tx: SqlExecutor, tenantId: string, carryOnId: string): Promise<string[] | null> {
    if (!(await tx.get('SELECT 1 FROM carry_ons WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL', [tenantId, carryOnId]))) return null;
    const live = await tx.query<VersionRow>('SELECT * FROM carry_on_versions WHERE tenant_id = ? AND carry_on_id = ? AND deleted_at IS NULL', [
      tenantId,
      carryOnId,
    ]);
    const now = nowIso();
    await tx.run('DELETE FROM carry_on_aliases WHERE tenant_id = ? AND carry_on_id = ?', [tenantId, carryOnId]);
    await tx.run('UPDATE carry_on_versions SET deleted_at = ? WHERE tenant_id = ? AND carry_on_id = ? AND deleted_at IS NULL', [now, tenantId, carryOnId]);
    await tx.run('UPDATE carry_ons SET deleted_at = ? WHERE tenant_id = ? AND id = ?', [now, tenantId, carryOnId]);
    for (const v of live) this.forget(tenantId, carryOnId, v.version);
    await this.publish(tx, { tenantId, carryOnId, kind: 'deleted' });
    return [...new Set(live.map((v) => this.absolute(v.dir)))];
  }

  private toRecord(row: VersionRow): CarryOnVersionRecord {
    return {
      tenantId: row.tenant_id,
      carryOnId: row.carry_on_id,
      version: row.version,
      graphPath: this.graphPathOf(row),
      manifest: this.manifestOf(row),
      sha256: row.sha256,
      bytes: row.bytes,
      createdAt: row.created_at,
    };
  }

  private manifestOf(row: VersionRow): CarryOnManifest {
    const key = cacheKey(row.tenant_id, row.carry_on_id, row.version);
    let m = this.manifests.get(key);
    if (!m) {
      m = parseCarryOnManifest(JSON.parse(row.manifest), `stored manifest of ${row.tenant_id}/${row.carry_on_id} v${row.version}`);
      this.manifests.set(key, m);
    }
    return m;
  }

  private forget(tenantId: string, carryOnId: string, version: number): void {
    this.manifests.delete(cacheKey(tenantId, carryOnId, version));
  }

  private absolute(dir: string): string {
    return path.resolve(this.dataDir, dir);
  }

  /** A blob path as stored; a version stored before graphs were content-addressed kept its graph in a folder of its own. */
  private graphPathOf(row: VersionRow): string {
    const stored = this.absolute(row.dir);
    return row.dir.endsWith('.onnx') ? stored : path.join(stored, LEGACY_GRAPH_FILE);
  }

  /** Tells every replica (this one after COMMIT) about `change`, written through `q`. */
  private publish(q: SqlExecutor, change: CarryOnChange): Promise<void> {
    return this.changes.publish(q, { kind: 'carry-on', tenant: change.tenantId, id: change.carryOnId, change });
  }

  /** A throwing listener must not turn a committed change into a failed request. */
  private emit(change: CarryOnChange): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(change);
      } catch (err) {
        process.emitWarning(`carry-on change listener failed: ${(err as Error).message}`, { code: 'CARRYON_LISTENER' });
      }
    }
  }
}

function cacheKey(tenantId: string, carryOnId: string, version: number): string {
  return `${tenantId}\u0000${carryOnId}\u0000${version}`;
}
