import { z } from 'zod';
import type { SigmaCodec } from './sigma.js';

/**
 * The harvest options of the gateway's environment. They are spread into src/app/config.ts's
 * ConfigSchema (so they are validated, defaulted and listed with every other option); they live here
 * to keep the harvest subsystem's settings and their meaning in one place.
 */
const onOff = z
  .enum(['on', 'off', 'true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'on' || v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const MiB = 1024 * 1024;

function isHttpUrl(v: string): boolean {
  try {
    const u = new URL(v);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

export const HARVEST_CONFIG = {
  /** Master switch. On by default: nothing is harvested unless a key's harvest policy opts in too. */
  CARRYON_HARVEST: onOff.default(true),
  /** How hidden states are compressed before they are written (src/harvest/sigma.ts). */
  CARRYON_HARVEST_SIGMA: z.enum(['f16', 'int8', 'none'] as const satisfies readonly SigmaCodec[]).default('f16'),
  /** Optional [d, D] projection applied before the codec (`.safetensors` or raw f32). */
  CARRYON_HARVEST_PROJECTION: z.string().default(''),
  /** Bytes of captured sequences waiting for the writer; beyond it whole sequences are dropped, never waited for. */
  CARRYON_HARVEST_QUEUE_BYTES: int(1, Number.MAX_SAFE_INTEGER).default(64 * MiB),
  /** A shard closes before it would grow past this. */
  CARRYON_HARVEST_SHARD_BYTES: int(4096, Number.MAX_SAFE_INTEGER).default(256 * MiB),
  /** A shard closes this long after its first sequence, however small. */
  CARRYON_HARVEST_SHARD_AGE_MS: int(10, 2_147_483_647).default(10 * 60_000),
  /** Retention: total shard bytes kept (oldest deleted first); 0 = unlimited. */
  CARRYON_HARVEST_MAX_BYTES: int(0, Number.MAX_SAFE_INTEGER).default(0),
  /** Retention: shards older than this are deleted; 0 = unlimited. */
  CARRYON_HARVEST_MAX_AGE_MS: int(0, Number.MAX_SAFE_INTEGER).default(0),
  /** Optional: each finished shard is PUT to `<url>/<tenant>/<shard id>.safetensors` (at least once). */
  CARRYON_HARVEST_PUSH_URL: z.string().refine(isHttpUrl, 'expected an http(s) URL').default(''),
};

type HarvestKeys = keyof typeof HARVEST_CONFIG;
export type HarvestConfig = { [K in HarvestKeys]: z.infer<(typeof HARVEST_CONFIG)[K]> };
