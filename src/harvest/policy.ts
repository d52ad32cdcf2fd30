import type { HarvestPolicy as StoredHarvestPolicy } from '../store/harvest-policy.js';
import type { HarvestPolicy } from './types.js';

/** Defaults for what a stored policy leaves out: the final hidden state, of prompt and completion. */
export const HARVEST_DEFAULTS = { layers: ['final'], keep: 'both' } as const satisfies Pick<HarvestPolicy, 'layers' | 'keep'>;

/** The policy as the serving path uses it (camelCase, defaults filled in). */
export function runtimeHarvestPolicy(p: StoredHarvestPolicy): HarvestPolicy {
  const policy: HarvestPolicy = { sampleRate: p.sample_rate, layers: p.layers ?? [...HARVEST_DEFAULTS.layers], keep: p.keep ?? HARVEST_DEFAULTS.keep };
  if (p.bases) policy.bases = [...p.bases];
  return policy;
}
