import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { TensorNames } from '../model/tensor-names.js';
import { PACKAGE_FILES, readManifest, readModelConfig } from '../model/package-files.js';
import type { LlamaConfig } from '../model/types.js';
import type { EngineInit } from './protocol.js';

/** What the body produced for the tokens just fed: the final hidden state and any extra layer outputs. */
export interface BodyResult {
  /** [tokens × hidden], after the final norm. */
  hidden: Float32Array;
  /** Residual stream after block k, [tokens × hidden], for each layer the package exports. */
  layers: Map<number, Float32Array>;
}

/** One sequence's attention cache: per layer, key and value [1, kvHeads, length, headDim]. */
export interface KvCache {
  length: number;
  tensors: Map<string, ort.Tensor>;
}

/**
 * Runs the base model's two graphs: the body (tokens → final hidden state, with KV cache) and the
 * LM head (hidden → logits). Keeping them apart lets a carry-on change the hidden state in between
 * while the vocabulary projection still runs once per token.
 */
export class ModelRunner {
  private constructor(
    readonly config: LlamaConfig,
    private readonly body: ort.InferenceSession,
    private readonly head: ort.InferenceSession,
    /** Extra residual-stream layers the body outputs (from the package manifest). */
    readonly extraLayers: number[],
  ) {}

  static async create(init: EngineInit): Promise<ModelRunner> {
    const config = readModelConfig(init.modelDir);
    const options = sessionOptions(init);
    const body = await ort.InferenceSession.create(path.join(init.modelDir, PACKAGE_FILES.body), options);
    const head = await ort.InferenceSession.create(path.join(init.modelDir, PACKAGE_FILES.head), options);
    return new ModelRunner(config, body, head, readManifest(init.modelDir).extra_layer_outputs);
  }

  newCache(): KvCache {
    const { num_hidden_layers: layers, num_key_value_heads: kvHeads, head_dim: headDim } = this.config;
    const tensors = new Map<string, ort.Tensor>();
    for (let i = 0; i < layers; i++) {
      tensors.set(TensorNames.pastKey(i), new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]));
      tensors.set(TensorNames.pastValue(i), new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]));
    }
    return { length: 0, tensors };
  }

  /** Feeds `ids` after what `cache` holds; returns their hidden states and extends the cache. */
  async forwardBody(ids: number[], cache: KvCache): Promise<BodyResult> {
    const n = ids.length;
    const total = cache.length + n;
    const feeds: Record<string, ort.Tensor> = {
      [TensorNames.inputIds]: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
      [TensorNames.positionIds]: new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, (_, i) => BigInt(cache.length + i)),
        [1, n],
      ),
      [TensorNames.attentionMask]: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
    };
    for (const [name, t] of cache.tensors) feeds[name] = t;
    const out = await this.body.run(feeds);
    for (let i = 0; i < this.config.num_hidden_layers; i++) {
      cache.tensors.set(TensorNames.pastKey(i), out[TensorNames.presentKey(i)]);
      cache.tensors.set(TensorNames.pastValue(i), out[TensorNames.presentValue(i)]);
    }
    cache.length = total;
    const layers = new Map<number, Float32Array>();
    for (const k of this.extraLayers) layers.set(k, out[TensorNames.layerHidden(k)].data as Float32Array);
    return { hidden: out[TensorNames.hiddenStates].data as Float32Array, layers };
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

function sessionOptions(init: EngineInit): ort.InferenceSession.SessionOptions {
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
