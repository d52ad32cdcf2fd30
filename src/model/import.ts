import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { writeDirAtomic } from '../core/fs-atomic.js';
import { quantizeQ4_0 } from '../formats/ggml-quants.js';
import { ggufToCheckpoint } from './gguf.js';
import { packageTokenizerFiles } from './gguf-tokenizer.js';
import { hfFolderToCheckpoint } from './hf-folder.js';
import { llama2cToCheckpoint } from './llama2c.js';
import { buildBodyModel, buildHeadModel } from './onnx-graph.js';
import { PACKAGE_FILES, PACKAGE_FORMAT_VERSION, toConfigFile, type PackageManifest } from './package-files.js';
import type { ImportedCheckpoint, LlamaWeights, Matrix } from './types.js';

export interface ImportOptions {
  /** llama2c only: the tokenizer.bin; defaults to tokenizer.bin or tok512.bin beside the checkpoint. */
  tokenizerPath?: string;
  /** Package name (the served model id); defaults to the source file's base name (a folder's name). */
  name?: string;
  /** Residual-stream layers the body also outputs, for carry-ons that mix layers. */
  extraLayerOutputs?: number[];
  /**
   * 'q4_0': store every f32 projection matrix (and the LM head) as 4-bit ggml Q4_0 blocks, run by
   * MatMulNBits. Matrices whose input width is not a multiple of 32 stay f32. Embeddings stay f32.
   */
  quantize?: 'q4_0';
}

/** Reads a llama2.c `.bin` or a GGUF file into the common in-memory checkpoint. */
export async function readCheckpoint(src: string, opts: ImportOptions = {}): Promise<ImportedCheckpoint> {
  const ext = path.extname(src).toLowerCase();
  if (ext === '.gguf') return ggufToCheckpoint(src);
  if (ext === '.bin') return llama2cToCheckpoint(src, opts.tokenizerPath ?? findTokenizerBin(src));
  throw new Error(`cannot import ${src}: expected a llama2.c .bin, a .gguf file or a Hugging Face model folder`);
}

/** What a package is built from, whatever the source format. */
interface PackageSource {
  weights: LlamaWeights;
  tokenizerJson: string | Uint8Array;
  tokenizerConfig: object;
  generationConfig: object;
  source: { format: PackageManifest['source']['format']; sha256: string };
}

/** A Hugging Face folder's tokenizer files are copied; a .bin's or .gguf's are built from its vocabulary. */
async function readPackageSource(src: string, opts: ImportOptions): Promise<PackageSource> {
  if (fs.statSync(src).isDirectory()) return hfFolderToCheckpoint(src);
  const ckpt = await readCheckpoint(src, opts);
  const c = ckpt.weights.config;
  const tok = packageTokenizerFiles(ckpt.vocab, { modelMaxLength: c.max_position_embeddings });
  // One end token stays a number, as before; several (Llama 3's EOS and <|eot_id|>) are a list.
  const eos = tok.eosTokenIds.length === 1 ? tok.eosTokenIds[0] : tok.eosTokenIds;
  return {
    weights: ckpt.weights,
    tokenizerJson: JSON.stringify(tok.tokenizerJson),
    tokenizerConfig: tok.tokenizerConfig,
    generationConfig: { bos_token_id: tok.bosTokenId, eos_token_id: eos, max_length: c.max_position_embeddings },
    source: ckpt.source,
  };
}

/**
 * Builds a model package folder (see models/README.md), atomically, from a checkpoint file
 * (llama2.c .bin, .gguf) or a Hugging Face model folder (src/model/hf-folder.ts).
 */
export async function importModel(src: string, outDir: string, opts: ImportOptions = {}): Promise<PackageManifest> {
  const from = await readPackageSource(src, opts);
  const weights = opts.quantize === 'q4_0' ? quantizeWeights(from.weights) : from.weights;
  const extra = opts.extraLayerOutputs ?? [];
  const body = buildBodyModel(weights, { extraLayerOutputs: extra });
  const head = buildHeadModel(weights);
  const configJson = JSON.stringify(toConfigFile(weights.config), null, 2);
  const isFolder = from.source.format === 'hf';
  const manifest: PackageManifest = {
    format_version: PACKAGE_FORMAT_VERSION,
    name: opts.name ?? (isFolder ? path.basename(path.resolve(src)) : path.basename(src, path.extname(src))),
    fingerprint: createHash('sha256').update(configJson).update(body).update(head).digest('hex'),
    quantization: quantizationOf(weights),
    source: { format: from.source.format, file: path.basename(path.resolve(src)), sha256: from.source.sha256 },
    created_at: new Date().toISOString(),
    extra_layer_outputs: extra,
  };
  await writeDirAtomic(outDir, async (dir) => {
    const put = (name: string, data: string | Uint8Array) => fs.writeFileSync(path.join(dir, name), data);
    put(PACKAGE_FILES.config, configJson);
    put(PACKAGE_FILES.body, body);
    put(PACKAGE_FILES.head, head);
    put(PACKAGE_FILES.tokenizer, from.tokenizerJson);
    put(PACKAGE_FILES.tokenizerConfig, JSON.stringify(from.tokenizerConfig, null, 2));
    put(PACKAGE_FILES.generationConfig, JSON.stringify(from.generationConfig, null, 2));
    // Written last: a folder with a manifest is a complete package.
    put(PACKAGE_FILES.manifest, JSON.stringify(manifest, null, 2));
  });
  return manifest;
}

function findTokenizerBin(binPath: string): string {
  const dir = path.dirname(binPath);
  for (const name of ['tokenizer.bin', 'tok512.bin']) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  const others = fs.readdirSync(dir).filter((f) => /^tok.*\.bin$/.test(f));
  if (others.length === 1) return path.join(dir, others[0]);
  throw new Error(`no tokenizer.bin beside ${binPath}; pass one (CARRYON_TOKENIZER or --tokenizer)`);
}

/** Q4_0 for every f32 matrix that splits into 32-wide blocks (ggml's reference rounding). */
export function quantizeWeights(w: LlamaWeights): LlamaWeights {
  const q = (m: Matrix): Matrix =>
    m.kind === 'f32' && m.cols % 32 === 0 ? { kind: 'q4_0', rows: m.rows, cols: m.cols, data: quantizeQ4_0(m.data) } : m;
  const c = w.config;
  const head: Matrix = w.output ?? { kind: 'f32', rows: c.vocab_size, cols: c.hidden_size, data: w.tokEmbeddings };
  return {
    ...w,
    layers: w.layers.map((l) => ({ ...l, wq: q(l.wq), wk: q(l.wk), wv: q(l.wv), wo: q(l.wo), gate: q(l.gate), down: q(l.down), up: q(l.up) })),
    output: q(head),
  };
}

function quantizationOf(w: LlamaWeights): PackageManifest['quantization'] {
  const kinds = new Set<string>();
  for (const l of w.layers) for (const m of [l.wq, l.wk, l.wv, l.wo, l.gate, l.down, l.up]) kinds.add(m.kind);
  if (w.output) kinds.add(w.output.kind);
  if (kinds.size > 1) return 'mixed';
  return [...kinds][0] as PackageManifest['quantization'];
}
