/**
 * `carryon carry-on build` and `carryon carry-on verify`: the bridge from a trainer's weights to a
 * carry-on package, and the proof that the package computes what the trainer computed.
 *
 * A trainer (trainer/carryon_train, or anyone's) writes the carry-on's parameters as one
 * safetensors file in PyTorch's layout ([out, in] matrices), named as the graph's initializers
 * minus the `_t` suffix (see WEIGHT_NAMES in ./weights.ts and the architecture in ./graph.ts), plus a small
 * JSON config. `build` turns them into `CarryOnWeights` and writes the package with the same
 * builder `carry-on init` uses, so there is exactly one ONNX graph builder and no export path that
 * can drift from what the gateway serves.
 *
 * `verify` runs the package in ONNX Runtime on a fixture (inputs + the trainer's outputs) twice:
 * the whole sequence at once, and as a prefix followed by one token at a time through the KV cache
 * (the way the engine serves it). Both must match within a tolerance.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { expectedInterface, interfaceProblems } from './graph-contract.js';
import { readSafetensors, type DecodedTensor } from '../formats/safetensors.js';
import { parseModel } from '../formats/onnx-builder.js';
import { readManifest, readModelConfig } from '../model/package-files.js';
import type { CarryOnConfig } from './graph.js';
import { configFromManifest, weightsFromTensors } from './weights.js';
import {
  CARRYON_FILES,
  CarryOnArchitecture,
  MAX_ALPHA,
  MAX_SECONDARY_BASES,
  SecondaryBase,
  secondaryBasesOf,
  verifyCarryOnFiles,
  type CarryOnManifest,
} from './manifest.js';
import { writeCarryOnPackage } from './package.js';
import { hiddenInputs, CarryOnTensorNames as N } from './tensor-names.js';

export const BUILD_USAGE = `  carryon carry-on build --weights W.safetensors --config C.json --base MODEL_DIR --out DIR
      [--id ID] [--alpha 1] [--description TEXT] [--version 1] [--secondary-base MODEL_DIR ...]
      Build a carry-on package from trained weights (F32, PyTorch [out, in] layout, tensor names
      carry_on.in_proj.weight, carry_on.layers.{i}.self_attn.q_proj.weight, ...; see
      src/carryon/build-from-weights.ts) and their config ({hidden_size, vocab_size, input_layers,
      reads_token_ids, architecture}, and for a mixture secondary_bases [{fingerprint, hidden_size,
      input_layers}]). --id defaults to the config's "id". --secondary-base (once per secondary
      base, in order) checks a mixture against those bases' packages.
  carryon carry-on verify DIR --fixture F.safetensors [--tolerance 1e-4]
      Run the package in ONNX Runtime on the fixture's inputs (whole sequence, then prefix + one
      token at a time through the cache) and compare delta and gate with the fixture's
      expected.delta / expected.gate. Exit code 1 when any difference exceeds the tolerance.`;

/** The config file `build` reads: the manifest's shape fields, which the weights cannot tell. */
export const WeightsConfigFile = z.object({
  id: z.string().optional(),
  description: z.string().optional(),
  hidden_size: z.number().int().positive(),
  vocab_size: z.number().int().positive(),
  input_layers: z.array(z.union([z.literal('final'), z.number().int().nonnegative()])).min(1),
  secondary_bases: z.array(SecondaryBase).max(MAX_SECONDARY_BASES).optional(),
  reads_token_ids: z.boolean(),
  architecture: CarryOnArchitecture,
});
export type WeightsConfigFile = z.infer<typeof WeightsConfigFile>;

export function configFromFile(c: WeightsConfigFile): CarryOnConfig {
  return configFromManifest(c, c.vocab_size);
}

export interface BuildFromWeightsOptions {
  weightsFile: string;
  configFile: string;
  baseDir: string;
  outDir: string;
  id?: string;
  description?: string;
  defaultAlpha?: number;
  version?: number;
  /** A mixture's secondary base packages, in `secondary_bases` order: checked when given. */
  secondaryBaseDirs?: string[];
}

