import path from 'node:path';
import { ConfigError } from './config-error.js';

/** One served base as configured: the name clients put in `model`, and where its weights come from. */
export interface BaseModelSetting {
  name: string;
  /** As CARRYON_MODEL takes it: a package or Hugging Face folder, a .bin/.gguf file, or '' for the default model. */
  source: string;
  /** A llama2.c tokenizer.bin for a `.bin` source; '' finds one beside it. */
  tokenizer: string;
}

/**
 * Base names appear in `model` as `<base>`, `<base>:<carry-on>` and `<base>:base`, so they cannot
 * hold the separators of that scheme (`:` and `@`) nor those of CARRYON_MODELS (`,` and `=`).
 */
export const BASE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;

interface BaseModelEnv {
  CARRYON_MODEL: string;
  CARRYON_MODEL_NAME: string;
  CARRYON_TOKENIZER: string;
  CARRYON_MODELS: string;
}

/**
 * The bases to serve: CARRYON_MODELS' `name=source` entries in order, or the one CARRYON_MODEL
 * (named by CARRYON_MODEL_NAME or its file). Throws a ConfigError naming what is wrong.
 */
export function baseModelsOf(env: BaseModelEnv): BaseModelSetting[] {
  if (!env.CARRYON_MODELS.trim()) {
    const name = env.CARRYON_MODEL_NAME || nameFromSource(env.CARRYON_MODEL);
    // The single form has always taken any name; only the separators that routing reads are refused.
    if (/[:@]/.test(name)) throw new ConfigError(`invalid configuration:\n  CARRYON_MODEL_NAME: '${name}' may not contain ':' or '@' (they separate carry-ons and versions in 'model')`);
    return [{ name, source: env.CARRYON_MODEL, tokenizer: env.CARRYON_TOKENIZER }];
  }
  for (const single of ['CARRYON_MODEL', 'CARRYON_MODEL_NAME', 'CARRYON_TOKENIZER'] as const) {
    if (env[single]) {
      throw new ConfigError(
        `invalid configuration:\n  CARRYON_MODELS: set together with ${single}; use one form: CARRYON_MODEL for one base, or CARRYON_MODELS=name=source,... for several (each name given in its entry)`,
      );
    }
  }
  const problems: string[] = [];
  const bases: BaseModelSetting[] = [];
  env.CARRYON_MODELS.split(',').forEach((entry, i) => {
    const text = entry.trim();
    const eq = text.indexOf('=');
    const name = eq < 0 ? '' : text.slice(0, eq).trim();
    const source = eq < 0 ? '' : text.slice(eq + 1).trim();
    if (eq < 0 || !source) problems.push(`entry ${i + 1} '${text}' is not name=source`);
    else if (!BASE_NAME_PATTERN.test(name)) problems.push(`entry ${i + 1}: the name '${name}' must match ${BASE_NAME_PATTERN.source}`);
    else if (bases.some((b) => b.name === name)) problems.push(`entry ${i + 1}: the name '${name}' is given twice`);
    else bases.push({ name, source, tokenizer: '' });
  });
  if (problems.length > 0) throw new ConfigError(`invalid configuration:\n${problems.map((p) => `  CARRYON_MODELS: ${p}`).join('\n')}`);
  return bases;
}

/** A base's default name: its file or folder name without the checkpoint extension; stories260K when unset. */
function nameFromSource(source: string): string {
  if (!source) return 'stories260K';
  return path.basename(path.resolve(source)).replace(/\.(gguf|bin)$/i, '');
}
