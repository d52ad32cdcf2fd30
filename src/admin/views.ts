import { parseShardMetadata } from '../harvest/shard-format.js';
import type { HarvestServiceStats } from '../harvest/service.js';
import type { ApiKeyRecord } from '../store/api-keys.js';
import type { CarryOnSummary, CarryOnVersionInfo } from '../store/carry-ons.js';
import type { TenantRecord } from '../store/tenants.js';
import type { HarvestShardRecord } from '../store/harvest-shards.js';
import type {
  ApiKeyObject,
  CarryOnObject,
  CarryOnVersionObject,
  DeletedObject,
  HarvestShardObject,
  HarvestStatsObject,
  List,
  TenantObject,
} from './schemas.js';

/** Store records → the admin API's response objects (./protocol.ts). */
export const view = {
  list: <T>(data: T[]): List<T> => ({ object: 'list', data }),

  tenant: (t: TenantRecord): TenantObject => ({ object: 'tenant', id: t.id, name: t.name, created_at: t.createdAt }),

  apiKey: (k: ApiKeyRecord): ApiKeyObject => ({
    object: 'api_key',
    id: k.id,
    tenant: k.tenantId,
    scope: k.scope,
    name: k.name,
    prefix: k.prefix,
    default_carry_on: k.defaultCarryOn,
    harvest: k.harvest,
    origin: k.origin,
    created_at: k.createdAt,
    revoked_at: k.revokedAt,
  }),

  carryOnVersion: (tenant: string, carryOn: string, v: CarryOnVersionInfo): CarryOnVersionObject => ({
    object: 'carry_on.version',
    tenant,
    carry_on: carryOn,
    version: v.version,
    sha256: v.sha256,
    bytes: v.bytes,
    created_at: v.createdAt,
    manifest: v.manifest,
  }),

  carryOn: (tenant: string, c: CarryOnSummary): CarryOnObject => ({
    object: 'carry_on',
    id: c.id,
    tenant,
    created_at: c.createdAt,
    latest_version: c.latestVersion,
    aliases: c.aliases,
    versions: c.versions.map((v) => view.carryOnVersion(tenant, c.id, v)),
  }),

  deleted: (object: string, id: string): DeletedObject => ({ object, id, deleted: true }),

  harvestShard: (s: HarvestShardRecord): HarvestShardObject => {
    const m = parseShardMetadata(s.metadata, s.id);
    return {
      object: 'harvest.shard',
      id: s.id,
      tenant: s.tenantId,
      bytes: s.bytes,
      rows: s.rows,
      sequences: s.sequences,
      created_at: new Date(s.createdAt).toISOString(),
      pushed_at: s.pushedAt,
      metadata: {
        base_fingerprint: m.baseFingerprint,
        layers: m.layers,
        hidden_size: m.hiddenSize,
        stored_size: m.storedSize,
        dtype: m.dtype,
        sigma: m.sigma,
        completion_rows: m.completionRows,
        data_sha256: m.dataSha256,
        recovered: m.recovered,
        closed_at: new Date(m.closedAt).toISOString(),
      },
    };
  },

  harvestStats: (s: HarvestServiceStats): HarvestStatsObject => ({
    object: 'harvest.stats',
    enabled: s.enabled,
    writer: Object.fromEntries(Object.entries(s.writer).map(([k, v]) => [snake(k), v])),
    index: s.index,
    dropped_deleted_tenant: s.droppedDeletedTenant,
    retention_deleted: s.retentionDeleted,
    retention: { max_bytes: s.retention?.maxTotalBytes ?? null, max_age_ms: s.retention?.maxAgeMs ?? null },
    push: s.push && { pushed: s.push.pushed, failed_attempts: s.push.failedAttempts, pending: s.push.pending },
    replay: s.replay,
  }),
};

const snake = (camel: string): string => camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
