import fs from 'node:fs';
import path from 'node:path';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { initCarryOnWeights, type CarryOnWeights, type InitCarryOnOptions } from '../../src/carryon/graph.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { writeCarryOnPackage } from '../../src/carryon/package.js';
import { readManifest, readModelConfig } from '../../src/model/package-files.js';
import type { FormPart } from './admin.js';

/** A carry-on package folder, described as the store would hand it to the engine. */
export type CarryOnPackageRecord = CarryOnVersionRecord & {
  /** The package folder: model.onnx and manifest.json. */
  dir: string;
};

/**
 * A carry-on for the stories260K base. `perturb` > 0 gives W_out, W_gate and b_gate random values
 * (seeded), so the carry-on visibly changes the base's predictions; 0 keeps the zero-initialised
 * output, i.e. exactly the base.
 */
export async function makeCarryOn(
  baseDir: string,
  outDir: string,
  opts: { id: string; perturb?: number; seed?: number; defaultAlpha?: number; secondaryBaseDirs?: string[] } & Partial<InitCarryOnOptions>,
): Promise<CarryOnPackageRecord> {
  const base = readModelConfig(baseDir);
  const secondaryDirs = opts.secondaryBaseDirs ?? [];
  const w = initCarryOnWeights({
    hiddenSize: base.hidden_size,
    vocabSize: base.vocab_size,
    width: 32,
    layers: 2,
    heads: 4,
    maxPositions: base.max_position_embeddings,
    seed: opts.seed ?? 1,
    secondaries: secondaryDirs.map((dir) => ({ hiddenSize: readModelConfig(dir).hidden_size, inputLayers: ['final' as const] })),
    ...opts,
  });
  if (opts.perturb) perturb(w, opts.perturb, opts.seed ?? 1);
  return writePackage(baseDir, outDir, w, opts.id, opts.defaultAlpha ?? 1, secondaryDirs.map((dir) => readManifest(dir).fingerprint));
}

/** Writes `w` as a package for `baseDir`'s base and describes it as the store would. */
async function writePackage(
  baseDir: string,
  outDir: string,
  w: CarryOnWeights,
  id: string,
  defaultAlpha: number,
  secondaryFingerprints: string[] = [],
): Promise<CarryOnPackageRecord> {
  const manifest = await writeCarryOnPackage(outDir, w, { id, baseFingerprint: readManifest(baseDir).fingerprint, defaultAlpha, secondaryFingerprints });
  const graphPath = path.join(outDir, CARRYON_FILES.graph);
  return {
    tenantId: 't',
    carryOnId: id,
    version: manifest.version,
    dir: outDir,
    graphPath,
    manifest,
    sha256: manifest.sha256,
    bytes: fs.statSync(graphPath).size,
  };
}

function perturb(w: CarryOnWeights, scale: number, seed: number): void {
  let s = seed * 7919 + 17;
  const rnd = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  };
  for (const a of [w.outProj.data, w.gateProj.data, w.gateBias]) for (let i = 0; i < a.length; i++) a[i] = rnd();
}

/**
 * A carry-on built to push one token: it reads token ids, embeds every token to the same unit
 * vector, adds nothing in its blocks (zero output projections), so its final state is a constant h;
 * W_out maps h to `strength` × the base's embedding row of `tokenId`, and the gate sits near 1.
 * Then logit[tokenId] rises by about α·strength·|E[tokenId]|² at every position.
 */
export async function makePushCarryOn(
  baseDir: string,
  outDir: string,
  opts: { id: string; tokenId: number; strength: number; baseEmbedding: Float32Array },
): Promise<CarryOnPackageRecord> {
  const base = readModelConfig(baseDir);
  const d = base.hidden_size;
  const w = initCarryOnWeights({
    hiddenSize: d,
    vocabSize: base.vocab_size,
    width: 32,
    layers: 1,
    heads: 4,
    readsTokenIds: true,
    maxPositions: base.max_position_embeddings,
  });
  w.inProj.data.fill(0);
  w.tokEmbeddings!.fill(0);
  for (let t = 0; t < base.vocab_size; t++) w.tokEmbeddings![t * 32] = 1; // every token → e_0
  for (const b of w.blocks) {
    b.wo.data.fill(0);
    b.down.data.fill(0);
  }
  w.finalNorm.fill(1);
  // RMSNorm(e_0) = sqrt(width) · e_0, so column 0 of W_out is scaled down by sqrt(width).
  const scale = opts.strength / Math.sqrt(32);
  w.outProj.data.fill(0);
  for (let i = 0; i < d; i++) w.outProj.data[i * 32] = scale * opts.baseEmbedding[opts.tokenId * d + i];
  w.gateProj.data.fill(0);
  w.gateBias.fill(12); // sigmoid(12) ≈ 0.99999
  return writePackage(baseDir, outDir, w, opts.id, 1);
}

/** An upload's form parts for the package in `dir`: its manifest (or `manifest`, as a test alters it) and its weights. */
export function packageParts(dir: string, manifest?: object): FormPart[] {
  return [
    { name: 'manifest', data: manifest === undefined ? fs.readFileSync(path.join(dir, CARRYON_FILES.manifest), 'utf8') : JSON.stringify(manifest) },
    { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(dir, CARRYON_FILES.weights)) },
  ];
}
