/**
 * The files the benchmark runs on, generated once and cached under bench/out/ (gitignored):
 * the synthetic SmolLM2-shaped GGUFs and our imported model packages.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { writeLlamaGguf } from '../../src/model/gguf.js';
import { importModel } from '../../src/model/import.js';
import { PACKAGE_FILES } from '../../src/model/package-files.js';
import type { ImportedCheckpoint } from '../../src/model/types.js';
import { SHAPES, syntheticCheckpoint, type ShapeName } from './synthetic-model.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BENCH_OUT = path.join(repoRoot, 'bench', 'out');
export const STORIES_GGUF = path.resolve(repoRoot, '../shared/models/stories260K/stories260K.gguf');

const SEED = 135;

/** Building a random checkpoint takes a while and 0.6–5 GB; do it at most once per process and shape. */
let cache: { shape: ShapeName; ckpt: ImportedCheckpoint } | null = null;

/** The GGUF of a benchmark shape (see SHAPES) with seeded random weights, written once. */
export async function shapeGguf(shape: ShapeName, quant: 'f32' | 'q4_0', log: (msg: string) => void): Promise<string> {
  const file = path.join(BENCH_OUT, 'gguf', `${shape}-shape-random-${quant}.gguf`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  log(`writing ${path.relative(repoRoot, file)} (${SHAPES[shape].label}, seeded random weights)`);
  if (cache?.shape !== shape) cache = { shape, ckpt: syntheticCheckpoint(shape, SEED) };
  await writeLlamaGguf(file, cache.ckpt, { quant, name: `${shape}-shape-random-${quant}` });
  return file;
}

export function smolGguf(quant: 'f32' | 'q4_0', log: (msg: string) => void): Promise<string> {
  return shapeGguf('smollm2-135m', quant, log);
}

/** Drops the in-memory checkpoint once the GGUFs exist, before the engines need the RAM. */
export function releaseSyntheticCheckpoint(): void {
  cache = null;
}

/** A shape's GGUF and our package of it, named `name` (the random checkpoint is let go in between). */
export async function shapeModel(shape: ShapeName, quant: 'f32' | 'q4_0', name: string, log: (msg: string) => void): Promise<{ gguf: string; pkg: string }> {
  const gguf = await shapeGguf(shape, quant, log);
  releaseSyntheticCheckpoint();
  return { gguf, pkg: await modelPackage(gguf, name, log) };
}

/**
 * Our model package for `gguf`, re-imported when the GGUF or the importer's sources changed, so a
 * cached package never benchmarks a graph that src/model no longer builds.
 */
export async function modelPackage(gguf: string, name: string, log: (msg: string) => void): Promise<string> {
  const dir = path.join(BENCH_OUT, 'packages', name);
  const stampFile = path.join(BENCH_OUT, 'packages', `${name}.stamp`);
  const stamp = packageStamp(gguf);
  const cached = fs.existsSync(path.join(dir, PACKAGE_FILES.manifest)) && readOr(stampFile) === stamp;
  if (cached) return dir;
  log(`importing ${path.relative(repoRoot, gguf)} -> ${path.relative(repoRoot, dir)}`);
  await importModel(gguf, dir, { name });
  fs.writeFileSync(stampFile, stamp);
  return dir;
}

function packageStamp(gguf: string): string {
  const st = fs.statSync(gguf);
  const h = createHash('sha256').update(`${path.resolve(gguf)}\0${st.size}\0${st.mtimeMs}\0`);
  const modelSrc = path.join(repoRoot, 'src', 'model');
  for (const f of fs.readdirSync(modelSrc).sort()) h.update(f).update(fs.readFileSync(path.join(modelSrc, f)));
  return h.digest('hex');
}

function readOr(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}
