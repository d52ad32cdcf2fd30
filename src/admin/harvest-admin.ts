import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { ApiError } from '../core/errors.js';
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
   * The shard file, streamed: 200 whole, 206 for one satisfiable `Range`, 304 when `If-None-Match`
   * names it, 416 for a range past the end. The ETag is the data section's sha256 from the header,
   * so a trainer can check what it got without another request; shard files never change.
   */
  async download(ctx: AdminContext, id: string, req: DownloadRequest): Promise<ShardDownload> {
    const shard = await this.managedShard(ctx, id);
    let file: fs.promises.FileHandle;
    try {
      // Opened before anything is decided: a deletion racing the download cannot tear the response.
      file = await fs.promises.open(shard.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(id);
      throw err;
    }
    try {
      const { size } = await file.stat();
      const etag = `"${shard.metadata.data_sha256}"`;
      const headers: Record<string, string> = { etag, 'accept-ranges': 'bytes' };
      if (noneMatch(req.ifNoneMatch, etag)) {
        await file.close();
        return { status: 304, headers, body: null };
      }
      const range = ifRangeMatches(req.ifRange, etag) ? parseRange(req.range, size) : { kind: 'whole' as const };
      if (range.kind === 'unsatisfiable') {
        throw new ApiError('range_not_satisfiable', `The range '${req.range}' is outside the shard's ${size} bytes.`, {
          headers: { 'content-range': `bytes */${size}`, 'accept-ranges': 'bytes' },
        });
      }
      const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, size - 1];
      Object.assign(headers, {
        'content-type': 'application/octet-stream',
        'content-length': String(end - start + 1),
        'content-disposition': `attachment; filename="${shard.id}.safetensors"`,
        ...(range.kind === 'range' ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
      });
      audit(ctx, { action: 'harvest.shard.download', tenant: shard.tenantId, target: shard.id });
      // The stream closes the file when it ends or the client goes away.
      return { status: range.kind === 'range' ? 206 : 200, headers, body: file.createReadStream({ start, end }) };
    } catch (err) {
      await file.close();
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

function notFound(id: string): ApiError {
  return new ApiError('not_found', `The harvest shard '${id}' does not exist or you do not have access to it.`, { param: 'id' });
}
