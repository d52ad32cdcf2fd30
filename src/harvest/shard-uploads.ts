import fs from 'node:fs';
import type { ObjectStore } from '../objects/object-store.js';
import type { HarvestShardRepository } from '../store/harvest-shards.js';
import { ShardPusher, type PushStats } from './pusher.js';
import { tenantDirName } from './shard-writer.js';

/** A shard's object key: laid out like DATA_DIR/harvest, so a bucket listing reads like the folder. */
export function shardObjectKey(shard: { id: string; tenantId: string | null }): string {
  return `harvest/${tenantDirName(shard.tenantId)}/${shard.id}.safetensors`;
}

/**
 * Closed shards into the object store, so every replica can list and serve them. The replica that
 * wrote a shard uploads it from its disk once it is indexed; while the bucket is unreachable the
 * file simply stays and is retried with backoff (ShardPusher), also across restarts (at start every
 * row without an object key whose file is on this disk is queued again), so nothing harvested is lost.
 * The row records the key only after the upload succeeded; then the local file goes (the bucket is
 * the copy every replica serves), unless `keepLocal` still needs it (a push to
 * CARRYON_HARVEST_PUSH_URL not done yet) or the writer has not released it (its journal is still
 * there). A shard whose row was deleted meanwhile (on any replica) loses its local file too, so a
 * restart's rescan cannot index it again.
 */
export class ShardUploads {
  private readonly pusher: ShardPusher;
  /** Local files of queued shards, to remove one whose row is deleted before it was uploaded. */
  private readonly paths = new Map<string, string>();
  /** Object keys of uploads in flight, to remove one whose row was deleted while it went up. */
  private readonly keys = new Map<string, string>();

  constructor(
    readonly store: ObjectStore,
    private readonly shards: HarvestShardRepository,
    private readonly log: { warn(obj: object, msg: string): void },
    private readonly local: { keep(id: string): Promise<boolean>; remove(shard: { id: string; path: string }): void; released(shard: { id: string; path: string }): boolean },
    retry: { baseDelayMs?: number; maxDelayMs?: number } = {},
  ) {
    this.pusher = new ShardPusher({
      what: 'upload to the object store',
      deliver: async (shard) => {
        this.keys.set(shard.id, shardObjectKey(shard));
        await store.putFile(shardObjectKey(shard), shard.path);
      },
      // Already uploaded (by this replica before a restart) or deleted: nothing to do.
      lookup: async (id) => {
        const s = await shards.get(id);
        const file = this.paths.get(id);
        if (!s && file) local.remove({ id, path: file });
        if (!s || s.objectKey !== null) this.paths.delete(id);
        return s && s.objectKey === null ? s : null;
      },
      markPushed: async (id) => {
        const s = await shards.get(id);
        const [file, key] = [this.paths.get(id), this.keys.get(id)];
        this.paths.delete(id);
        this.keys.delete(id);
        if (!s) {
          // Deleted while it went up: the object and the local file are leftovers now.
          if (key) await this.remove([{ id, tenantId: null, objectKey: key }]);
          if (file) local.remove({ id, path: file });
          return;
        }
        const objectKey = shardObjectKey(s);
        if (!(await shards.markUploaded(id, objectKey))) {
          // Deleted between the look-up and now (retention, a delete on any replica): the same leftovers.
          await this.remove([{ id, tenantId: s.tenantId, objectKey }]);
          if (file) local.remove({ id, path: file });
          return;
        }
        await this.releaseLocal({ ...s, objectKey });
      },
      log,
      // Capped lower than a push URL's: the bucket is where every replica looks for the shard.
      baseDelayMs: retry.baseDelayMs ?? 1000,
      maxDelayMs: retry.maxDelayMs ?? 30_000,
    });
  }

  /** At start: shards indexed but not uploaded whose file is on this replica's disk (others are another replica's to upload). */
  async enqueueLocal(): Promise<void> {
    for (const s of await this.shards.notUploaded()) if (fs.existsSync(s.path)) this.enqueue(s);
  }

  enqueue(shard: { id: string; path: string }): void {
    this.paths.set(shard.id, shard.path);
    this.pusher.enqueue(shard.id);
  }

  /** Removes an uploaded shard's local file once nothing needs it; called again after a push. */
  async releaseLocal(shard: { id: string; path: string; objectKey: string | null }): Promise<void> {
    if (!shard.objectKey || (await this.local.keep(shard.id))) return;
    if (this.local.released(shard)) {
      this.local.remove(shard);
      return;
    }
    // The writer deletes the journal right after indexing: try again in a moment.
    setTimeout(() => void this.releaseLocal(shard).catch(() => undefined), 1000).unref();
  }

  /**
   * Removes deleted shards' objects. The rows go anyway (retention, a delete, a forgotten tenant):
   * an object that could not be removed is wasted space, logged, never an error for the caller.
   * A row read before its upload was recorded has no key yet, while the upload may have landed:
   * the key follows from the shard, so it is removed all the same (a missing object is no error).
   */
  async remove(shards: Array<{ id: string; tenantId: string | null; objectKey?: string | null }>): Promise<void> {
    for (const s of shards) {
      try {
        await this.store.delete(s.objectKey ?? shardObjectKey(s));
      } catch (err) {
        this.log.warn({ shard: s.id, err: (err as Error).message }, 'could not remove a deleted harvest shard from the object store');
      }
    }
  }

  stats(): PushStats {
    return this.pusher.stats();
  }

  /** Resolves once every queued upload has succeeded (tests). */
  settled(): Promise<void> {
    return this.pusher.settled();
  }

  close(): void {
    this.pusher.close();
  }
}
