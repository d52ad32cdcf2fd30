import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { concatFloat32 } from '../../src/core/float-arrays.js';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { importModel } from '../../src/model/import.js';
import { PACKAGE_FILES, readManifest, readModelConfig } from '../../src/model/package-files.js';
import { STORIES_BIN, STORIES_GGUF, STORIES_TOK } from '../helpers/paths.js';

/** The imported package, run by the engine's own runner: import parity and KV-cache consistency. */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-import-'));
const fromBin = path.join(tmp, 'from-bin');
const fromGguf = path.join(tmp, 'from-gguf');
let bin: ModelRunner;
let gguf: ModelRunner;
const ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337];

beforeAll(async () => {
  await importModel(STORIES_BIN, fromBin, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  await importModel(STORIES_GGUF, fromGguf, { name: 'stories260K' });
  const init = { provider: 'cpu' as const, threads: 1, prefillChunk: 256 };
  bin = await ModelRunner.create({ ...init, modelDir: fromBin });
  gguf = await ModelRunner.create({ ...init, modelDir: fromGguf });
});
afterAll(async () => {
  await bin?.release();
  await gguf?.release();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function fullLogits(r: ModelRunner, tokens: number[]): Promise<Float32Array> {
  const { hidden } = await r.forwardBody(tokens, r.newCache());
  return r.forwardHead(hidden, tokens.length);
}

async function stepLogits(r: ModelRunner, tokens: number[], chunk: number): Promise<Float32Array> {
  const cache = r.newCache();
  const parts: Float32Array[] = [];
  for (let i = 0; i < tokens.length; i += chunk) {
    const piece = tokens.slice(i, i + chunk);
    parts.push(await r.forwardHead((await r.forwardBody(piece, cache)).hidden, piece.length));
  }
  return concatFloat32(parts);
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('model package import', () => {
  it('writes every file of the documented package', () => {
    for (const f of Object.values(PACKAGE_FILES)) expect(fs.existsSync(path.join(fromBin, f)), f).toBe(true);
    const m = readManifest(fromBin);
    expect(m.source).toMatchObject({ format: 'llama2c', file: 'stories260K.bin' });
    expect(readModelConfig(fromBin)).toMatchObject({ hidden_size: 64, num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 512, max_position_embeddings: 512 });
    expect(readModelConfig(fromGguf).max_position_embeddings).toBe(2048);
  });

  it('gives identical logits from the .bin and from the .gguf', async () => {
    const a = await fullLogits(bin, ids);
    const b = await fullLogits(gguf, ids);
    expect(a.length).toBe(ids.length * 512);
    expect(maxAbsDiff(a, b)).toBe(0);
  });
});

describe('KV cache consistency through the runner', () => {
  it('full-sequence logits equal step-by-step KV-cache logits, and chunked prefill equals both', async () => {
    const full = await fullLogits(bin, ids);
    const steps = await stepLogits(bin, ids, 1);
    const chunked = await stepLogits(bin, ids, 4);
    expect(maxAbsDiff(full, steps)).toBeLessThan(1e-4);
    expect(maxAbsDiff(full, chunked)).toBeLessThan(1e-4);
    expect(maxAbsDiff(steps, chunked)).toBeLessThan(1e-4);
  });
});
