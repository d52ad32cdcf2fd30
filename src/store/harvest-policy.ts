import { z } from 'zod';

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
    .array(z.union([z.literal('final'), z.number().int().nonnegative().max(4096)]))
    .max(64)
    .refine((l) => new Set(l).size === l.length, 'layers must not repeat a layer')
    .optional(),
  keep: z.enum(['prompt', 'completion', 'both']).optional(),
  /**
   * Served bases (their model names) whose hidden states each sampled sequence also gets: the
   * serving base captures its own as it runs, the others replay the same tokens (mixture training).
   */
  bases: z
    .array(z.string().min(1).max(128))
    .min(1)
    .max(8)
    .refine((b) => new Set(b).size === b.length, 'bases must not repeat a base')
    .optional(),
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
