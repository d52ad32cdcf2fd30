/**
 * The admin API's wire format, in one place: zod schemas of every request (validated by the
 * routes) and of every response object (built by ./views.ts, typed from these schemas).
 * Snake_case fields and `{object, ...}` envelopes, as the OpenAI API the clients already speak.
 */
import { z } from 'zod';
import { CARRYON_ID_PATTERN, CarryOnManifest } from '../carryon/manifest.js';
import { ALIAS_PATTERN, CARRYON_REF_PATTERN } from '../store/carry-ons.js';
import { HarvestPolicy } from '../store/harvest-policy.js';
import { TenantIdField as TenantId } from '../core/tenant-id.js';

const DisplayName = z.string().trim().min(1).max(200);
/** `<carry-on id>` or `<carry-on id>@<version or alias>`. */
const CarryOnRef = z.string().regex(CARRYON_REF_PATTERN, "expected '<carry-on id>' or '<carry-on id>@<version or alias>'");

// ---------------------------------------------------------------------------------------------
// Requests

export const CreateTenantBody = z.strictObject({ id: TenantId, name: DisplayName.optional() });

export const CreateKeyBody = z
  .strictObject({
    /** Omitted only for a global admin key. */
    tenant: TenantId.optional(),
    scope: z.enum(['inference', 'admin']).default('inference'),
    name: DisplayName.optional(),
    default_carry_on: CarryOnRef.nullable().optional(),
    harvest: HarvestPolicy.nullable().optional(),
  })
  .refine((b) => b.tenant !== undefined || b.scope === 'admin', { message: 'an inference key needs a tenant', path: ['tenant'] });
export type CreateKeyBody = z.infer<typeof CreateKeyBody>;

export const ListKeysQuery = z.strictObject({ tenant: TenantId.optional() });

export const PatchKeyBody = z.strictObject({
  name: DisplayName.nullable().optional(),
  default_carry_on: CarryOnRef.nullable().optional(),
  harvest: HarvestPolicy.nullable().optional(),
});
export type PatchKeyBody = z.infer<typeof PatchKeyBody>;

export const SetAliasBody = z.strictObject({ version: z.number().int().positive() });

export const AliasName = z.string().regex(ALIAS_PATTERN, 'expected a slug starting with a letter: [a-z][a-z0-9._-]{0,63}');

/**
 * The uploaded manifest. The server assigns `version` and derives `sha256` (of the graph it
 * builds), `parameter_count` and `created_at`; those may be sent along (a package's manifest.json
 * as is) and are ignored. `weights_sha256`, when sent, must be the uploaded weights' digest.
 */
export const UploadManifest = CarryOnManifest.omit({ version: true, sha256: true, parameter_count: true, created_at: true }).extend({
  sha256: z.string().optional(),
  parameter_count: z.number().optional(),
  created_at: z.string().optional(),
});
export type UploadManifest = z.infer<typeof UploadManifest>;

/** Path parameters are plain strings: an id that cannot exist is simply not found. */
export const TenantParams = z.object({ tenant: z.string() });
export const KeyParams = z.object({ id: z.string() });
export const CarryOnParams = z.object({ tenant: z.string(), id: z.string() });
export const VersionParams = z.object({ tenant: z.string(), id: z.string(), version: z.string() });
export const AliasParams = z.object({ tenant: z.string(), id: z.string(), alias: z.string() });

/**
 * `/admin/carry-ons…` name the tenant in the query (or the `tenant` form field / manifest property
 * of an upload) unless the admin key implies it. Ids there are checked, so `../x` is a 400.
 */
export const CarryOnTenantQuery = z.strictObject({ tenant: TenantId.optional() });
export const CarryOnIdParams = z.object({
  id: z.string().regex(CARRYON_ID_PATTERN, 'expected a carry-on id: [a-z0-9][a-z0-9._-]{0,63}'),
});
/** The `tenant` form field of `POST /admin/carry-ons`. */
export const UploadTenantField = TenantId;

export const PrefixCacheQuery = z.strictObject({ tenant: TenantId.optional() });
export const ListHarvestShardsQuery = z.strictObject({ tenant: TenantId.optional() });
export const HarvestShardParams = z.object({ id: z.string() });

// ---------------------------------------------------------------------------------------------
// Responses

export const TenantObject = z.object({
  object: z.literal('tenant'),
  id: z.string(),
  name: z.string(),
  created_at: z.string(),
});
export type TenantObject = z.infer<typeof TenantObject>;

export const ApiKeyObject = z.object({
  object: z.literal('api_key'),
  id: z.string(),
  /** null: a global admin key. */
  tenant: z.string().nullable(),
  scope: z.enum(['inference', 'admin']),
  name: z.string().nullable(),
  /** The first characters of the key, to recognise it; never the key. */
  prefix: z.string(),
  default_carry_on: z.string().nullable(),
  harvest: HarvestPolicy.nullable(),
  /** 'config': from CARRYON_ADMIN_KEY / CARRYON_API_KEYS; managed there, not revocable here. */
  origin: z.enum(['api', 'config']),
  created_at: z.string(),
  revoked_at: z.string().nullable(),
});
export type ApiKeyObject = z.infer<typeof ApiKeyObject>;

/** The create response: the only time the key itself is ever returned. */
export const CreatedApiKeyObject = ApiKeyObject.extend({ key: z.string() });
export type CreatedApiKeyObject = z.infer<typeof CreatedApiKeyObject>;

export const CarryOnVersionObject = z.object({
  object: z.literal('carry_on.version'),
  tenant: z.string(),
  carry_on: z.string(),
  version: z.number().int(),
  sha256: z.string(),
  bytes: z.number().int(),
  created_at: z.string(),
  manifest: CarryOnManifest,
});
export type CarryOnVersionObject = z.infer<typeof CarryOnVersionObject>;

