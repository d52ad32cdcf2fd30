import * as ort from 'onnxruntime-node';
import { CarryOnTensorNames as N, type InputLayer } from '../carryon/tensor-names.js';
import type { BodyResult, KvCache, ModelRunner } from './model-runner.js';

/** The most rows one carry-on call reads (see CarryOnSession.forward). */
const ROWS_PER_CALL = 128;

/** What the worker needs to know to run a carry-on graph (from its manifest). */
export interface CarryOnSpec {
  /** `tenant/id@version`: one resident session per version. */
  key: string;
  graphPath: string;
  inputLayers: InputLayer[];
  readsTokenIds: boolean;
  blocks: number;
  kvHeads: number;
  headDim: number;
  hiddenSize: number;
  /** A mixture's other bases, in manifest order: each one's package runs beside the primary's body. */
  secondaries: SecondaryBaseSpec[];
}

export interface SecondaryBaseSpec {
  fingerprint: string;
  /** The served base's package folder (the worker loads its body once, shared by every mixture reading it). */
  modelDir: string;
  hiddenSize: number;
  inputLayers: InputLayer[];
}

/**
 * A carry-on's own attention cache, one per sequence, like the base's; for a mixture, also each
 * secondary base's KV cache for the sequence, since those bodies run over the same tokens.
 */
export interface CarryOnCache {
  length: number;
  tensors: Map<string, ort.Tensor>;
  secondary: KvCache[];
}

/**
 * One loaded carry-on graph. Each session owns a thread pool, so carry-ons (small, many) get one
 * intra-op thread each; the base keeps the configured thread count.
 */
export class CarryOnSession {
  private constructor(
    readonly spec: CarryOnSpec,
    private readonly session: ort.InferenceSession,
    /** The secondary bases' runners, one per spec.secondaries entry (owned by the worker, shared). */
    private readonly bodies: ModelRunner[],
  ) {}

  /** A mixture: its caches cover secondary bases too, so a kept prefix state of the carry-on alone is not enough to resume. */
  get isMixture(): boolean {
    return this.bodies.length > 0;
  }

  static async load(spec: CarryOnSpec, bodies: ModelRunner[] = []): Promise<CarryOnSession> {
    if (bodies.length !== spec.secondaries.length) throw new Error(`carry-on ${spec.key} reads ${spec.secondaries.length} secondary base(s); ${bodies.length} given`);
    spec.secondaries.forEach((sec, j) => {
      const c = bodies[j].config;
      if (c.hidden_size !== sec.hiddenSize) throw new Error(`carry-on ${spec.key}: secondary base ${j} has hidden size ${c.hidden_size}, not ${sec.hiddenSize}`);
      const missing = sec.inputLayers.filter((l) => l !== 'final' && !bodies[j].extraLayers.includes(l));
      if (missing.length > 0) throw new Error(`carry-on ${spec.key} reads layer(s) ${missing.join(',')} of secondary base ${j}, which its package does not output`);
    });
    const session = await ort.InferenceSession.create(spec.graphPath, {
      executionProviders: ['cpu'],
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // The arena keeps its high-water mark for good: measured 7.9 MiB vs 2.6 MiB per 1 MB carry-on
      // after a 256-token prefill, at the same decode speed. Without it the budget's file bytes stay
      // close to what a resident carry-on really holds.
      enableCpuMemArena: false,
    });
    return new CarryOnSession(spec, session, bodies);
  }

  newCache(): CarryOnCache {
    const tensors = new Map<string, ort.Tensor>();
    const empty = () => new ort.Tensor('float32', new Float32Array(0), [1, this.spec.kvHeads, 0, this.spec.headDim]);
    for (let i = 0; i < this.spec.blocks; i++) {
      tensors.set(N.pastKey(i), empty());
      tensors.set(N.pastValue(i), empty());
    }
    return { length: 0, tensors, secondary: this.bodies.map((b) => b.newCache()) };
  }

