import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { initCarryOnWeights } from '../carryon/graph.js';
import { CARRYON_FILES } from '../carryon/manifest.js';
import { writeCarryOnPackage } from '../carryon/package.js';
import type { InputLayer } from '../carryon/tensor-names.js';
import { importModel } from '../model/import.js';
import { resolveModelPackage } from '../model/model-source.js';
import { readManifest, readModelConfig } from '../model/package-files.js';
import { tokenizerDigest } from '../model/tokenizer-digest.js';

/** Where `carry-on init` imports a checkpoint file it is given as --base, unless --data-dir says. */
const DEFAULT_BASE_CACHE = path.join(os.tmpdir(), 'carryon-base-cache');

const USAGE = `usage:
  carryon import SRC OUT [--tokenizer TOKENIZER_BIN] [--name NAME] [--layers 2,4] [--quantize q4_0]
      Build a model package folder OUT from a llama2.c checkpoint (.bin, with its tokenizer.bin),
      a GGUF file (architectures llama, qwen2, qwen3; tokenizers llama and gpt2; F32, F16, BF16,
      Q4_0, Q8_0, Q4_K, Q6_K tensors, the quantized ones kept quantized) or a Hugging Face model
      folder as save_pretrained writes it (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
      Qwen3ForCausalLM: config.json, safetensors in F32/F16/BF16, one file or sharded,
      tokenizer.json + tokenizer_config.json). --quantize q4_0 stores the f32 projection matrices and
      LM head 4-bit (MatMulNBits, accuracy_level 4).
  carryon carry-on init --base MODEL --out DIR --id ID [--width 64] [--layers 2] [--heads 4]
      [--kv-heads N] [--intermediate N] [--alpha 1] [--layers-in final,3] [--token-ids] [--seed 0]
      [--description TEXT] [--tenant TENANT] [--tokenizer TOKENIZER_BIN] [--data-dir DIR]
      [--secondary-base PACKAGE_DIR ...]
      Write a freshly initialised carry-on package (weights.safetensors + model.onnx + manifest.json;
      an upload sends the weights and the manifest, the gateway builds its own graph) for the base MODEL:
      a model package folder, a Hugging Face model folder or a llama2.c .bin / .gguf file, imported first exactly as the
      gateway imports CARRYON_MODEL (into DIR/models/<file name>, reused while the file is
      unchanged; --data-dir defaults to ${DEFAULT_BASE_CACHE}), so base_fingerprint is the one the
      gateway serving that file computes. Its delta is exactly 0, so it serves the base unchanged
      until trained. --layers-in picks the base hidden states it reads ('final' or block indices
      the base was imported with --layers). --tenant goes into the manifest, for uploads to
      POST /admin/carry-ons that do not name one. --secondary-base (a model package folder with
      MODEL's tokenizer, repeatable) makes a mixture that also reads that base's final state.
  carryon carry-on build --weights W.safetensors --config C.json --base MODEL_DIR --out DIR [--id ID] [--alpha 1]
  carryon carry-on verify DIR --fixture F.safetensors [--tolerance 1e-4]
      Package trained weights (trainer/), and check a package against the trainer's outputs
      (carryon carry-on build --help for the weight layout).
  carryon harvest --model MODEL_DIR --input FILE --out DIR [options]
      Write hidden-state training shards from a data file (carryon harvest --help for options).
  carryon serve
      Start the gateway (same as npm start); configured by environment variables, see docs/configuration.md.
  carryon train-worker
      Run the training jobs queued in the shared database (gateways with CARRYON_TRAINING_WORKER=external
      only queue them), on the same data folder; same environment as the gateway (docs/training.md).`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'import': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { tokenizer: { type: 'string' }, name: { type: 'string' }, layers: { type: 'string' }, quantize: { type: 'string' } },
      });
      if (values.quantize !== undefined && values.quantize !== 'q4_0') {
        console.error(`carryon import: --quantize takes q4_0, not ${values.quantize}`);
        return 2;
      }
      if (positionals.length !== 2) {
        console.error(USAGE);
        return 2;
      }
      const [src, out] = positionals;
      const extraLayerOutputs = values.layers ? values.layers.split(',').map((s) => Number.parseInt(s, 10)) : undefined;
      const manifest = await importModel(src, out, { tokenizerPath: values.tokenizer, name: values.name, extraLayerOutputs, quantize: values.quantize });
      console.log(`imported ${src} -> ${out} (fingerprint ${manifest.fingerprint}, ${manifest.quantization})`);
      return 0;
    }
    case 'carry-on':
      return carryOnCommand(rest);
    case 'harvest':
      return (await import('./harvest-offline.js')).harvestCommand(rest);
    case 'train-worker':
      return (await import('./train-worker.js')).trainWorkerCommand(rest);
    case 'serve':
      await import('../app/main.js');
      return -1;
    default:
      console.error(USAGE);
      return command === undefined || command === '--help' || command === 'help' ? 0 : 2;
  }
}

