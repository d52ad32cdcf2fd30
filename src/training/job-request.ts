/**
 * What a training job asks the trainer for: the admin API's request body, validated by the
 * admin route and handed to the trainer process as is (its field names map onto the CLI's flags).
 */
import { z } from 'zod';
import { CARRYON_ID_PATTERN } from '../carryon/manifest.js';
import { TenantIdField as TenantId } from '../core/tenant-id.js';
import { ALIAS_PATTERN, LATEST } from '../store/carry-ons.js';
const CarryOnIdField = z.string().regex(CARRYON_ID_PATTERN, 'expected a lowercase slug');
const InputLayer = z.union([z.literal('final'), z.number().int().nonnegative()]);

export const CreateTrainingJobBody = z.strictObject({
  tenant: TenantId.optional(),
  /** The carry-on the result becomes the next version of. */
  carry_on: CarryOnIdField,
  description: z.string().max(500).optional(),
  /** Harvest shards to train on (ids); default: every shard of the tenant harvested from the served base. */
  shards: z.array(z.string().min(1).max(200)).min(1).max(10_000).optional(),
  /** Point this alias at the new version when the job succeeds. */
  alias: z
    .string()
    .regex(ALIAS_PATTERN, 'expected a slug starting with a letter: [a-z][a-z0-9._-]{0,63}')
    .refine((a) => a !== LATEST, `'${LATEST}' always means the newest version; it cannot be set`)
    .optional(),
  architecture: z
    .strictObject({
      width: z.number().int().min(8).max(4096).default(64),
      layers: z.number().int().min(1).max(16).default(2),
      heads: z.number().int().min(1).max(64).default(4),
      kv_heads: z.number().int().min(0).max(64).default(0),
      intermediate: z.number().int().min(0).max(65536).default(0),
      layers_in: z.array(InputLayer).min(1).max(8).default(['final']),
      token_ids: z.boolean().default(false),
    })
    .default({ width: 64, layers: 2, heads: 4, kv_heads: 0, intermediate: 0, layers_in: ['final'], token_ids: false }),
  training: z
    .strictObject({
      steps: z.number().int().min(1).max(1_000_000).default(300),
      batch_size: z.number().int().min(1).max(1024).default(16),
      lr: z.number().positive().max(1).default(3e-3),
      warmup: z.number().int().min(0).max(1_000_000).default(20),
      seq_len: z.number().int().min(0).max(1 << 20).default(0),
      seed: z.number().int().min(0).max(2 ** 31 - 1).default(0),
      alpha: z.number().min(0).max(4).default(1),
      eval_fraction: z.number().min(0).max(0.5).default(0.1),
      loss_rows: z.enum(['auto', 'all', 'completion']).default('auto'),
    })
    .default({ steps: 300, batch_size: 16, lr: 3e-3, warmup: 20, seq_len: 0, seed: 0, alpha: 1, eval_fraction: 0.1, loss_rows: 'auto' }),
});
export type CreateTrainingJobBody = z.infer<typeof CreateTrainingJobBody>;