  /**
   * Runs the carry-on over the tokens the body just processed; returns delta and gate [tokens ×
   * hidden]. Long runs go in calls of at most ROWS_PER_CALL rows: the graph's attention
   * materialises [heads, rows, total] scores several times per block, and at a thousand rows those
   * buffers cost more in allocation than in arithmetic (measured on a 1 MB carry-on, 992 rows: one
   * call 177–451 ms, calls of 128 rows 12–13 ms; 2,048 rows: 1.1–2.0 s vs 38 ms).
   */
  async forward(ids: number[], body: BodyResult, cache: CarryOnCache): Promise<{ delta: Float32Array; gate: Float32Array }> {
    const n = ids.length;
    // A mixture's secondary bodies read the same tokens first, in this same step, each from its own cache.
    const secondary: BodyResult[] = [];
    for (let j = 0; j < this.bodies.length; j++) secondary.push(await this.bodies[j].forwardBody(ids, cache.secondary[j]));
    if (n <= ROWS_PER_CALL) return this.forwardOnce(ids, body, secondary, cache);
    const h = this.spec.hiddenSize;
    const delta = new Float32Array(n * h);
    const gate = new Float32Array(n * h);
    for (let at = 0; at < n; at += ROWS_PER_CALL) {
      const end = Math.min(n, at + ROWS_PER_CALL);
      const rows = (b: BodyResult, width: number): BodyResult => {
        const layers = new Map<number, Float32Array>();
        for (const [k, data] of b.layers) layers.set(k, data.subarray(at * width, end * width));
        return { hidden: b.hidden.subarray(at * width, end * width), layers };
      };
      const part = await this.forwardOnce(ids.slice(at, end), rows(body, h), secondary.map((b, j) => rows(b, this.spec.secondaries[j].hiddenSize)), cache);
      delta.set(part.delta, at * h);
      gate.set(part.gate, at * h);
    }
    return { delta, gate };
  }

  private async forwardOnce(ids: number[], body: BodyResult, secondary: BodyResult[], cache: CarryOnCache): Promise<{ delta: Float32Array; gate: Float32Array }> {
    const n = ids.length;
    const h = this.spec.hiddenSize;
    const total = cache.length + n;
    const feeds: Record<string, ort.Tensor> = {
      [N.positionIds]: new ort.Tensor('int64', BigInt64Array.from({ length: n }, (_, i) => BigInt(cache.length + i)), [1, n]),
      [N.attentionMask]: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
    };
    for (const layer of this.spec.inputLayers) {
      const data = layer === 'final' ? body.hidden : body.layers.get(layer);
      if (!data) throw new Error(`carry-on ${this.spec.key} reads base layer ${layer}, which this base package does not output`);
      feeds[N.input(layer)] = new ort.Tensor('float32', data, [1, n, h]);
    }
    this.spec.secondaries.forEach((sec, j) => {
      for (const layer of sec.inputLayers) {
        const data = layer === 'final' ? secondary[j].hidden : secondary[j].layers.get(layer)!;
        feeds[N.secondaryInput(j, layer)] = new ort.Tensor('float32', data, [1, n, sec.hiddenSize]);
      }
    });
    if (this.spec.readsTokenIds) feeds[N.inputIds] = new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]);
    for (const [name, t] of cache.tensors) feeds[name] = t;
    const out = await this.session.run(feeds);
    for (let i = 0; i < this.spec.blocks; i++) {
      cache.tensors.set(N.pastKey(i), out[N.presentKey(i)]);
      cache.tensors.set(N.pastValue(i), out[N.presentValue(i)]);
    }
    cache.length = total;
    return { delta: out[N.delta].data as Float32Array, gate: out[N.gate].data as Float32Array };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/**
 * GPT Carry-On's combination, x' = x + α · g ⊙ Δx, for one row of hidden states. Rounded to float32
 * per element, as an ONNX graph would compute it.
 */
export function mergeRow(x: Float32Array, delta: Float32Array, gate: Float32Array, alpha: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] + Math.fround(alpha * Math.fround(gate[i] * delta[i]));
  return out;
}
