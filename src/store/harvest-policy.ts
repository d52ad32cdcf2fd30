import { z } from 'zod';
import type { HarvestPolicy as RuntimeHarvestPolicy } from '../harvest/types.js';

/**
 * Per-key harvest policy: which requests' activations a later harvest job may sample. Stored as
 * the JSON the admin sent (after validation), so the harvester reads exactly what was configured.
 * Strict: a misspelled field is an error, not a silently ignored setting.
 */
export const HarvestPolicy = z.strictObject({
  /** Fraction of requests sampled, 0 (none) to 1 (all). */
  sample_rate: z.number().min(0).max(1),
  /** Hidden states to keep: 'final' or block indices; default chosen by the harvester. */
  layers: z
    .array(z.union([z.literal('final'), z.number().int().nonnegative()]))
    .refine((l) => new Set(l).size === l.length, 'layers must not repeat a layer')
    .optional(),
  keep: z.enum(['prompt', 'completion', 'both']).optional(),
});
export type HarvestPolicy = z.infer<typeof HarvestPolicy>;

/** Reads a stored policy; a row that no longer parses (schema drift) counts as no policy. */
export function parseStoredHarvestPolicy(text: string | null): HarvestPolicy | null {
  if (text === null) return null;
  try {
    const parsed = HarvestPolicy.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** Defaults for what a stored policy leaves out: the final hidden state, of prompt and completion. */
export const HARVEST_DEFAULTS = { layers: ['final'], keep: 'both' } as const satisfies Pick<RuntimeHarvestPolicy, 'layers' | 'keep'>;

/** The policy as the serving path uses it (camelCase, defaults filled in). */
export function runtimeHarvestPolicy(p: HarvestPolicy): RuntimeHarvestPolicy {
  return { sampleRate: p.sample_rate, layers: p.layers ?? [...HARVEST_DEFAULTS.layers], keep: p.keep ?? HARVEST_DEFAULTS.keep };
}
