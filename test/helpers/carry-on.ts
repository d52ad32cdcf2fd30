import fs from 'node:fs';
import path from 'node:path';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { initCarryOnWeights, type CarryOnWeights, type InitCarryOnOptions } from '../../src/carryon/graph.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { writeCarryOnPackage } from '../../src/carryon/package.js';
import { readManifest, readModelConfig } from '../../src/model/package-files.js';

/**
 * A carry-on for the stories260K base. `perturb` > 0 gives W_out, W_gate and b_gate random values
 * (seeded), so the carry-on visibly changes the base's predictions; 0 keeps the zero-initialised
 * output, i.e. exactly the base.
 */
export async function makeCarryOn(
  baseDir: string,
  outDir: string,
  opts: { id: string; perturb?: number; seed?: number; defaultAlpha?: number } & Partial<InitCarryOnOptions>,
): Promise<CarryOnVersionRecord> {
  const base = readModelConfig(baseDir);
  const w = initCarryOnWeights({
    hiddenSize: base.hidden_size,
    vocabSize: base.vocab_size,
    width: 32,
    layers: 2,
    heads: 4,
    maxPositions: base.max_position_embeddings,
    seed: opts.seed ?? 1,
    ...opts,
  });
  if (opts.perturb) perturb(w, opts.perturb, opts.seed ?? 1);
  const manifest = await writeCarryOnPackage(outDir, w, {
    id: opts.id,
    baseFingerprint: readManifest(baseDir).fingerprint,
    defaultAlpha: opts.defaultAlpha ?? 1,
  });
  return {
    tenantId: 't',
    carryOnId: opts.id,
    version: manifest.version,
    dir: outDir,
    manifest,
    sha256: manifest.sha256,
    bytes: fs.statSync(path.join(outDir, CARRYON_FILES.graph)).size,
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
