import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildCarryOnGraph,
  countCarryOnParameters,
  initCarryOnWeights,
  type CarryOnConfig,
  type CarryOnWeights,
} from '../../src/carryon/graph.js';
import { CARRYON_FILES, CarryOnManifest, sha256Hex, verifyCarryOnFiles } from '../../src/carryon/manifest.js';
import { writeCarryOnPackage } from '../../src/carryon/package.js';
import { CarryOnTensorNames as N, type InputLayer } from '../../src/carryon/tensor-names.js';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { importModel } from '../../src/model/import.js';
import { DataType, parseModel } from '../../src/formats/onnx-builder.js';
import { readModelConfig, type PackageManifest } from '../../src/model/package-files.js';
import { TensorNames } from '../../src/model/tensor-names.js';
import type { LlamaConfig } from '../../src/model/types.js';
import { REPO_ROOT, STORIES_BIN } from '../helpers/paths.js';

const EXTRA_LAYER = 2;
const TOKENS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]; // BOS "Once upon a time" ...
const S = TOKENS.length;
const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1 };
const TOLERANCE = 1e-5;

type Feeds = Record<string, ort.Tensor>;

interface CarryOnOutputs {
  delta: Float32Array;
  gate: Float32Array;
}

let tmp: string;
let baseDir: string;
let baseManifest: PackageManifest;
let baseConfig: LlamaConfig;
/** The base body's outputs for TOKENS (batch 1): what the engine would hand the carry-on. */
let baseOutputs: Record<string, ort.Tensor>;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-graph-'));
  baseDir = path.join(tmp, 'stories260K');
  baseManifest = await importModel(STORIES_BIN, baseDir, { name: 'stories260K', extraLayerOutputs: [EXTRA_LAYER] });
  baseConfig = readModelConfig(baseDir);
  baseOutputs = await runBaseBody();
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Through the engine's own runner (the fused body), named as the graph names its outputs. */
async function runBaseBody(): Promise<Record<string, ort.Tensor>> {
  const runner = await ModelRunner.create({ modelDir: baseDir, provider: 'cpu', threads: 1 });
  try {
    const { hidden, layers } = await runner.forwardBody(TOKENS, runner.newCache());
    const D = baseConfig.hidden_size;
    const out: Record<string, ort.Tensor> = { [TensorNames.hiddenStates]: new ort.Tensor('float32', hidden, [1, S, D]) };
    for (const [k, v] of layers) out[TensorNames.layerHidden(k)] = new ort.Tensor('float32', v, [1, S, D]);
    return out;
  } finally {
    await runner.release();
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

function range(start: number, end: number): number[] {
  return Array.from({ length: end - start }, (_, i) => start + i);
}

function ones(n: number): number[] {
  return new Array<number>(n).fill(1);
}

function int64(rows: number[][]): ort.Tensor {
  const data = BigInt64Array.from(rows.flat(), (v) => BigInt(v));
  return new ort.Tensor('int64', data, [rows.length, rows[0].length]);
}

/** Tokens [start, end) of a batch-1 [1, S, H] tensor. */
function sliceSequence(t: ort.Tensor, start: number, end: number): ort.Tensor {
  const h = t.dims[2];
  const data = (t.data as Float32Array).slice(start * h, end * h);
  return new ort.Tensor('float32', data, [1, end - start, h]);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

/** Deterministic values in [-scale, scale) (an LCG: the test only needs "nonzero and varied"). */
function randomFill(target: Float32Array, scale: number, seed: number): void {
  let s = seed >>> 0;
  for (let i = 0; i < target.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    target[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
}

/** A carry-on as training would leave it: nonzero W_out and a gate that varies per feature. */
function trainedLike(w: CarryOnWeights, seed: number): CarryOnWeights {
  randomFill(w.outProj.data, 0.5, seed);
  randomFill(w.gateProj.data, 0.5, seed + 1);
  randomFill(w.gateBias, 1, seed + 2);
  return w;
}

function stories(extra: Partial<Parameters<typeof initCarryOnWeights>[0]> = {}): CarryOnWeights {
  return initCarryOnWeights({
    hiddenSize: baseConfig.hidden_size,
    vocabSize: baseConfig.vocab_size,
    width: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    maxPositions: baseConfig.max_position_embeddings,
    seed: 1,
    ...extra,
  });
}

/** Drives a carry-on session the way the engine will: chunks of the sequence, KV cache fed back. */
class CarryOnRunner {
  private constructor(
    readonly config: CarryOnConfig,
    readonly session: ort.InferenceSession,
  ) {}

  static async create(weights: CarryOnWeights): Promise<CarryOnRunner> {
    const session = await ort.InferenceSession.create(buildCarryOnGraph(weights), SESSION_OPTIONS);
    return new CarryOnRunner(weights.config, session);
  }

  emptyPast(batch: number): Feeds {
    const { kvHeads, headDim, layers } = this.config;
    const past: Feeds = {};
    for (let i = 0; i < layers; i++) {
      past[N.pastKey(i)] = new ort.Tensor('float32', new Float32Array(0), [batch, kvHeads, 0, headDim]);
      past[N.pastValue(i)] = new ort.Tensor('float32', new Float32Array(0), [batch, kvHeads, 0, headDim]);
    }
    return past;
  }

  /** Runs TOKENS split into `chunks` (sizes summing to S); returns delta/gate for all S tokens. */
  async runChunks(chunks: number[], inputs: Feeds = baseOutputs, tokens = TOKENS): Promise<CarryOnOutputs> {
    const h = this.config.hiddenSize;
    const delta = new Float32Array(S * h);
    const gate = new Float32Array(S * h);
    let past = this.emptyPast(1);
    let start = 0;
    for (const size of chunks) {
      const end = start + size;
      const out = await this.session.run({ ...this.chunkFeeds(inputs, tokens, start, end), ...past });
      delta.set(out[N.delta].data as Float32Array, start * h);
      gate.set(out[N.gate].data as Float32Array, start * h);
      past = this.nextPast(out);
      start = end;
    }
    expect(start).toBe(S);
    return { delta, gate };
  }

  private chunkFeeds(inputs: Feeds, tokens: number[], start: number, end: number): Feeds {
    const feeds: Feeds = {
      [N.positionIds]: int64([range(start, end)]),
      [N.attentionMask]: int64([ones(end)]),
    };
    for (const layer of this.config.inputLayers) {
      feeds[N.input(layer)] = sliceSequence(inputs[N.input(layer)], start, end);
    }
    if (this.config.readsTokenIds) feeds[N.inputIds] = int64([tokens.slice(start, end)]);
    return feeds;
  }

  nextPast(out: ort.InferenceSession.ReturnType): Feeds {
    const past: Feeds = {};
    for (let i = 0; i < this.config.layers; i++) {
      past[N.pastKey(i)] = out[N.presentKey(i)];
      past[N.pastValue(i)] = out[N.presentValue(i)];
    }
    return past;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

/** Full sequence, one token at a time, and uneven chunks must agree. */
interface ConsistencyReport {
  step: number;
  chunked: number;
  scale: number;
}

async function expectCacheConsistency(runner: CarryOnRunner): Promise<ConsistencyReport> {
  const full = await runner.runChunks([S]);
  const step = await runner.runChunks(ones(S));
  const chunked = await runner.runChunks([5, 4, 3]);
  const worst = (a: CarryOnOutputs, b: CarryOnOutputs): number =>
    Math.max(maxAbsDiff(a.delta, b.delta), maxAbsDiff(a.gate, b.gate));
  const diffs = {
    step: worst(full, step),
    chunked: Math.max(worst(full, chunked), worst(step, chunked)),
    scale: maxAbs(full.delta),
  };
  expect(diffs.step).toBeLessThan(TOLERANCE);
  expect(diffs.chunked).toBeLessThan(TOLERANCE);
  expect(diffs.scale).toBeGreaterThan(0.01); // a vacuous comparison of zeros would prove nothing
  return diffs;
}

// ---------------------------------------------------------------------------------------------

describe('carry-on graph on stories260K', () => {
  it('starts as the base: delta exactly 0, gate 0.5, x + α·g·Δx bit-identical to x', async () => {
    const runner = await CarryOnRunner.create(stories());
    try {
      const { delta, gate } = await runner.runChunks([S]);
      expect(delta.every((v) => v === 0)).toBe(true);
      expect(gate.every((v) => v > 0 && v < 1)).toBe(true);
      expect(gate.every((v) => v === 0.5)).toBe(true);
      const x = baseOutputs[TensorNames.hiddenStates].data as Float32Array;
      const alpha = 4; // the largest α a manifest allows
      const edited = x.map((v, i) => v + alpha * gate[i] * delta[i]);
      expect(Buffer.from(edited.buffer).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength))).toBe(true);
    } finally {
      await runner.release();
    }
  });

  it('gives the same delta and gate for full-sequence, step-by-step and chunked runs', async () => {
    const runner = await CarryOnRunner.create(trainedLike(stories(), 11));
    try {
      const d = await expectCacheConsistency(runner);
      console.log(
        `carry-on KV cache (max|delta| ${d.scale.toFixed(3)}): full vs step max|diff| ${d.step.toExponential(2)}, ` +
          `chunked max|diff| ${d.chunked.toExponential(2)}`,
      );
    } finally {
      await runner.release();
    }
  });

  it('treats a left-padded batch row like the unpadded sequence', async () => {
    const runner = await CarryOnRunner.create(trainedLike(stories(), 21));
    try {
      const h = baseConfig.hidden_size;
      const pad = 3;
      const real = S - pad; // row 1 holds the first `real` tokens of row 0, left-padded
      const x = baseOutputs[TensorNames.hiddenStates].data as Float32Array;
      const batched = new Float32Array(2 * S * h);
      batched.set(x, 0);
      batched.set(x.subarray(0, real * h), (S + pad) * h); // pads keep zeros
      const out = await runner.session.run({
        [N.input('final')]: new ort.Tensor('float32', batched, [2, S, h]),
        [N.positionIds]: int64([range(0, S), [...new Array<number>(pad).fill(0), ...range(0, real)]]),
        [N.attentionMask]: int64([ones(S), [...new Array<number>(pad).fill(0), ...ones(real)]]),
        ...runner.emptyPast(2),
      });
      const delta = out[N.delta].data as Float32Array;
      expect(delta.every(Number.isFinite)).toBe(true);
      const alone = await runner.runChunks([S]);
      expect(maxAbsDiff(delta.subarray(0, S * h), alone.delta)).toBeLessThan(TOLERANCE);
      expect(maxAbsDiff(delta.subarray((S + pad) * h), alone.delta.subarray(0, real * h))).toBeLessThan(TOLERANCE);
    } finally {
      await runner.release();
    }
  });

  it('reads intermediate layers and token ids, with the contract input names', async () => {
    const inputLayers: InputLayer[] = ['final', EXTRA_LAYER];
    const runner = await CarryOnRunner.create(trainedLike(stories({ inputLayers, readsTokenIds: true }), 31));
    try {
      const { layers } = runner.config;
      const kv = range(0, layers).flatMap((i) => [N.pastKey(i), N.pastValue(i)]);
      expect(runner.session.inputNames).toEqual([
        'hidden_states',
        `hidden_states.layer.${EXTRA_LAYER}`,
        'input_ids',
        'position_ids',
        'attention_mask',
        ...kv,
      ]);
      expect(kv.slice(0, 2)).toEqual(['carry_on.past.0.key', 'carry_on.past.0.value']);
      expect(runner.session.outputNames).toEqual([
        'delta',
        'gate',
        ...range(0, layers).flatMap((i) => [`carry_on.present.${i}.key`, `carry_on.present.${i}.value`]),
      ]);
      // The base body's output names are exactly the carry-on's input names.
      const baseOut = Object.keys(baseOutputs);
      expect(baseOut).toEqual(expect.arrayContaining(['hidden_states', `hidden_states.layer.${EXTRA_LAYER}`]));

      const reference = await runner.runChunks([S]);
      await expectCacheConsistency(runner);
      // Every input path must reach the output: perturb one source at a time.
      const h = baseConfig.hidden_size;
      const zeroLayer = new ort.Tensor('float32', new Float32Array(S * h), [1, S, h]);
      const withoutLayer = await runner.runChunks([S], { ...baseOutputs, [N.input(EXTRA_LAYER)]: zeroLayer });
      expect(maxAbsDiff(withoutLayer.delta, reference.delta)).toBeGreaterThan(1e-3);
      const shifted = TOKENS.map((t) => (t + 1) % baseConfig.vocab_size);
      const otherTokens = await runner.runChunks([S], baseOutputs, shifted);
      expect(maxAbsDiff(otherTokens.delta, reference.delta)).toBeGreaterThan(1e-3);
    } finally {
      await runner.release();
    }
  });

  it('counts exactly the initializers that are parameters; the graph is self-contained', () => {
    for (const weights of [stories(), stories({ inputLayers: ['final', EXTRA_LAYER], readsTokenIds: true })]) {
      const model = parseModel(buildCarryOnGraph(weights));
      const initializers = model.graph?.initializer ?? [];
      let params = 0;
      let buffers = 0;
      for (const t of initializers) {
        const count = (t.dims ?? []).reduce((a: number, b) => a * Number(b), 1);
        expect(t.dataLocation ?? 0).toBe(0); // DEFAULT: bytes inside the file, no external data
        expect(t.rawData?.length).toBe(count * (t.dataType === DataType.INT64 ? 8 : 4));
        const name = t.name ?? '';
        if (name.startsWith('carry_on.')) params += count;
        else {
          expect(name).toMatch(/^(rope\.(cos|sin)_cached|const_(f32|i64)_\d+)$/);
          buffers += count;
        }
      }
      expect(params).toBe(countCarryOnParameters(weights));
      const { maxPositions, headDim } = weights.config;
      expect(buffers).toBeGreaterThanOrEqual(maxPositions * headDim); // cos + sin tables
      expect(buffers).toBeLessThan(maxPositions * headDim + 100); // plus a few scalars and shapes
    }
  });
});

describe('carry-on package', () => {
  it('writes a manifest that validates and binds the graph bytes and the base', async () => {
    const dir = path.join(tmp, 'pkg');
    const weights = stories({ inputLayers: ['final', EXTRA_LAYER] });
    const written = await writeCarryOnPackage(dir, weights, {
      id: 'tiny-stories.v1',
      version: 3,
      baseFingerprint: baseManifest.fingerprint,
      description: 'test carry-on',
      defaultAlpha: 0.75,
    });
    expect(fs.readdirSync(dir).sort()).toEqual([CARRYON_FILES.manifest, CARRYON_FILES.graph, CARRYON_FILES.weights].sort());
    const raw: unknown = JSON.parse(fs.readFileSync(path.join(dir, CARRYON_FILES.manifest), 'utf8'));
    expect(CarryOnManifest.parse(raw)).toEqual(written);
    expect(await verifyCarryOnFiles(dir)).toEqual(written);
    expect(written.architecture.max_positions).toBe(512);
    expect(written.sha256).toBe(sha256Hex(fs.readFileSync(path.join(dir, CARRYON_FILES.graph))));
    expect(written).toMatchObject({
      format_version: 1,
      id: 'tiny-stories.v1',
      version: 3,
      base_fingerprint: baseManifest.fingerprint,
      hidden_size: baseConfig.hidden_size,
      input_layers: ['final', EXTRA_LAYER],
      reads_token_ids: false,
      default_alpha: 0.75,
      parameter_count: countCarryOnParameters(weights),
      architecture: { width: 64, layers: 2, heads: 4, kv_heads: 2, head_dim: 16, intermediate: 192 },
      created_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) as unknown,
    });

    // input_layers defaults to ['final'] for manifests that omit it.
    const { input_layers: _omitted, ...withoutLayers } = written;
    expect(CarryOnManifest.parse(withoutLayers).input_layers).toEqual(['final']);
    const invalid = [{ id: 'Upper' }, { default_alpha: 4.5 }, { input_layers: ['final', 'final'] }, { sha256: 'abc' }];
    for (const bad of invalid) {
      expect(CarryOnManifest.safeParse({ ...written, ...bad }).success).toBe(false);
    }

    const graphFile = path.join(dir, CARRYON_FILES.graph);
    const bytes = fs.readFileSync(graphFile);
    bytes[bytes.length - 100] ^= 0x01;
    fs.writeFileSync(graphFile, bytes);
    await expect(verifyCarryOnFiles(dir)).rejects.toThrow(/sha256/);
  });

  it('`carryon carry-on init` writes a loadable package', async () => {
    const out = path.join(tmp, 'cli-pkg');
    const args = ['bin/carryon.js', 'carry-on', 'init', '--base', baseDir, '--out', out, '--id', 'cli-test'];
    const shape = ['--width', '32', '--layers', '1', '--heads', '2', '--kv-heads', '1'];
    const rest = ['--layers-in', `final,${EXTRA_LAYER}`, '--token-ids', '--seed', '7', '--alpha', '0.5'];
    const cli = (argv: string[]) => promisify(execFile)(process.execPath, argv, { cwd: REPO_ROOT });
    const { stdout } = await cli([...args, ...shape, ...rest, '--description', 'from the CLI']);
    expect(stdout).toMatch(/carry-on cli-test v1 .* params, \d+ bytes/);

    const manifest = await verifyCarryOnFiles(out);
    expect(manifest).toMatchObject({
      id: 'cli-test',
      base_fingerprint: baseManifest.fingerprint,
      input_layers: ['final', EXTRA_LAYER],
      reads_token_ids: true,
      default_alpha: 0.5,
      description: 'from the CLI',
      architecture: { width: 32, layers: 1, heads: 2, kv_heads: 1, head_dim: 16 },
    });
    // The carry-on sees the base's positions, so its RoPE tables cover the base's context.
    expect(manifest.architecture.max_positions).toBe(baseConfig.max_position_embeddings);
    const graphBytes = fs.readFileSync(path.join(out, CARRYON_FILES.graph));
    const session = await ort.InferenceSession.create(graphBytes, SESSION_OPTIONS);
    try {
      const result = await session.run({
        [N.input('final')]: baseOutputs[TensorNames.hiddenStates],
        [N.input(EXTRA_LAYER)]: baseOutputs[N.input(EXTRA_LAYER)],
        [N.inputIds]: int64([TOKENS]),
        [N.positionIds]: int64([range(0, S)]),
        [N.attentionMask]: int64([ones(S)]),
        [N.pastKey(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 16]),
        [N.pastValue(0)]: new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 16]),
      });
      expect((result[N.delta].data as Float32Array).every((v) => v === 0)).toBe(true);
      expect(result[N.presentKey(0)].dims).toEqual([1, 1, S, 16]);
    } finally {
      await session.release();
    }

    // A layer the base body does not output is refused before anything is written.
    const refused = cli([...args.slice(0, 6), path.join(tmp, 'no'), '--id', 'x', '--layers-in', '3']);
    await expect(refused).rejects.toThrow(/hidden_states\.layer\.3/);
    expect(fs.existsSync(path.join(tmp, 'no'))).toBe(false);
  });
});

describe('carry-on size', () => {
  it('reports the .onnx size of a width-64, 2-layer carry-on', async () => {
    const shapes = [
      { name: 'stories260K', hiddenSize: 64, vocabSize: 512, maxPositions: 512, ropeTheta: 10000 },
      { name: 'SmolLM2-135M shape', hiddenSize: 576, vocabSize: 49152, maxPositions: 8192, ropeTheta: 100000 },
    ];
    for (const { name, ...shape } of shapes) {
      const weights = initCarryOnWeights({ ...shape, width: 64, layers: 2, heads: 4 });
      const bytes = buildCarryOnGraph(weights);
      const params = countCarryOnParameters(weights);
      const ropeBytes = 4 * shape.maxPositions * weights.config.headDim;
      console.log(
        `carry-on width 64 x 2 layers at ${name} (hidden ${shape.hiddenSize}): ${params} params, ` +
          `${bytes.length} bytes (${(bytes.length / 1024).toFixed(1)} KiB; RoPE tables ${ropeBytes} bytes)`,
      );
      // Weights + RoPE tables + a few KiB of graph structure: nothing stored twice.
      expect(bytes.length).toBeGreaterThan(4 * params + ropeBytes);
      expect(bytes.length).toBeLessThan(4 * params + ropeBytes + 32 * 1024);
      const session = await ort.InferenceSession.create(bytes, SESSION_OPTIONS);
      await session.release();
    }
  });
});
