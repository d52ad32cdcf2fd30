import { ApiError } from '../core/errors.js';
import { readManifest, readModelConfig } from '../model/package-files.js';
import { tokenizerDigest } from '../model/tokenizer-digest.js';

/** What an uploaded carry-on is checked against: the served base whose fingerprint it names. */
export interface BaseModelInfo {
  /** The base package's `fingerprint` (carryon-package.json). */
  fingerprint: string;
  hiddenSize: number;
  vocabSize: number;
  /** The package's context (max_position_embeddings). */
  contextLength: number;
  /** Blocks whose residual stream the base body outputs, besides the final one. */
  extraLayerOutputs: number[];
  /**
   * What the base's tokenizer does (tokenizerDigest): bases with the same one read the same token
   * ids for the same text, the condition for one mixture carry-on to read them together. Computed
   * on first use, a mixture upload, and kept: parsing a 150k-token tokenizer.json takes about a
   * second of the event loop, which boot (every base, mixtures or not) need not pay.
   */
  tokenizerDigest(): string;
}

/**
 * The served base with this fingerprint (none given: any known base); throws the ApiError a client
 * should see while it is not known yet (503) or when no served base has it (400).
 */
export type BaseModelSource = (fingerprint?: string) => BaseModelInfo;

export function readBaseModelInfo(packageDir: string): BaseModelInfo {
  const manifest = readManifest(packageDir);
  const config = readModelConfig(packageDir);
  let digest: string | undefined;
  return {
    fingerprint: manifest.fingerprint,
    hiddenSize: config.hidden_size,
    vocabSize: config.vocab_size,
    contextLength: config.max_position_embeddings,
    extraLayerOutputs: manifest.extra_layer_outputs,
    tokenizerDigest: () => (digest ??= tokenizerDigest(packageDir)),
  };
}

/** A served base as an upload sees it: its lifecycle, and its package's info once resolved. */
export interface ServedBaseInfo {
  name: string;
  status: 'loading' | 'ready' | 'failed';
  failure: string | null;
  /** null until the base's package is resolved. */
  info: BaseModelInfo | null;
}

/**
 * The served base an upload is checked against: the one whose fingerprint the manifest names (a
 * carry-on belongs to the base it was trained on), or with no fingerprint, any known base (the
 * early "is anything loaded" check). A 503 while a base that might match is still loading; a 400
 * listing the served bases when none matches.
 */
export function servedBaseFor(bases: readonly ServedBaseInfo[], fingerprint?: string): BaseModelInfo {
  const known = bases.flatMap((b) => (b.info ? [{ name: b.name, info: b.info }] : []));
  const match = fingerprint === undefined ? known[0] : known.find((b) => b.info.fingerprint === fingerprint);
  if (match) return match.info;
  const pending = bases.filter((b) => !b.info && b.status !== 'failed');
  if (fingerprint === undefined || pending.length > 0) {
    const failed = bases.find((b) => b.failure !== null);
    throw new ApiError(
      'model_loading',
      pending.length === 0 && failed ? `The base model failed to load: ${failed.failure}` : 'The base model is still loading; retry shortly.',
      { headers: { 'retry-after': '5' } },
    );
  }
  const served = known.map((b) => `'${b.name}' (${b.info.fingerprint.slice(0, 12)}…)`).join(', ');
  throw new ApiError('invalid_value', `This carry-on was built for base model ${fingerprint.slice(0, 12)}…, but this gateway serves ${served}.`, {
    param: 'manifest.base_fingerprint',
  });
}
