/**
 * Retention and forgetting, pure with respect to the index: the caller passes the shards its index
 * lists and a callback that deletes one index row. Files are always deleted BEFORE their index row
 * (and the folder fsynced), so a crash in between leaves a dangling row pointing at nothing, never an
 * unindexed file that `rescan` would resurrect.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../core/fs-atomic.js';
import type { ForgetReport } from './shard-writer.js';
import { tenantDirName } from './shard-writer.js';

/** The index's view of a shard (a subset of ShardInfo). */
export interface IndexedShard {
  id: string;
  path: string;
  tenantId: string | null;
  bytes: number;
  /** Unix ms; retention deletes the oldest first. */
  createdAt: number;
  /** Its key in the object store, once uploaded (absent or null: only on disk). */
  objectKey?: string | null;
}

export interface RetentionPolicy {
  /** Keep at most this many bytes of shards in total (the oldest go first). */
  maxTotalBytes?: number;
  /** Delete shards older than this. */
  maxAgeMs?: number;
}

export type DeleteIndexed = (shard: IndexedShard) => void | Promise<void>;

/** Which shards to delete, oldest first: everything past maxAgeMs, then the oldest until within maxTotalBytes. */
export function planRetention<T extends IndexedShard>(shards: readonly T[], policy: RetentionPolicy, now = Date.now()): T[] {
  const byAge = [...shards].sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const doomed: T[] = [];
  let total = byAge.reduce((a, s) => a + s.bytes, 0);
  for (const s of byAge) {
    const tooOld = policy.maxAgeMs !== undefined && now - s.createdAt > policy.maxAgeMs;
    const overBudget = policy.maxTotalBytes !== undefined && total > policy.maxTotalBytes;
    if (!tooOld && !overBudget) break; // sorted by age: nothing newer qualifies by age, and the budget is met
    doomed.push(s);
    total -= s.bytes;
  }
  return doomed;
}

export interface RetentionResult<T extends IndexedShard> {
  deleted: T[];
  freedBytes: number;
  failed: Array<{ shard: T; error: string }>;
}

/** Applies `planRetention`: deletes each shard's file, then its index row. */
export async function applyRetention<T extends IndexedShard>(
  shards: readonly T[],
  policy: RetentionPolicy,
  deleteIndexed: DeleteIndexed,
  now = Date.now(),
): Promise<RetentionResult<T>> {
  const result: RetentionResult<T> = { deleted: [], freedBytes: 0, failed: [] };
  const dirs = new Set<string>();
  const removed: T[] = [];
  for (const shard of planRetention(shards, policy, now)) {
    try {
      fs.rmSync(shard.path, { force: true }); // already gone counts as deleted
      dirs.add(path.dirname(shard.path));
      removed.push(shard);
    } catch (err) {
      result.failed.push({ shard, error: (err as Error).message });
    }
  }
  syncDirs(dirs);
  for (const shard of removed) {
    try {
      await deleteIndexed(shard);
      result.deleted.push(shard);
      result.freedBytes += shard.bytes;
    } catch (err) {
      result.failed.push({ shard, error: (err as Error).message });
    }
  }
  return result;
}

export interface ForgetTenantOptions<T extends IndexedShard> {
  /** The harvest root folder. */
  dir: string;
  tenantId: string | null;
  /**
   * The index's shards (all, or the tenant's). A function is called after the live writer has
   * finished, so it also sees shards indexed while forgetting started.
   */
  shards: readonly T[] | (() => readonly T[] | Promise<readonly T[]>);
  deleteIndexed: DeleteIndexed;
  /** The running writer (Harvester or ShardWriter): discards the tenant's open shard and in-flight work first. */
  writer?: { forgetTenant(tenantId: string | null): Promise<ForgetReport> };
}

export interface ForgetTenantResult<T extends IndexedShard> {
  /** Shard files deleted from the tenant's folder (indexed or not) plus listed ones found elsewhere. */
  shardIds: string[];
  /** Index rows deleted. */
  indexed: T[];
  /** Sequences the writer had not written yet and discarded. */
  discardedSequences: number;
}

/** Deletes every file of a tenant (shards, journals, temp files), then every index row of it. */
export async function forgetTenant<T extends IndexedShard>(opts: ForgetTenantOptions<T>): Promise<ForgetTenantResult<T>> {
  const ids = new Set<string>();
  let discardedSequences = 0;
  if (opts.writer) {
    const r = await opts.writer.forgetTenant(opts.tenantId);
    r.shardIds.forEach((id) => ids.add(id));
    discardedSequences = r.discardedSequences;
  } else {
    const folder = path.join(opts.dir, tenantDirName(opts.tenantId));
    if (fs.existsSync(folder)) {
      for (const name of fs.readdirSync(folder)) if (/^[^.].*\.safetensors$/.test(name)) ids.add(name.slice(0, -'.safetensors'.length));
      fs.rmSync(folder, { recursive: true, force: true });
      syncDirs(new Set([opts.dir]));
    }
  }
  const listed = typeof opts.shards === 'function' ? await opts.shards() : opts.shards;
  const mine = listed.filter((s) => s.tenantId === opts.tenantId);
  const dirs = new Set<string>();
  for (const s of mine) {
    // Normally inside the folder just removed; a moved or re-rooted file is deleted where it is.
    if (fs.existsSync(s.path)) {
      fs.rmSync(s.path, { force: true });
      dirs.add(path.dirname(s.path));
    }
    ids.add(s.id);
  }
  syncDirs(dirs);
  for (const s of mine) await opts.deleteIndexed(s);
  return { shardIds: [...ids], indexed: mine, discardedSequences };
}

function syncDirs(dirs: Set<string>): void {
  for (const d of dirs) {
    try {
      fsyncDir(d);
    } catch {
      // The folder itself may be gone (forget-tenant): nothing left to make durable there.
    }
  }
}
