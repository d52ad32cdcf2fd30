/**
 * Carry-on packages for the benchmarks: seeded, written with the real package writer
 * (`writeCarryOnPackage`) and described by the same `CarryOnVersionRecord` the store hands the
 * engine's registry, so loads go through exactly the production path (`specOf` → worker).
 */
import fs from 'node:fs';
import path from 'node:path';

import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { countCarryOnParameters, initCarryOnWeights, type CarryOnWeights } from '../../src/carryon/graph.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { writeCarryOnPackage } from '../../src/carryon/package.js';
import { specOf } from '../../src/serving/carry-on-registry.js';
import { readManifest, readModelConfig } from '../../src/model/package-files.js';

export interface CarryOnShape {
  width: number;
  layers: number;
  heads: number;
}

export interface BenchCarryOn {
  record: CarryOnVersionRecord;
  /** The graph file as the engine will open it. */
  graphPath: string;
  graphBytes: number;
  parameters: number;
}

/**
 * `count` distinct carry-ons (seeds 1..count) of one shape for the base package `baseDir`, in fresh
 * folders under `outDir`. W_out, W_gate and b_gate get small random values (a zero-initialised
 * carry-on costs the same to run, but a trained one is what serving sees).
 */
export async function makeBenchCarryOns(
  baseDir: string,
  outDir: string,
  shape: CarryOnShape,
  count: number,
  tenantId = 'bench',
): Promise<BenchCarryOn[]> {
  const base = readModelConfig(baseDir);
  const fingerprint = readManifest(baseDir).fingerprint;
  fs.rmSync(outDir, { recursive: true, force: true });
  const out: BenchCarryOn[] = [];
  for (let i = 1; i <= count; i++) {
    const id = `co${i}`;
    const dir = path.join(outDir, id);
    const w = initCarryOnWeights({
      hiddenSize: base.hidden_size,
      vocabSize: base.vocab_size,
      width: shape.width,
      layers: shape.layers,
      heads: shape.heads,
      maxPositions: base.max_position_embeddings,
      seed: i,
    });
    perturbOutputs(w, 0.05, i);
    const manifest = await writeCarryOnPackage(dir, w, { id, baseFingerprint: fingerprint });
    // Not an object literal typed as the record: should the record gain fields (a graph path, say),
    // the extra one here keeps it assignable, and specOf below decides which file the engine opens.
    const fields = {
      tenantId,
      carryOnId: id,
      version: manifest.version,
      dir,
      graphPath: path.join(dir, CARRYON_FILES.graph),
      manifest,
      sha256: manifest.sha256,
      bytes: 0,
    };
    const record: CarryOnVersionRecord = fields;
    const graphPath = specOf(record).graphPath;
    record.bytes = fs.statSync(graphPath).size;
    out.push({ record, graphPath, graphBytes: record.bytes, parameters: countCarryOnParameters(w) });
  }
  return out;
}

function perturbOutputs(w: CarryOnWeights, scale: number, seed: number): void {
  let s = (seed * 7919 + 17) >>> 0;
  const rnd = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  };
  for (const a of [w.outProj.data, w.gateProj.data, w.gateBias]) for (let i = 0; i < a.length; i++) a[i] = rnd();
}
