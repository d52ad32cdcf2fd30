import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { PACKAGE_FILES } from './package-files.js';

/** Sampling values a model ships as its defaults, for requests that do not set them. */
export interface SamplingDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
}

const GenerationConfig = z.looseObject({
  do_sample: z.boolean().optional(),
  temperature: z.number().positive().max(2).optional(),
  top_p: z.number().positive().max(1).optional(),
  top_k: z.number().int().nonnegative().optional(),
});

/**
 * The package's generation_config.json sampling values. transformers uses them only with
 * `do_sample: true` (otherwise it decodes greedily whatever they say), so only then are they
 * defaults here; without them a request gets OpenAI's defaults (temperature 1, top_p 1).
 */
export function readSamplingDefaults(modelDir: string): SamplingDefaults {
  const file = path.join(modelDir, PACKAGE_FILES.generationConfig);
  if (!fs.existsSync(file)) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return {};
  }
  const parsed = GenerationConfig.safeParse(raw);
  if (!parsed.success || parsed.data.do_sample !== true) return {};
  const g = parsed.data;
  return {
    ...(g.temperature === undefined ? {} : { temperature: g.temperature }),
    ...(g.top_p === undefined ? {} : { topP: g.top_p }),
    ...(g.top_k === undefined ? {} : { topK: g.top_k }),
  };
}