/** Reads weights + config, checks them against the base package, writes the carry-on package. */
export async function buildFromWeights(opts: BuildFromWeightsOptions): Promise<CarryOnManifest> {
  const file = WeightsConfigFile.parse(JSON.parse(fs.readFileSync(opts.configFile, 'utf8')));
  const config = configFromFile(file);
  const base = readModelConfig(opts.baseDir);
  const baseManifest = readManifest(opts.baseDir);
  if (config.hiddenSize !== base.hidden_size) throw new Error(`config hidden_size ${config.hiddenSize} != the base's ${base.hidden_size}`);
  if (config.vocabSize !== base.vocab_size) throw new Error(`config vocab_size ${config.vocabSize} != the base's ${base.vocab_size}`);
  for (const l of config.inputLayers) {
    if (l !== 'final' && !baseManifest.extra_layer_outputs.includes(l)) {
      throw new Error(`input layer ${l}: the base package does not output hidden_states.layer.${l} (it has [${baseManifest.extra_layer_outputs.join(',')}])`);
    }
  }
  checkSecondaryBases(file, baseManifest.fingerprint, base.vocab_size, opts.secondaryBaseDirs ?? []);
  const id = opts.id ?? file.id;
  if (!id) throw new Error('no carry-on id: pass --id or put "id" in the config');
  const weights = weightsFromTensors(readSafetensors(opts.weightsFile).tensors, config);
  return writeCarryOnPackage(opts.outDir, weights, {
    id,
    version: opts.version,
    baseFingerprint: baseManifest.fingerprint,
    description: opts.description ?? file.description ?? '',
    defaultAlpha: opts.defaultAlpha,
    secondaryFingerprints: secondaryBasesOf(file).map((b) => b.fingerprint),
  });
}

/** A mixture's secondary bases: never the primary itself, and, for each package given, the one it names. */
function checkSecondaryBases(file: WeightsConfigFile, primary: string, vocabSize: number, dirs: string[]): void {
  const secondaries = secondaryBasesOf(file);
  if (secondaries.some((b) => b.fingerprint === primary)) throw new Error('a secondary base is the primary base itself');
  if (dirs.length > 0 && dirs.length !== secondaries.length) {
    throw new Error(`${dirs.length} --secondary-base package(s) for ${secondaries.length} secondary base(s) in the config`);
  }
  dirs.forEach((dir, j) => {
    const want = secondaries[j];
    const config = readModelConfig(dir);
    const manifest = readManifest(dir);
    if (manifest.fingerprint !== want.fingerprint) throw new Error(`secondary base ${j}: ${dir} has fingerprint ${manifest.fingerprint}, the config names ${want.fingerprint}`);
    if (config.hidden_size !== want.hidden_size) throw new Error(`secondary base ${j}: hidden_size ${want.hidden_size} != the package's ${config.hidden_size}`);
    if (config.vocab_size !== vocabSize) throw new Error(`secondary base ${j}: vocabulary of ${config.vocab_size} tokens, the primary has ${vocabSize}`);
    const missing = want.input_layers.filter((l) => l !== 'final' && !manifest.extra_layer_outputs.includes(l));
    if (missing.length > 0) throw new Error(`secondary base ${j}: the package does not output layer(s) ${missing.join(',')}`);
  });
}

// ---------------------------------------------------------------------------------------------
// verify

export interface VerifyResult {
  ok: boolean;
  tolerance: number;
  /** Max |onnx - expected| per output and mode. */
  maxAbsDiff: { full: { delta: number; gate: number }; incremental: { delta: number; gate: number } | null };
  problems: string[];
}

/**
 * Fixture tensors: the graph inputs by their contract names (`hidden_states`,
 * `hidden_states.layer.{k}` F32 [B, S, H], a mixture's `secondary.{j}.…` [B, S, H_j]; `input_ids`, `position_ids`, `attention_mask` I64 [B, S])
 * and `expected.delta`, `expected.gate` F32 [B, S, H].
 */
