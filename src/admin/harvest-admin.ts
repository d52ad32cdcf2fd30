import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { ApiError, objectStoreUnavailableError } from '../core/errors.js';
import { isObjectStoreError, type ObjectStore } from '../objects/object-store.js';
import type { HarvestService } from '../harvest/service.js';
import type { HarvestShardRecord } from '../store/harvest-shards.js';
import type { Store } from '../store/store.js';
import { canManageTenant, managedTenant, requireGlobalAdmin } from './access.js';
import { audit, type AdminContext } from './audit.js';
import { ifRangeMatches, noneMatch, parseRange } from './byte-range.js';
import type { DeletedObject, HarvestShardObject, HarvestStatsObject, List } from './schemas.js';
import { view } from './views.js';

/** The conditional and range headers of a download request. */
export interface DownloadRequest {
  range?: string;
  ifRange?: string;
  ifNoneMatch?: string;
}

export interface ShardDownload {
  status: 200 | 206 | 304;
  headers: Record<string, string>;
  /** The bytes to send, streamed from the file; null for 304. */
  body: Readable | null;
}

/**
 * Harvested shards over the admin API. A tenant's admin key sees its own tenant's shards only; a
 * global admin sees all, or one tenant's with `?tenant=`. A shard the key may not see answers 404
 * exactly like a missing one. Downloads are audited too: shards are the tenant's traffic.
 */
export class HarvestAdmin {
  constructor(
    private readonly store: Store,
    private readonly harvest: HarvestService,
  ) {}

  async list(ctx: AdminContext, tenant: string | undefined): Promise<List<HarvestShardObject>> {
    if (tenant !== undefined) await managedTenant(ctx.principal, this.store.tenants, tenant);
    const scope = tenant ?? ctx.principal.tenantId ?? undefined;
    return view.list((await this.harvest.list(scope)).map(view.harvestShard));
  }

  /**
   * The shard, streamed: 200 whole, 206 for one satisfiable `Range`, 304 when `If-None-Match`
   * names it, 416 for a range past the end. The ETag is the data section's sha256 from the header,
   * so a trainer can check what it got without another request; shard files never change. A shard
   * in the object store is served from there (by any replica), one not uploaded yet from this
   * replica's disk.
   */
  async download(ctx: AdminContext, id: string, req: DownloadRequest): Promise<ShardDownload> {
    const shard = await this.managedShard(ctx, id);
    const objects = this.harvest.uploads?.store;
    const source = shard.objectKey && objects ? bucketSource(objects, shard.objectKey, shard) : await fileSource(shard);
    try {
      const size = source.size;
      const etag = `"${shard.metadata.data_sha256}"`;
      const headers: Record<string, string> = { etag, 'accept-ranges': 'bytes' };
      if (noneMatch(req.ifNoneMatch, etag)) {
        await source.close();
        return { status: 304, headers, body: null };
      }
      const range = ifRangeMatches(req.ifRange, etag) ? parseRange(req.range, size) : { kind: 'whole' as const };
      if (range.kind === 'unsatisfiable') {
        throw new ApiError('range_not_satisfiable', `The range '${req.range}' is outside the shard's ${size} bytes.`, {
          headers: { 'content-range': `bytes */${size}`, 'accept-ranges': 'bytes' },
        });
      }
      const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, size - 1];
      const body = await source.open(start, end);
      Object.assign(headers, {
        'content-type': 'application/octet-stream',
        'content-length': String(end - start + 1),
        'content-disposition': `attachment; filename="${shard.id}.safetensors"`,
        ...(range.kind === 'range' ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
      });
      audit(ctx, { action: 'harvest.shard.download', tenant: shard.tenantId, target: shard.id });
      return { status: range.kind === 'range' ? 206 : 200, headers, body };
    } catch (err) {
      await source.close();
      throw err;
    }
  }

  async delete(ctx: AdminContext, id: string): Promise<DeletedObject> {
    const shard = await this.managedShard(ctx, id);
    if (await this.harvest.deleteShard(shard.id)) audit(ctx, { action: 'harvest.shard.delete', tenant: shard.tenantId, target: shard.id });
    return view.deleted('harvest.shard', shard.id);
  }

  /** The writer's counters and the index totals: gateway-wide, so a global admin's only. */
  async stats(ctx: AdminContext): Promise<HarvestStatsObject> {
    requireGlobalAdmin(ctx.principal);
    return view.harvestStats(await this.harvest.freshStats());
  }

  private async managedShard(ctx: AdminContext, id: string): Promise<HarvestShardRecord> {
    const shard = await this.harvest.get(id);
    if (!shard || !canManageTenant(ctx.principal, shard.tenantId)) throw notFound(id);
    return shard;
  }
}

/** Where a download's bytes come from: the shard's size, a stream of an inclusive span, and cleanup on failure. */
interface ShardSource {
  size: number;
  open(start: number, end: number): Promise<Readable>;
  close(): Promise<void>;
}

/** The file on this replica's disk, opened before anything is decided: a deletion racing the download cannot tear it. */
async function fileSource(shard: HarvestShardRecord): Promise<ShardSource> {
  let file: fs.promises.FileHandle;
  try {
    file = await fs.promises.open(shard.path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(shard.id);
    throw err;
  }
  const { size } = await file.stat();
  // The stream closes the file when it ends or the client goes away.
  return { size, open: async (start, end) => file.createReadStream({ start, end }), close: () => file.close() };
}

/** The shard's object (its size is the indexed one: shards never change); a 503 while the bucket is unreachable. */
function bucketSource(objects: ObjectStore, key: string, shard: HarvestShardRecord): ShardSource {
  return {
    size: shard.bytes,
    open: async (start, end) => {
      let object;
      try {
        object = await objects.get(key, { start, end });
      } catch (err) {
        if (isObjectStoreError(err)) throw objectStoreUnavailableError(err);
        throw err;
      }
      if (!object) throw notFound(shard.id);
      return object.body;
    },
    close: async () => undefined,
  };
}

function notFound(id: string): ApiError {
  return new ApiError('not_found', `The harvest shard '${id}' does not exist or you do not have access to it.`, { param: 'id' });
}
