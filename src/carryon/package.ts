import fs from 'node:fs';
import path from 'node:path';
import { writeDirAtomic } from '../core/fs-atomic.js';
import { serializeSafetensors } from '../formats/safetensors.js';
import { weightsToTensors } from './weights.js';
import { buildCarryOnGraph, countCarryOnParameters, type CarryOnConfig, type CarryOnWeights } from './graph.js';
import {
  CARRYON_FILES,
  CARRYON_FORMAT_VERSION,
  parseCarryOnManifest,
  sha256Hex,
  type CarryOnArchitecture,
  type CarryOnManifest,
} from './manifest.js';

export interface CarryOnPackageMeta {
  id: string;
  /** Default 1. */
  version?: number;
  /** The base package's manifest `fingerprint`. */
  baseFingerprint: string;
  /** Default ''. */
  description?: string;
  /** Default 1. */
  defaultAlpha?: number;
  /** Default: now. Fixed by callers that need reproducible manifests. */
  createdAt?: Date;
  /** The tenant `POST /admin/carry-ons` should store it for; upload routing only, not stored. */
  tenant?: string;
  /** A mixture's secondary bases' fingerprints, one per `config.secondaries` entry, in order. */
  secondaryFingerprints?: string[];
}

export function carryOnArchitecture(c: CarryOnConfig): CarryOnArchitecture {
  return {
    width: c.width,
    layers: c.layers,
    heads: c.heads,
    kv_heads: c.kvHeads,
    head_dim: c.headDim,
    intermediate: c.intermediate,
    rope_theta: c.ropeTheta,
    rms_norm_eps: c.rmsNormEps,
    max_positions: c.maxPositions,
  };
}

/** The manifest for a graph already built from `weights`; validated, so bad metadata fails here. */
export function buildCarryOnManifest(
  weights: CarryOnWeights,
  graph: Uint8Array,
  meta: CarryOnPackageMeta,
  weightsSha256?: string,
): CarryOnManifest {
  const c = weights.config;
  const fingerprints = meta.secondaryFingerprints ?? [];
  if (fingerprints.length !== c.secondaries.length) {
    throw new Error(`the carry-on reads ${c.secondaries.length} secondary base(s), but ${fingerprints.length} fingerprint(s) were given`);
  }
  const secondaries = c.secondaries.map((s, j) => ({ fingerprint: fingerprints[j], hidden_size: s.hiddenSize, input_layers: s.inputLayers }));
  return parseCarryOnManifest({
    format_version: CARRYON_FORMAT_VERSION,
    id: meta.id,
    version: meta.version ?? 1,
    base_fingerprint: meta.baseFingerprint,
    hidden_size: c.hiddenSize,
    input_layers: c.inputLayers,
    ...(secondaries.length === 0 ? {} : { secondary_bases: secondaries }),
    reads_token_ids: c.readsTokenIds,
    default_alpha: meta.defaultAlpha ?? 1,
    parameter_count: countCarryOnParameters(weights),
    sha256: sha256Hex(graph),
    ...(weightsSha256 === undefined ? {} : { weights_sha256: weightsSha256 }),
    description: meta.description ?? '',
    architecture: carryOnArchitecture(c),
    created_at: (meta.createdAt ?? new Date()).toISOString(),
    ...(meta.tenant === undefined ? {} : { tenant: meta.tenant }),
  });
}

/**
 * Writes a carry-on package folder (weights.safetensors + model.onnx + manifest.json), replacing
 * `dir` atomically: a reader sees the old package or the complete new one, never a part of one.
 */
export async function writeCarryOnPackage(
  dir: string,
  weights: CarryOnWeights,
  meta: CarryOnPackageMeta,
): Promise<CarryOnManifest> {
  const graph = buildCarryOnGraph(weights);
  const weightsFile = serializeSafetensors(weightsToTensors(weights));
  const manifest = buildCarryOnManifest(weights, graph, meta, sha256Hex(weightsFile));
  await writeDirAtomic(dir, async (tmp) => {
    fs.writeFileSync(path.join(tmp, CARRYON_FILES.weights), weightsFile);
    fs.writeFileSync(path.join(tmp, CARRYON_FILES.graph), graph);
    // Written last: a folder with a manifest is a complete package.
    fs.writeFileSync(path.join(tmp, CARRYON_FILES.manifest), `${JSON.stringify(manifest, null, 2)}\n`);
  });
  return manifest;
}