export async function verifyCarryOn(dir: string, fixtureFile: string, tolerance = 1e-4): Promise<VerifyResult> {
  const manifest = await verifyCarryOnFiles(dir);
  const graph = fs.readFileSync(path.join(dir, CARRYON_FILES.graph));
  const problems = interfaceProblems(parseModel(graph), expectedInterface(manifest));
  const fixture = readSafetensors(fixtureFile).tensors;
  const get = (name: string): DecodedTensor => {
    const t = fixture.get(name);
    if (!t) throw new Error(`fixture ${fixtureFile}: missing tensor ${name}`);
    return t;
  };
  const expectedDelta = get('expected.delta');
  const expectedGate = get('expected.gate');
  const [B, S, H] = expectedDelta.shape;
  if (get(N.attentionMask).shape.join(',') !== `${B},${S}`) throw new Error(`fixture attention_mask must be [${B}, ${S}]`);
  if (H !== manifest.hidden_size) throw new Error(`fixture hidden size ${H} != the manifest's ${manifest.hidden_size}`);

  const inputs = hiddenInputs(
    { hiddenSize: manifest.hidden_size, inputLayers: manifest.input_layers },
    secondaryBasesOf(manifest).map((b) => ({ hiddenSize: b.hidden_size, inputLayers: b.input_layers })),
  );
  const session = await ort.InferenceSession.create(graph, { executionProviders: ['cpu'], logSeverityLevel: 3 });
  try {
    const run = async (from: number, to: number, past: Map<string, ort.Tensor>) => {
      const feeds: Record<string, ort.Tensor> = {};
      for (const { name } of inputs) feeds[name] = sliceSeq(get(name), from, to, 'float32');
      if (manifest.reads_token_ids) feeds[N.inputIds] = sliceSeq(get(N.inputIds), from, to, 'int64');
      feeds[N.positionIds] = sliceSeq(get(N.positionIds), from, to, 'int64');
      feeds[N.attentionMask] = sliceSeq(get(N.attentionMask), 0, to, 'int64');
      const { kv_heads: kv, head_dim: hd, layers } = manifest.architecture;
      for (let i = 0; i < layers; i++) {
        const empty = new ort.Tensor('float32', new Float32Array(0), [B, kv, 0, hd]);
        feeds[N.pastKey(i)] = past.get(N.presentKey(i)) ?? empty;
        feeds[N.pastValue(i)] = past.get(N.presentValue(i)) ?? empty;
      }
      const out = await session.run(feeds);
      return new Map(Object.entries(out));
    };

    // Padding positions are compared nowhere: their outputs are garbage by contract (a query with
    // no attendable key), and differ between a whole-sequence and a cached run.
    const mask = get(N.attentionMask).data as BigInt64Array;
    const real = (i: number) => mask[Math.floor(i / H)] !== 0n;
    const diff = (a: Float32Array, b: DecodedTensor) => maxAbsDiff(a, b.data as Float32Array, real);

    const full = await run(0, S, new Map());
    const fullDiff = {
      delta: diff(full.get(N.delta)!.data as Float32Array, expectedDelta),
      gate: diff(full.get(N.gate)!.data as Float32Array, expectedGate),
    };

    // Prefix, then one token at a time through the cache: the serving path.
    let incremental: VerifyResult['maxAbsDiff']['incremental'] = null;
    if (S > 1) {
      const split = Math.ceil(S / 2);
      const delta = new Float32Array(B * S * H);
      const gate = new Float32Array(B * S * H);
      let state = new Map<string, ort.Tensor>();
      for (let from = 0; from < S; ) {
        const to = from === 0 ? split : from + 1;
        const out = await run(from, to, state);
        placeSeq(delta, out.get(N.delta)!.data as Float32Array, B, S, H, from, to);
        placeSeq(gate, out.get(N.gate)!.data as Float32Array, B, S, H, from, to);
        state = out;
        from = to;
      }
      incremental = { delta: diff(delta, expectedDelta), gate: diff(gate, expectedGate) };
    }
    for (const [mode, d] of Object.entries({ full: fullDiff, incremental })) {
      if (!d) continue;
      for (const [name, v] of Object.entries(d)) {
        if (!(v <= tolerance)) problems.push(`${mode} ${name}: max |onnx - expected| = ${v} > ${tolerance}`);
      }
    }
    return { ok: problems.length === 0, tolerance, maxAbsDiff: { full: fullDiff, incremental }, problems };
  } finally {
    await session.release();
  }
}

