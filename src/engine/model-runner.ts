import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { TensorNames } from '../model/tensor-names.js';
import { PACKAGE_FILES, readManifest, readModelConfig } from '../model/package-files.js';
import type { LlamaConfig } from '../model/types.js';
import { KvPool, type KvGeometry } from './kv-pool.js';
import type { EngineInit } from './worker-messages.js';

/** What the body produced for the tokens just fed: the final hidden state and any extra layer outputs. */
export interface BodyResult {
  /** [rows × tokens × hidden], after the final norm. */
  hidden: Float32Array;
  /** Residual stream after block k, same layout, for each layer the package exports. */
  layers: Map<number, Float32Array>;
}

/** One sequence's attention cache on its own: a one-slot pool that doubles as it fills. */
export class KvCache {
  constructor(readonly pool: KvPool) {}

  get length(): number {
    return this.pool.slots === 0 ? 0 : this.pool.length(0);
  }
}

/**
 * Runs the base model's two graphs: the body (tokens → final hidden state, appending to a KV pool
 * in place) and the LM head (hidden → logits). Keeping them apart lets a carry-on change the hidden
 * state in between while the vocabulary projection still runs once per token, batched.
 */
export class ModelRunner {
  readonly kvGeometry: KvGeometry;

  private constructor(
    readonly config: LlamaConfig,
    private readonly body: ort.InferenceSession,
    private readonly head: ort.InferenceSession,
    /** Extra residual-stream layers the body outputs (from the package manifest). */
    readonly extraLayers: number[],
  ) {
    this.kvGeometry = { layers: config.num_hidden_layers, kvHeads: config.num_key_value_heads, headDim: config.head_dim };
  }

  static async create(init: Pick<EngineInit, 'modelDir' | 'provider' | 'threads'> & Partial<EngineInit>): Promise<ModelRunner> {
    const config = withContextLength(readModelConfig(init.modelDir), init.contextLength);
    const manifest = readManifest(init.modelDir);
    const options = sessionOptions(init);
    const body = await ort.InferenceSession.create(path.join(init.modelDir, PACKAGE_FILES.body), options);
    const head = await ort.InferenceSession.create(path.join(init.modelDir, PACKAGE_FILES.head), options);
    return new ModelRunner(config, body, head, manifest.extra_layer_outputs);
  }

  newPool(): KvPool {
    return new KvPool(this.kvGeometry);
  }

  newCache(): KvCache {
    return new KvCache(this.newPool());
  }

  /** Feeds `ids` after what `cache` holds; returns their hidden states and extends the cache. */
  async forwardBody(ids: number[], cache: KvCache): Promise<BodyResult> {
    const need = cache.length + ids.length;
    if (need > this.config.max_position_embeddings) {
      throw new Error(`${need} positions exceed the model's context of ${this.config.max_position_embeddings}`);
    }
    if (need > cache.pool.capacity) {
      cache.pool.ensure(1, Math.min(this.config.max_position_embeddings, Math.max(need, 2 * cache.pool.capacity, 64)));
    }
    return this.forwardRows(cache.pool, 0, 1, ids);
  }

