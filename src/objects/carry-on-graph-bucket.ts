import fs from 'node:fs';
import { ApiError, objectStoreUnavailableError } from '../core/errors.js';
import type { CarryOnVersionRecord } from '../carryon/catalog.js';
import { downloadVerified, ObjectMismatchError } from './download-verified.js';
import { isObjectStoreError, type ObjectStore } from './object-store.js';

/** A graph's object key: content-addressed like the local blob, so identical uploads share one object. */
export function graphKey(sha256: string): string {
  return `carry-ons/${sha256}.onnx`;
}

/**
 * Carry-on graphs in the shared object store. The bucket is the source of truth for every replica;
 * each replica's DATA_DIR/carry-ons/blobs is a cache of it, filled on a version's first use. A row
 * only ever commits pointing at an object already in the bucket (see CarryOnFiles.installGraph).
 */
export class CarryOnGraphBucket {
  /** Fetches in flight by local path: concurrent first requests for one graph share one download. */
  private readonly fetching = new Map<string, Promise<void>>();

  constructor(readonly store: ObjectStore) {}

  /** Uploads a freshly built graph; 503 when the bucket cannot take it (nothing is recorded then). */
  async publish(file: string, sha256: string): Promise<void> {
    await this.answering(() => this.store.putFile(graphKey(sha256), file));
  }

  /**
   * Called under the store's write lock just before the row commits: the object published earlier
   * may have been deleted since by another replica dropping the last version that shared it (that
   * drop holds the same lock), so it is checked, and uploaded again if gone.
   */
  async ensurePublished(file: string, sha256: string, bytes: number): Promise<void> {
    await this.answering(async () => {
      const info = await this.store.head(graphKey(sha256));
      if (info?.bytes !== bytes) await this.store.putFile(graphKey(sha256), file);
    });
  }

  /** Removes a graph no live version points at any more (checked by the caller, under the write lock). */
  async delete(sha256: string): Promise<void> {
    await this.store.delete(graphKey(sha256));
  }

  /**
   * Makes `record.graphPath` present locally: as it is when already cached (a complete file: cached
   * ones only appear by rename after their digest was checked), else downloaded and verified.
   * 503 while the bucket is unreachable; a clear 500 when its object is missing or corrupt.
   */
  async fetch(record: CarryOnVersionRecord): Promise<void> {
    if (sizeOf(record.graphPath) === record.bytes) return;
    let pending = this.fetching.get(record.graphPath);
    if (!pending) {
      pending = this.download(record).finally(() => this.fetching.delete(record.graphPath));
      this.fetching.set(record.graphPath, pending);
    }
    await pending;
  }

  private async download(record: CarryOnVersionRecord): Promise<void> {
    const name = `carry-on ${record.carryOnId} v${record.version}`;
    try {
      await this.answering(() => downloadVerified(this.store, graphKey(record.sha256), record.graphPath, record.sha256));
    } catch (err) {
      if (err instanceof ObjectMismatchError) {
        throw new ApiError('internal_error', `The graph of ${name} cannot be served: ${err.message}. Upload the version again.`);
      }
      throw err;
    }
  }

  /** Turns the store's failures (after its retries) into the 503 a request gets; other errors pass. */
  private async answering<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (isObjectStoreError(err)) throw objectStoreUnavailableError(err);
      throw err;
    }
  }
}

function sizeOf(file: string): number | null {
  try {
    return fs.statSync(file).size;
  } catch {
    return null;
  }
}