export const CarryOnObject = z.object({
  object: z.literal('carry_on'),
  id: z.string(),
  tenant: z.string(),
  created_at: z.string(),
  latest_version: z.number().int(),
  aliases: z.record(z.string(), z.number().int()),
  versions: z.array(CarryOnVersionObject),
});
export type CarryOnObject = z.infer<typeof CarryOnObject>;

export const DeletedObject = z.object({ object: z.string(), id: z.string(), deleted: z.literal(true) });
export type DeletedObject = z.infer<typeof DeletedObject>;

export const ListObject = <T extends z.ZodType>(item: T) => z.object({ object: z.literal('list'), data: z.array(item) });
export interface List<T> {
  object: 'list';
  data: T[];
}

// ---------------------------------------------------------------------------------------------
// Harvest (shards of hidden states; see docs/harvest-format.md)

export const HarvestShardObject = z.object({
  object: z.literal('harvest.shard'),
  id: z.string(),
  /** null: traffic of no tenant. */
  tenant: z.string().nullable(),
  bytes: z.number().int(),
  rows: z.number().int(),
  sequences: z.number().int(),
  /** When the shard was opened (its oldest data). */
  created_at: z.string(),
  /** When it reached CARRYON_HARVEST_PUSH_URL; null: not pushed. */
  pushed_at: z.string().nullable(),
  /** The shard header's metadata, less the per-sequence lists (download the shard for those). */
  metadata: z.object({
    base_fingerprint: z.string(),
    layers: z.array(z.union([z.literal('final'), z.number().int()])),
    hidden_size: z.number().int(),
    stored_size: z.number().int(),
    dtype: z.enum(['F16', 'I8', 'F32']),
    sigma: z.object({
      codec: z.enum(['f16', 'int8', 'none']),
      projection: z.object({ sha256: z.string(), file: z.string(), rows: z.number().int(), cols: z.number().int() }).nullable(),
    }),
    completion_rows: z.number().int(),
    data_sha256: z.string(),
    recovered: z.boolean(),
    closed_at: z.string(),
  }),
});
export type HarvestShardObject = z.infer<typeof HarvestShardObject>;

export const HarvestStatsObject = z.object({
  object: z.literal('harvest.stats'),
  enabled: z.boolean(),
  /** The writer's counters since start (src/harvest/stats.ts), snake_case. */
  writer: z.record(z.string(), z.number()),
  /** What the index lists now. */
  index: z.object({ shards: z.number().int(), bytes: z.number().int(), rows: z.number().int(), sequences: z.number().int() }),
  dropped_deleted_tenant: z.number().int(),
  retention_deleted: z.number().int(),
  /** The retention settings; null fields are not limited. */
  retention: z.object({ max_bytes: z.number().int().nullable(), max_age_ms: z.number().int().nullable() }),
  push: z.object({ pushed: z.number().int(), failed_attempts: z.number().int(), pending: z.number().int() }).nullable(),
  /** Sequences replayed on the other bases a policy names (src/harvest/replay.ts). */
  replay: z
    .object({ replayed: z.number().int(), dropped: z.number().int(), skipped: z.number().int(), failed: z.number().int(), queued: z.number().int(), running: z.number().int() })
    .nullable(),
});
export type HarvestStatsObject = z.infer<typeof HarvestStatsObject>;

// ---------------------------------------------------------------------------------------------
// Training jobs (see docs/training.md, "Training jobs")

export { CreateTrainingJobBody } from '../training/job-request.js';

export const ListTrainingJobsQuery = z.strictObject({ tenant: TenantId.optional() });
export const TrainingJobParams = z.object({ id: z.string() });
export const TrainingLogQuery = z.strictObject({ bytes: z.coerce.number().int().min(1).max(1 << 20).default(65536) });

export const TrainingJobStatus = z.enum(['queued', 'running', 'registering', 'succeeded', 'failed', 'cancelled']);
export type TrainingJobStatus = z.infer<typeof TrainingJobStatus>;

export const TrainingJobObject = z.object({
  object: z.literal('training_job'),
  id: z.string(),
  tenant: z.string(),
  carry_on: z.string(),
  status: TrainingJobStatus,
  created_at: z.string(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
  shards: z.number().int(),
  /** From the trainer's loss log: the last logged step and its mean training loss. */
  progress: z.object({ step: z.number().int(), steps: z.number().int(), loss: z.number().nullable() }),
  /** Held-out evaluation from the trainer's report (base vs carry-on), once it has run. */
  eval: z
    .object({
      base_loss: z.number(),
      carry_on_loss: z.number(),
      /** The α the job trained with, at which carry_on_loss was measured. */
      trained_alpha: z.number().nullable(),
      best_alpha: z.number(),
      best_alpha_loss: z.number(),
      /** Held-out loss at each α the trainer swept (α = 0 is the base), ascending α. */
      sweep: z.array(z.object({ alpha: z.number(), loss: z.number() })),
      parity_max_abs_diff: z.number().nullable(),
    })
    .nullable(),
  /** The registered version, when the job succeeded. */
  carry_on_version: CarryOnVersionObject.nullable(),
  error: z.string().nullable(),
});
export type TrainingJobObject = z.infer<typeof TrainingJobObject>;

/** GET /admin/training-jobs/{id}/loss: every step the trainer logged, oldest first. */
export interface TrainingLossObject {
  object: 'training_job.loss';
  id: string;
  data: Array<{ step: number; loss: number }>;
}