/** Positions [from, to) of a [B, S, ...] fixture tensor as an ORT tensor. */
function sliceSeq(t: DecodedTensor, from: number, to: number, type: 'float32' | 'int64'): ort.Tensor {
  const [B, S, ...rest] = t.shape;
  const inner = rest.reduce((a, b) => a * b, 1);
  const want = type === 'float32' ? 'F32' : 'I64';
  if (t.dtype !== want) throw new Error(`fixture tensor of shape [${t.shape}] must be ${want}, is ${t.dtype}`);
  const n = to - from;
  const src = t.data as Float32Array | BigInt64Array;
  const out = type === 'float32' ? new Float32Array(B * n * inner) : new BigInt64Array(B * n * inner);
  for (let b = 0; b < B; b++) {
    const s = src.subarray((b * S + from) * inner, (b * S + to) * inner);
    (out as Float32Array).set(s as Float32Array, b * n * inner);
  }
  return new ort.Tensor(type, out, [B, n, ...rest]);
}

function placeSeq(dst: Float32Array, src: Float32Array, B: number, S: number, H: number, from: number, to: number): void {
  const n = to - from;
  for (let b = 0; b < B; b++) dst.set(src.subarray(b * n * H, (b + 1) * n * H), (b * S + from) * H);
}

function maxAbsDiff(a: Float32Array, b: Float32Array, include: (i: number) => boolean): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (!include(i)) continue;
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// CLI

export async function carryOnBuildCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      weights: { type: 'string' },
      config: { type: 'string' },
      base: { type: 'string' },
      out: { type: 'string' },
      id: { type: 'string' },
      alpha: { type: 'string', default: '1' },
      description: { type: 'string' },
      version: { type: 'string' },
      'secondary-base': { type: 'string', multiple: true },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(`usage:\n${BUILD_USAGE}`);
    return 0;
  }
  if (!values.weights || !values.config || !values.base || !values.out) {
    console.error(`usage:\n${BUILD_USAGE}`);
    return 2;
  }
  const alpha = Number(values.alpha);
  if (!(alpha >= 0 && alpha <= MAX_ALPHA)) throw new Error(`--alpha must be in [0, ${MAX_ALPHA}], got '${values.alpha}'`);
  const manifest = await buildFromWeights({
    weightsFile: values.weights,
    configFile: values.config,
    baseDir: values.base,
    outDir: values.out,
    id: values.id,
    description: values.description,
    defaultAlpha: alpha,
    version: values.version === undefined ? undefined : Number(values.version),
    secondaryBaseDirs: values['secondary-base'],
  });
  const bytes = fs.statSync(path.join(values.out, CARRYON_FILES.graph)).size;
  console.log(`carry-on ${manifest.id} v${manifest.version} -> ${values.out}: ${manifest.parameter_count} params, ${bytes} bytes, sha256 ${manifest.sha256}`);
  return 0;
}

export async function carryOnVerifyCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { fixture: { type: 'string' }, tolerance: { type: 'string', default: '1e-4' }, help: { type: 'boolean', default: false } },
  });
  if (values.help) {
    console.log(`usage:\n${BUILD_USAGE}`);
    return 0;
  }
  if (positionals.length !== 1 || !values.fixture) {
    console.error(`usage:\n${BUILD_USAGE}`);
    return 2;
  }
  const tolerance = Number(values.tolerance);
  if (!(tolerance >= 0)) throw new Error(`--tolerance must be a number >= 0, got '${values.tolerance}'`);
  const result = await verifyCarryOn(positionals[0], values.fixture, tolerance);
  // One JSON line, so a trainer can parse it; the exit code carries the verdict.
  console.log(JSON.stringify(result));
  return result.ok ? 0 : 1;
}