  /**
   * One body pass over `rows` adjacent slots from `first`, each fed `ids.length / rows` new tokens
   * (ids laid out row by row). Each row continues from its own length; the pool must have room.
   */
  async forwardRows(pool: KvPool, first: number, rows: number, ids: number[]): Promise<BodyResult> {
    const n = ids.length / rows;
    if (!Number.isInteger(n) || n < 1) throw new Error(`cannot split ${ids.length} tokens into ${rows} rows`);
    const past = new BigInt64Array(rows);
    const positions = new BigInt64Array(ids.length);
    for (let r = 0; r < rows; r++) {
      const len = pool.length(first + r);
      if (len + n > pool.capacity) throw new Error(`KV slot ${first + r} holds ${pool.capacity} positions; ${len + n} needed`);
      past[r] = BigInt(len);
      for (let i = 0; i < n; i++) positions[r * n + i] = BigInt(len + i);
    }
    const feeds = this.bindPast(pool, first, rows);
    feeds[TensorNames.inputIds] = new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [rows, n]);
    feeds[TensorNames.positionIds] = new ort.Tensor('int64', positions, [rows, n]);
    feeds[TensorNames.pastLengths] = new ort.Tensor('int64', past, [rows]);
    const out = await this.body.run(feeds);
    for (let i = 0; i < this.config.num_hidden_layers; i++) {
      pool.append(i, first, rows, n, out[TensorNames.newKey(i)].data as Float32Array, out[TensorNames.newValue(i)].data as Float32Array);
    }
    for (let r = 0; r < rows; r++) pool.setLength(first + r, Number(past[r]) + n);
    const layers = new Map<number, Float32Array>();
    for (const k of this.extraLayers) layers.set(k, out[TensorNames.layerHidden(k)].data as Float32Array);
    return { hidden: out[TensorNames.hiddenStates].data as Float32Array, layers };
  }

  /**
   * The body reads every row's past up to the pool's capacity (masked beyond its length), so a
   * row far shorter than the pool is given a past of its own size: none for rows that hold
   * nothing, a compact copy for a single shorter row. Masked positions add exact zeros, so the
   * result is the same either way, and only the cost changes.
   */
  private bindPast(pool: KvPool, first: number, rows: number): Record<string, ort.Tensor> {
    let longest = 0;
    for (let r = 0; r < rows; r++) longest = Math.max(longest, pool.length(first + r));
    if (longest === 0 && pool.capacity > 1) return pool.bindEmpty(rows);
    const compact = Math.ceil(longest / 64) * 64;
    if (rows === 1 && compact * 2 <= pool.capacity) return pool.bindCompact(first, compact);
    return pool.bind(first, rows);
  }

  /** LM head over `rows` hidden states laid end to end; returns rows × vocab logits. */
  async forwardHead(hidden: Float32Array, rows: number): Promise<Float32Array> {
    const h = new ort.Tensor('float32', hidden, [1, rows, this.config.hidden_size]);
    const out = await this.head.run({ [TensorNames.hiddenStates]: h });
    return out[TensorNames.logits].data as Float32Array;
  }

  async release(): Promise<void> {
    await this.body.release();
    await this.head.release();
  }
}

/**
 * The served context: the model's, or a smaller one the operator chose. Everything downstream reads
 * config.max_position_embeddings, so lowering it here lowers it everywhere. Raising it is refused:
 * positions past the trained length are out of distribution for RoPE (no model here declares a
 * longer one it was extended to), and the RoPE tables in the graph stop at the model's length.
 */
export function withContextLength(config: LlamaConfig, contextLength: number | undefined): LlamaConfig {
  if (!contextLength) return config;
  if (contextLength > config.max_position_embeddings) {
    throw new Error(
      `CARRYON_CONTEXT_LENGTH ${contextLength} exceeds the model's context length of ${config.max_position_embeddings} (max_position_embeddings)`,
    );
  }
  return { ...config, max_position_embeddings: contextLength };
}

function sessionOptions(init: Pick<EngineInit, 'provider' | 'threads'>): ort.InferenceSession.SessionOptions {
  assertProviderAvailable(init.provider);
  const providers: ort.InferenceSession.ExecutionProviderConfig[] =
    init.provider === 'cpu' ? ['cpu'] : [init.provider, 'cpu'];
  return {
    executionProviders: providers,
    intraOpNumThreads: init.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  };
}

/**
 * A clear boot error beats ORT failing deep inside session creation. The CUDA provider is a separate
 * download (`npm install --onnxruntime-node-install=cuda12`) that lands beside the native binding.
 */
export function assertProviderAvailable(provider: EngineInit['provider']): void {
  if (provider === 'cpu') return;
  const found = ort.listSupportedBackends().find((b) => b.name === provider);
  const bindingDir = path.join(
    path.dirname(fileURLToPath(import.meta.resolve('onnxruntime-node'))),
    '..', 'bin', 'napi-v6', process.platform, process.arch,
  );
  const cudaLib = path.join(bindingDir, 'libonnxruntime_providers_cuda.so');
  if (provider === 'cuda' && (!found || !fs.existsSync(cudaLib))) {
    throw new Error(
      'execution provider "cuda" is not installed: reinstall onnxruntime-node with ' +
        '`npm install --onnxruntime-node-install=cuda12` on a host with CUDA 12 and cuDNN 9',
    );
  }
  if (provider === 'webgpu' && !found) {
    throw new Error('execution provider "webgpu" is not in this onnxruntime-node build');
  }
}
