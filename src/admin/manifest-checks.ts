import { CarryOnManifest, secondaryBasesOf, type SecondaryBase } from '../carryon/manifest.js';
import { ApiError } from '../core/errors.js';
import type { BaseModelInfo, BaseModelSource } from './base-model.js';
import { UploadManifest } from './schemas.js';

/** The uploaded manifest text → a manifest without its version (the server assigns it). */
export function parseUploadedManifest(text: string): UploadManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ApiError('invalid_json', `The 'manifest' part is not valid JSON: ${(err as Error).message}`, { param: 'manifest' });
  }
  const parsed = UploadManifest.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = ['manifest', ...issue.path.map(String)].join('.');
    throw new ApiError(issue.code === 'invalid_type' ? 'invalid_type' : 'invalid_value', `Invalid '${param}': ${issue.message}.`, { param });
  }
  return parsed.data;
}

/** A carry-on is trained against one exact base: anything else would add a meaningless correction. */
export function checkAgainstBase(m: UploadManifest, base: BaseModelInfo): void {
  if (m.base_fingerprint !== base.fingerprint) {
    throw new ApiError(
      'invalid_value',
      `This carry-on was built for base model ${m.base_fingerprint.slice(0, 12)}…, but this gateway serves ${base.fingerprint.slice(0, 12)}….`,
      { param: 'manifest.base_fingerprint' },
    );
  }
  if (m.hidden_size !== base.hiddenSize) {
    throw new ApiError('invalid_value', `The manifest's hidden_size ${m.hidden_size} is not the base's ${base.hiddenSize}.`, {
      param: 'manifest.hidden_size',
    });
  }
  checkLayers(m.input_layers, base, 'The base model', 'manifest.input_layers');
}

function checkLayers(layers: UploadManifest['input_layers'], base: BaseModelInfo, which: string, param: string): void {
  const unavailable = layers.filter((l) => l !== 'final' && !base.extraLayerOutputs.includes(l));
  if (unavailable.length > 0) {
    throw new ApiError(
      'invalid_value',
      `${which} does not output the hidden states of block(s) ${unavailable.join(', ')}; ` +
        `it has ${base.extraLayerOutputs.length > 0 ? base.extraLayerOutputs.join(', ') : 'only the final one'}.`,
      { param },
    );
  }
}

/**
 * A mixture's secondary bases: each one served here (so the engine can run it beside the primary),
 * not the primary itself, with the hidden size and layers the manifest says, and the primary's
 * tokenizer exactly (the same text must be the same token ids in every base the carry-on reads).
 */
export function checkSecondaryBases(m: UploadManifest, primary: BaseModelInfo, served: BaseModelSource): void {
  secondaryBasesOf(m).forEach((want: SecondaryBase, j) => {
    const param = `manifest.secondary_bases.${j}`;
    if (want.fingerprint === primary.fingerprint) {
      throw new ApiError('invalid_value', `Secondary base ${j} is the primary base itself (base_fingerprint); a mixture reads other bases.`, {
        param: `${param}.fingerprint`,
      });
    }
    let base: BaseModelInfo;
    try {
      base = served(want.fingerprint);
    } catch (err) {
      if (err instanceof ApiError && err.code === 'invalid_value') {
        throw new ApiError('invalid_value', `Secondary base ${j} (${want.fingerprint.slice(0, 12)}…) is not served by this gateway: ${err.message}`, {
          param: `${param}.fingerprint`,
        });
      }
      throw err;
    }
    if (base.tokenizerDigest() !== primary.tokenizerDigest() || base.vocabSize !== primary.vocabSize) {
      throw new ApiError(
        'invalid_value',
        `Secondary base ${j} (${want.fingerprint.slice(0, 12)}…) does not share the primary base's tokenizer (vocabulary, ids and splitting must be the same); a mixture reads bases over the same tokens.`,
        { param: `${param}.fingerprint` },
      );
    }
    if (base.contextLength < primary.contextLength) {
      // Every position the primary serves must exist in the secondary too, or long requests would fail mid-way.
      throw new ApiError(
        'invalid_value',
        `Secondary base ${j} has a context of ${base.contextLength} tokens, shorter than the primary's ${primary.contextLength}; a mixture reads every base at every position.`,
        { param: `${param}.fingerprint` },
      );
    }
    if (want.hidden_size !== base.hiddenSize) {
      throw new ApiError('invalid_value', `Secondary base ${j}'s hidden_size is ${base.hiddenSize}, not ${want.hidden_size}.`, { param: `${param}.hidden_size` });
    }
    checkLayers(want.input_layers, base, `Secondary base ${j}`, `${param}.input_layers`);
  });
}

/** A manifest that names its weights' digest must name the uploaded ones (a torn or swapped file otherwise). */
export function checkWeightsDigest(m: UploadManifest, sha256: string): void {
  if (m.weights_sha256 !== undefined && m.weights_sha256 !== sha256) {
    throw new ApiError('invalid_value', "The uploaded weights do not have the sha256 the manifest's 'weights_sha256' names (a torn or different file).", {
      param: 'manifest.weights_sha256',
    });
  }
}

/** What the gateway derives from the weights it built: never taken from the upload. */
export interface BuiltGraph {
  sha256: string;
  parameterCount: number;
  weightsSha256: string;
}

/**
 * The manifest as stored: the upload's fields, the version the server assigned and what the build
 * derived, less `tenant` (upload routing, not part of the carry-on: the version's tenant is the one
 * it is stored under).
 */
export function storedManifest(m: UploadManifest, version: number, built: BuiltGraph): CarryOnManifest {
  const { tenant: _routing, sha256: _graph, parameter_count: _count, created_at: _at, weights_sha256: _weights, ...contract } = m;
  return CarryOnManifest.parse({
    ...contract,
    version,
    sha256: built.sha256,
    parameter_count: built.parameterCount,
    weights_sha256: built.weightsSha256,
    created_at: new Date().toISOString(),
  });
}
