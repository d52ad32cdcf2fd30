import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { CarryOnRegistry } from '../../src/serving/carry-on-registry.js';
import { Engine } from '../../src/engine/engine.js';
import type { SamplingParams } from '../../src/engine/worker-messages.js';
import { importModel } from '../../src/model/import.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { engineTokens, referenceGreedy } from '../helpers/carry-on-reference.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * Composition in the engine: base body → carry-on → x + α·g⊙Δx → one LM-head call, checked
 * against the same formula computed here from separate ONNX Runtime sessions.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-compose-'));
const baseDir = path.join(tmp, 'base');
let engine: Engine;
let registry: CarryOnRegistry;
let zeroInit: CarryOnVersionRecord;
let perturbed: CarryOnVersionRecord;
const prompt = [1, 403, 407, 261, 378];
const STEPS = 30;
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, maxTokens: STEPS, stopTokenIds: [], topLogprobs: -1 };

beforeAll(async () => {
  await importModel(STORIES_BIN, baseDir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  engine = await Engine.start({ modelDir: baseDir, provider: 'cpu', threads: 1, prefillChunk: 3 });
  registry = new CarryOnRegistry({ loader: engine, budgetBytes: 1 << 30, pinned: new Set(), log: () => {} });
  zeroInit = await makeCarryOn(baseDir, path.join(tmp, 'zero'), { id: 'zero' });
  perturbed = await makeCarryOn(baseDir, path.join(tmp, 'pert'), { id: 'pert', perturb: 0.5, seed: 3 });
});
afterAll(async () => {
  await engine?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function generate(record: CarryOnVersionRecord | null, alpha: number): Promise<number[]> {
  return engineTokens({ engine, registry, prompt, params: greedy }, record, alpha);
}

describe('carry-on composition in the engine', () => {
  it('α = 0 is the base exactly, whatever the carry-on', async () => {
    const base = await generate(null, 0);
    expect(await generate(perturbed, 0)).toEqual(base);
  });

  it('a zero-initialised carry-on is the base at any α', async () => {
    expect(await generate(zeroInit, 1)).toEqual(await generate(null, 0));
    expect(await generate(zeroInit, 4)).toEqual(await generate(null, 0));
  });

  it('a trained-looking carry-on changes the output, exactly as head(x + α·g⊙Δx) says (chunked prefill included)', async () => {
    const base = await generate(null, 0);
    for (const alpha of [1, 2.5]) {
      const ours = await generate(perturbed, alpha);
      expect(ours).not.toEqual(base);
      expect(ours).toEqual(await referenceGreedy(perturbed, alpha, { primaryDir: baseDir, prompt, steps: STEPS }));
    }
  });

  it('shares one load between concurrent first uses, and frees a retired version when idle', async () => {
    const fresh = await makeCarryOn(baseDir, path.join(tmp, 'fresh'), { id: 'fresh', perturb: 0.5 });
    const [a, b] = await Promise.all([registry.acquire(fresh), registry.acquire(fresh)]);
    expect(registry.stats().loaded.filter((k) => k.includes('fresh'))).toHaveLength(1);
    registry.onCatalogChange({ tenantId: 't', carryOnId: 'fresh', kind: 'deleted' });
    // In use: still resident until both leases end.
    expect(registry.stats().loaded.some((k) => k.includes('fresh'))).toBe(true);
    a.release();
    b.release();
    expect(registry.stats().loaded.some((k) => k.includes('fresh'))).toBe(false);
  });

  it('evicts the least recently used idle carry-on to stay within the budget', async () => {
    const small = new CarryOnRegistry({ loader: engine, budgetBytes: zeroInit.bytes + perturbed.bytes - 1, pinned: new Set(), log: () => {} });
    (await small.acquire(zeroInit)).release();
    (await small.acquire(perturbed)).release();
    expect(small.stats().loaded).toEqual(['t/pert@1']);
    const held = await small.acquire(zeroInit);
    await expect(small.acquire(perturbed)).rejects.toMatchObject({ code: 'server_overloaded' });
    held.release();
  });
});