async function carryOnCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'build' || sub === 'verify') {
    const m = await import('../carryon/build-from-weights.js');
    return sub === 'build' ? m.carryOnBuildCommand(rest) : m.carryOnVerifyCommand(rest);
  }
  if (sub !== 'init') {
    console.error(USAGE);
    return 2;
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      base: { type: 'string' },
      out: { type: 'string' },
      id: { type: 'string' },
      width: { type: 'string', default: '64' },
      layers: { type: 'string', default: '2' },
      heads: { type: 'string', default: '4' },
      'kv-heads': { type: 'string' },
      intermediate: { type: 'string' },
      alpha: { type: 'string', default: '1' },
      'layers-in': { type: 'string', default: 'final' },
      'token-ids': { type: 'boolean', default: false },
      seed: { type: 'string', default: '0' },
      description: { type: 'string', default: '' },
      tenant: { type: 'string' },
      tokenizer: { type: 'string' },
      'data-dir': { type: 'string' },
      'secondary-base': { type: 'string', multiple: true },
    },
  });
  if (!values.base || !values.out || !values.id) {
    console.error(USAGE);
    return 2;
  }
  // The gateway's own resolution of CARRYON_MODEL: a package as is, a checkpoint imported once.
  const baseDir = await resolveModelPackage({
    model: values.base,
    tokenizer: values.tokenizer,
    dataDir: values['data-dir'] ?? DEFAULT_BASE_CACHE,
    downloadBaseUrl: '',
    log: (m) => console.error(m),
  });
  const config = readModelConfig(baseDir);
  const base = readManifest(baseDir);
  const inputLayers = parseInputLayers(values['layers-in'], base.extra_layer_outputs);
  const secondaryDirs = values['secondary-base'] ?? [];
  const digest = secondaryDirs.length > 0 ? tokenizerDigest(baseDir) : null;
  for (const dir of secondaryDirs) {
    if (tokenizerDigest(dir) !== digest) throw new Error(`--secondary-base ${dir} does not have the base's tokenizer: a mixture's bases must read the same ids`);
  }
  const weights = initCarryOnWeights({
    hiddenSize: config.hidden_size,
    vocabSize: config.vocab_size,
    width: intOption('width', values.width),
    layers: intOption('layers', values.layers),
    heads: intOption('heads', values.heads),
    kvHeads: values['kv-heads'] === undefined ? undefined : intOption('kv-heads', values['kv-heads']),
    intermediate: values.intermediate === undefined ? undefined : intOption('intermediate', values.intermediate),
    inputLayers,
    secondaries: secondaryDirs.map((dir) => ({ hiddenSize: readModelConfig(dir).hidden_size, inputLayers: ['final' as const] })),
    readsTokenIds: values['token-ids'],
    seed: intOption('seed', values.seed),
    // Same positions and norm epsilon as the base: the carry-on sees exactly the base's positions.
    maxPositions: config.max_position_embeddings,
    ropeTheta: config.rope_theta,
    rmsNormEps: config.rms_norm_eps,
  });
  const manifest = await writeCarryOnPackage(values.out, weights, {
    id: values.id,
    baseFingerprint: base.fingerprint,
    description: values.description,
    defaultAlpha: Number(values.alpha),
    tenant: values.tenant,
    secondaryFingerprints: secondaryDirs.map((dir) => readManifest(dir).fingerprint),
  });
  const bytes = fs.statSync(path.join(values.out, CARRYON_FILES.graph)).size;
  console.log(
    `carry-on ${manifest.id} v${manifest.version} -> ${values.out}: ${manifest.parameter_count} params, ` +
      `${bytes} bytes, inputs ${manifest.input_layers.join(',')}${manifest.reads_token_ids ? '+token ids' : ''} ` +
      `(base ${base.name}, fingerprint ${base.fingerprint.slice(0, 12)})`,
  );
  return 0;
}

function intOption(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new Error(`--${name} must be an integer, got '${value}'`);
  return n;
}

/** Numeric layers must be ones the base body outputs, or the engine could never feed them. */
function parseInputLayers(spec: string, available: number[]): InputLayer[] {
  return spec.split(',').map((s): InputLayer => {
    const item = s.trim();
    if (item === 'final') return 'final';
    const k = intOption('layers-in', item);
    if (!available.includes(k)) {
      throw new Error(
        `--layers-in ${k}: the base package does not output hidden_states.layer.${k} ` +
          `(it has [${available.join(',')}]; re-import it with --layers ${k})`,
      );
    }
    return k;
  });
}

const code = await main(process.argv.slice(2)).catch((err: Error) => {
  console.error(`carryon: ${err.message}`);
  return 1;
});
if (code >= 0) process.exitCode = code;
