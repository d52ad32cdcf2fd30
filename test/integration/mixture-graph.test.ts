import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCarryOnGraph, initCarryOnWeights, type CarryOnWeights } from '../../src/carryon/graph.js';
import { verifyCarryOnFiles } from '../../src/carryon/manifest.js';
import { CarryOnTensorNames as N } from '../../src/carryon/tensor-names.js';
import { weightsToTensors } from '../../src/carryon/weights.js';
import { serializeSafetensors } from '../../src/formats/safetensors.js';
import { importModel } from '../../src/model/import.js';
import { readManifest } from '../../src/model/package-files.js';
import { REPO_ROOT, STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { writePerturbedCheckpoint } from '../helpers/stories-bin.js';

/**
 * The mixture carry-on's graph contract: secondary base j's states come in as
 * `secondary.{j}.hidden_states[.layer.{k}]` after the primary's, W_in's columns follow that order,
 * and `carryon carry-on build` / `verify` / `init` take a mixture's weights, config and fixture.
 */
const H = 64;
const H2 = 32;
const S = 7;
let tmp: string;
let primaryDir: string;
let secondaryDir: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-mixture-graph-'));
  primaryDir = path.join(tmp, 'primary');
  secondaryDir = path.join(tmp, 'secondary');
  const bin = path.join(tmp, 'other.bin');
  writePerturbedCheckpoint(bin, { seed: 2, scale: 0.2 });
  await importModel(STORIES_BIN, primaryDir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  await importModel(bin, secondaryDir, { tokenizerPath: STORIES_TOK, name: 'other', extraLayerOutputs: [2] });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function fill(a: Float32Array, seed: number, scale = 0.5): Float32Array {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}

function mixtureWeights(secondaries = [{ hiddenSize: H2, inputLayers: ['final' as const, 1] }]): CarryOnWeights {
  const w = initCarryOnWeights({ hiddenSize: H, vocabSize: 512, width: 32, layers: 1, heads: 4, maxPositions: 512, seed: 4, secondaries });
  fill(w.outProj.data, 5);
  fill(w.gateBias, 6, 1);
  return w;
}

const inputs = {
  primary: fill(new Float32Array(S * H), 10),
  final: fill(new Float32Array(S * H2), 11),
  layer1: fill(new Float32Array(S * H2), 12),
};

async function run(w: CarryOnWeights, feeds: Record<string, Float32Array>): Promise<{ delta: Float32Array; names: readonly string[] }> {
  const session = await ort.InferenceSession.create(buildCarryOnGraph(w));
  try {
    const t: Record<string, ort.Tensor> = {
      [N.positionIds]: new ort.Tensor('int64', BigInt64Array.from({ length: S }, (_, i) => BigInt(i)), [1, S]),
      [N.attentionMask]: new ort.Tensor('int64', new BigInt64Array(S).fill(1n), [1, S]),
      [N.pastKey(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 4, 0, 8]),
      [N.pastValue(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 4, 0, 8]),
    };
    for (const [name, data] of Object.entries(feeds)) t[name] = new ort.Tensor('float32', data, [1, S, data.length / S]);
    const out = await session.run(t);
    return { delta: out[N.delta].data as Float32Array, names: session.inputNames };
  } finally {
    await session.release();
  }
}

describe('a mixture carry-on graph', () => {
  it("names the secondary inputs after the primary's, in order; W_in's columns follow that order", async () => {
    const w = mixtureWeights();
    expect(w.inProj.cols).toBe(H + 2 * H2);
    const feeds = { [N.input('final')]: inputs.primary, [N.secondaryInput(0, 'final')]: inputs.final, [N.secondaryInput(0, 1)]: inputs.layer1 };
    const mixed = await run(w, feeds);
    expect(mixed.names.slice(0, 5)).toEqual(['hidden_states', 'secondary.0.hidden_states', 'secondary.0.hidden_states.layer.1', 'position_ids', 'attention_mask']);

    // Zero the secondary's columns: the primary's alone, through a single-base graph of the first H columns.
    const zeroed = mixtureWeights();
    const single = initCarryOnWeights({ hiddenSize: H, vocabSize: 512, width: 32, layers: 1, heads: 4, maxPositions: 512, seed: 4 });
    single.blocks = zeroed.blocks;
    single.outProj = zeroed.outProj;
    single.gateBias = zeroed.gateBias;
    for (let r = 0; r < 32; r++) {
      zeroed.inProj.data.fill(0, r * zeroed.inProj.cols + H, (r + 1) * zeroed.inProj.cols);
      single.inProj.data.set(zeroed.inProj.data.subarray(r * zeroed.inProj.cols, r * zeroed.inProj.cols + H), r * H);
    }
    const alone = await run(single, { [N.input('final')]: inputs.primary });
    expect(Array.from((await run(zeroed, feeds)).delta)).toEqual(Array.from(alone.delta));
    expect(Array.from(mixed.delta)).not.toEqual(Array.from(alone.delta));

    // Only the layer-1 block of columns (the last H2) reads secondary.0.hidden_states.layer.1.
    const onlyLayer = mixtureWeights();
    for (let r = 0; r < 32; r++) onlyLayer.inProj.data.fill(0, r * onlyLayer.inProj.cols, r * onlyLayer.inProj.cols + H + H2);
    const a = await run(onlyLayer, feeds);
    const b = await run(onlyLayer, { ...feeds, [N.input('final')]: fill(new Float32Array(S * H), 99), [N.secondaryInput(0, 'final')]: fill(new Float32Array(S * H2), 98) });
    expect(Array.from(b.delta)).toEqual(Array.from(a.delta));
  });

  it('`carryon carry-on build` and `verify` take a mixture: config secondary_bases, --secondary-base checks, a fixture with secondary inputs', async () => {
    const fingerprint = readManifest(secondaryDir).fingerprint;
    const w = mixtureWeights([{ hiddenSize: 64, inputLayers: ['final', 2] }]);
    const weightsFile = path.join(tmp, 'weights.safetensors');
    fs.writeFileSync(weightsFile, serializeSafetensors(weightsToTensors(w)));
    const config = {
      id: 'mix', hidden_size: 64, vocab_size: 512, input_layers: ['final'], reads_token_ids: false,
      secondary_bases: [{ fingerprint, hidden_size: 64, input_layers: ['final', 2] }],
      architecture: { width: 32, layers: 1, heads: 4, kv_heads: 4, head_dim: 8, intermediate: w.config.intermediate, rope_theta: 10000, rms_norm_eps: 1e-5, max_positions: 512 },
    };
    const configFile = path.join(tmp, 'config.json');
    fs.writeFileSync(configFile, JSON.stringify(config));
    const cli = (args: string[]) => promisify(execFile)(process.execPath, ['bin/carryon.js', 'carry-on', ...args], { cwd: REPO_ROOT });
    const out = path.join(tmp, 'pkg');
    const build = ['build', '--weights', weightsFile, '--config', configFile, '--base', primaryDir, '--out', out];
    await cli([...build, '--secondary-base', secondaryDir]);
    const manifest = await verifyCarryOnFiles(out);
    expect(manifest.secondary_bases).toEqual(config.secondary_bases);
    // The wrong package for the secondary, or the primary named as its own secondary: refused.
    await expect(cli([...build.slice(0, -1), path.join(tmp, 'x'), '--secondary-base', primaryDir])).rejects.toThrow(/fingerprint/);
    fs.writeFileSync(configFile, JSON.stringify({ ...config, secondary_bases: [{ ...config.secondary_bases[0], fingerprint: readManifest(primaryDir).fingerprint }] }));
    await expect(cli([...build.slice(0, -1), path.join(tmp, 'y')])).rejects.toThrow(/primary base itself/);

    // A fixture: inputs by contract name, expected outputs from the graph itself.
    const feeds = {
      [N.input('final')]: inputs.primary,
      [N.secondaryInput(0, 'final')]: fill(new Float32Array(S * 64), 21),
      [N.secondaryInput(0, 2)]: fill(new Float32Array(S * 64), 22),
    };
    const session = await ort.InferenceSession.create(fs.readFileSync(path.join(out, 'model.onnx')));
    const ids = (v: number[]) => ({ dtype: 'I64' as const, shape: [1, S], data: BigInt64Array.from(v, BigInt) });
    const t: Record<string, ort.Tensor> = {
      [N.positionIds]: new ort.Tensor('int64', BigInt64Array.from({ length: S }, (_, i) => BigInt(i)), [1, S]),
      [N.attentionMask]: new ort.Tensor('int64', new BigInt64Array(S).fill(1n), [1, S]),
      [N.pastKey(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 4, 0, 8]),
      [N.pastValue(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 4, 0, 8]),
    };
    for (const [name, data] of Object.entries(feeds)) t[name] = new ort.Tensor('float32', data, [1, S, 64]);
    const expected = await session.run(t);
    await session.release();
    const fixture: Record<string, { dtype: 'F32' | 'I64'; shape: number[]; data: Float32Array | BigInt64Array }> = {
      [N.positionIds]: ids(Array.from({ length: S }, (_, i) => i)),
      [N.attentionMask]: ids(new Array<number>(S).fill(1)),
      'expected.delta': { dtype: 'F32', shape: [1, S, 64], data: expected[N.delta].data as Float32Array },
      'expected.gate': { dtype: 'F32', shape: [1, S, 64], data: expected[N.gate].data as Float32Array },
    };
    for (const [name, data] of Object.entries(feeds)) fixture[name] = { dtype: 'F32', shape: [1, S, 64], data };
    const fixtureFile = path.join(tmp, 'fixture.safetensors');
    fs.writeFileSync(fixtureFile, serializeSafetensors(fixture));
    const verified = JSON.parse((await cli(['verify', out, '--fixture', fixtureFile])).stdout) as { ok: boolean; maxAbsDiff: { incremental: { delta: number } } };
    expect(verified.ok).toBe(true);
    expect(verified.maxAbsDiff.incremental.delta).toBeLessThan(1e-5);
    // `init` makes a zero-initialised mixture for the same bases.
    const initOut = path.join(tmp, 'init');
    await cli(['init', '--base', primaryDir, '--secondary-base', secondaryDir, '--out', initOut, '--id', 'mix-init']);
    expect((await verifyCarryOnFiles(initOut)).secondary_bases).toEqual([{ fingerprint, hidden_size: 64, input_layers: ['final'] }]);
    // Without the secondary's layer the fixture cannot be checked.
    delete fixture[N.secondaryInput(0, 2)];
    fs.writeFileSync(fixtureFile, serializeSafetensors(fixture));
    await expect(cli(['verify', out, '--fixture', fixtureFile])).rejects.toThrow(/missing tensor secondary\.0\.hidden_states\.layer\.2/);
  });
});
