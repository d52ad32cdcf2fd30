import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { Engine } from '../../src/engine/engine.js';
import type { SamplingParams } from '../../src/engine/worker-messages.js';
import { importModel } from '../../src/model/import.js';
import { readManifest } from '../../src/model/package-files.js';
import { CarryOnRegistry } from '../../src/serving/carry-on-registry.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { engineTokens, referenceGreedy } from '../helpers/carry-on-reference.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { writePerturbedCheckpoint } from '../helpers/stories-bin.js';

/**
 * A mixture carry-on in the engine: the primary body and a secondary base's body run over the same
 * tokens in one step, the carry-on reads both states, and head(x + α·g⊙Δx) uses the primary's x
 * and head. Checked against the formula computed here from separate ONNX Runtime sessions (two
 * bodies, the carry-on graph, the primary's head), through chunked prefill and the prefix cache.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-mixture-'));
const primaryDir = path.join(tmp, 'primary');
const secondaryDir = path.join(tmp, 'secondary');
let engine: Engine;
let registry: CarryOnRegistry;
let mixture: CarryOnVersionRecord;
let single: CarryOnVersionRecord;
const prompt = [1, 403, 407, 261, 378, 300, 290, 412, 265];
const STEPS = 24;
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, maxTokens: STEPS, stopTokenIds: [], topLogprobs: -1 };

beforeAll(async () => {
  const bin = path.join(tmp, 'secondary.bin');
  writePerturbedCheckpoint(bin, { seed: 5, scale: 0.3 });
  await importModel(STORIES_BIN, primaryDir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  await importModel(bin, secondaryDir, { tokenizerPath: STORIES_TOK, name: 'stories-other' });
  engine = await Engine.start({ modelDir: primaryDir, provider: 'cpu', threads: 1, prefillChunk: 4, prefixCache: { blockTokens: 4, budgetBytes: 8 << 20 } });
  const dirs = new Map([[readManifest(secondaryDir).fingerprint, secondaryDir]]);
  registry = new CarryOnRegistry({ loader: engine, budgetBytes: 1 << 30, pinned: new Set(), log: () => {}, baseDir: (f) => dirs.get(f) ?? null });
  mixture = await makeCarryOn(primaryDir, path.join(tmp, 'mix'), { id: 'mix', perturb: 0.5, seed: 3, secondaryBaseDirs: [secondaryDir] });
  single = await makeCarryOn(primaryDir, path.join(tmp, 'single'), { id: 'single', perturb: 0.5, seed: 3 });
});
afterAll(async () => {
  await engine?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function generate(record: CarryOnVersionRecord | null, alpha: number, cacheNamespace: string | null = null): Promise<number[]> {
  return engineTokens({ engine, registry, prompt, params: greedy }, record, alpha, cacheNamespace);
}

describe('a mixture carry-on in the engine', () => {
  it('reads both bases: equals head(x + α·g⊙Δx) from separate sessions, through chunked prefill', async () => {
    expect(mixture.manifest.secondary_bases).toEqual([{ fingerprint: readManifest(secondaryDir).fingerprint, hidden_size: 64, input_layers: ['final'] }]);
    const base = await generate(null, 0);
    const ours = await generate(mixture, 1.5);
    expect(ours).not.toEqual(base);
    expect(ours).toEqual(await referenceGreedy(mixture, 1.5, { primaryDir, secondaryDirs: [secondaryDir], prompt, steps: STEPS }));
    // The secondary states matter: the same weights reading the primary alone answer otherwise.
    expect(await generate(single, 1.5)).not.toEqual(ours);
  });

  it('α = 0 is the primary base exactly', async () => {
    expect(await generate(mixture, 0)).toEqual(await generate(null, 0));
  });

  it('on a cached prefix, replays both bodies: the same tokens as cold', async () => {
    const cold = await generate(mixture, 1.5);
    await generate(null, 0, 'ns'); // warms the prefix cache with the primary's blocks
    expect(await generate(mixture, 1.5, 'ns')).toEqual(cold);
    expect(await generate(mixture, 1.5, 'ns')).toEqual(cold);
  });

  it('refuses to load when the secondary base is not served, naming it', async () => {
    const lonely = new CarryOnRegistry({ loader: engine, budgetBytes: 1 << 30, pinned: new Set(), log: () => {} });
    const other = await makeCarryOn(primaryDir, path.join(tmp, 'mix2'), { id: 'mix2', perturb: 0.5, secondaryBaseDirs: [secondaryDir] });
    const err = await lonely.acquire(other).then(() => null, (e: unknown) => e as { code: string; message: string });
    expect(err?.code).toBe('carry_on_base_mismatch');
    expect(err?.message).toMatch(/does not serve/);
  });
});
