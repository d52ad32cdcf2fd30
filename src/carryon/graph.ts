/**
 * The carry-on module's ONNX graph (GPT Carry-On, arXiv 2504.07513): a small causal transformer
 * that reads the frozen base's hidden states and proposes a correction of the final one. The
 * gateway combines it as `logits = head(x + α · gate ⊙ delta)`, x = the base's `hidden_states`.
 *
 * ## Architecture (the PyTorch trainer must mirror this exactly)
 *
 * Notation: H = base hidden size, W = width, n = number of input layers, nh = heads,
 * nkv = kv_heads, hd = head_dim = W / nh, I = intermediate, eps = rms_norm_eps. Every matrix M
 * below is [out, in] (PyTorch `nn.Linear.weight` layout) and applied as y = x Mᵀ; the ONNX file
 * stores Mᵀ as `<name>.weight_t` [in, out]. All arithmetic is float32.
 *
 * 1. u = concat(inputs, dim=-1)                            [B, S, n·H + Σ n_j·H_j]
 *    inputs in `input_layers` order: 'final' → base `hidden_states` (after the base's final
 *    RMSNorm), k → base `hidden_states.layer.{k}` (residual stream after base block k, un-normed);
 *    then, for a mixture, each secondary base j's layers (`secondary.{j}.…`, width H_j, n_j of them).
 *    No normalisation of u: the projection learns the scale.
 * 2. x = u W_inᵀ                                           W_in `carry_on.in_proj` [W, n·H + Σ n_j·H_j], no bias
 *    if reads_token_ids: x += E[input_ids]                 E `carry_on.embed_tokens.weight` [vocab, W]
 * 3. for each block i in 0..L-1 (prefix `carry_on.layers.{i}`), exactly the base's Llama block:
 *      h  = RMSNorm(x) · `input_layernorm.weight`[W]
 *      q  = RoPE(h Wqᵀ) [nh·hd, W]; k = RoPE(h Wkᵀ) [nkv·hd, W]; v = h Wvᵀ [nkv·hd, W]
 *      attention: k, v appended to this block's cache; query head j uses kv head ⌊j / (nh/nkv)⌋;
 *        scores = q kᵀ / sqrt(hd); query at cache index p+s may see key index t iff t ≤ p+s and
 *        attention_mask[b, t] = 1 (masked scores are replaced by float32's lowest finite value,
 *        not -inf, so all-padding rows stay finite); softmax over t; context = probs · v
 *      x  = x + context Woᵀ                                Wo [W, nh·hd]
 *      h2 = RMSNorm(x) · `post_attention_layernorm.weight`[W]
 *      x  = x + (silu(h2 Wgᵀ) ⊙ (h2 Wuᵀ)) Wdᵀ              Wg=`mlp.gate_proj`, Wu=`mlp.up_proj` [I, W],
 *                                                          Wd=`mlp.down_proj` [W, I]
 *    RMSNorm(x) = x / sqrt(mean(x², dim=-1) + eps).
 *    RoPE is interleaved (llama2.c/GGUF): pair j of a head = elements (2j, 2j+1), rotated by
 *    angle position_ids · θ^(−2j/hd); cos/sin tables are computed in float32 like llama2.c.
 * 4. h = RMSNorm(x) · `carry_on.norm.weight`[W]
 * 5. delta = h W_outᵀ                                      W_out `carry_on.out_proj` [H, W], no bias
 *    gate  = sigmoid(h W_gateᵀ + b_gate)                   W_gate `carry_on.gate_proj` [H, W],
 *                                                          b_gate `carry_on.gate_proj.bias` [H]
 *
 * ## Initialisation (`initCarryOnWeights`)
 *
 * Every matrix except W_out and W_gate ~ N(0, 0.02²) from a seeded PRNG; norm weights = 1;
 * W_out = 0 exactly, so delta = 0 and the carry-on starts as the base for every α; W_gate = 0 and
 * b_gate = 0, so the gate starts at 0.5 and receives gradient from the first step.
 *
 * Tensor names and shapes of the graph's inputs/outputs are in ./tensor-names.ts.
 */
import { attr, DataType, GraphBuilder, type Dim } from '../formats/onnx-builder.js';
import {
  buildSharedTensors,
  decoderBlock,
  DIM_BATCH,
  DIM_PAST_SEQUENCE,
  DIM_SEQUENCE,
  DIM_TOTAL_SEQUENCE,
  linearLayer,
  MODEL_OPTIONS,
  rmsNorm,
  type BlockGeometry,
  type BlockNames,
} from '../model/onnx-graph.js';
import type { Matrix } from '../model/types.js';
import { hiddenInputs, CarryOnTensorNames as N, type InputLayer, type SecondaryInput } from './tensor-names.js';

export type F32Matrix = Matrix & { kind: 'f32' };

export interface CarryOnConfig {
  /** The base's hidden size H. */
  hiddenSize: number;
  /** The base's vocabulary; only used when readsTokenIds. */
  vocabSize: number;
  inputLayers: InputLayer[];
  /** A mixture's other bases, read after the primary's layers (empty: one base). */
  secondaries: SecondaryInput[];
  readsTokenIds: boolean;
  width: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  ropeTheta: number;
  rmsNormEps: number;
  /** RoPE table length: position_ids must stay below it (use the base's context length). */
  maxPositions: number;
}

/** A Llama block with every matrix in f32 (the carry-on is small; quantizing it buys nothing). */
export interface CarryOnBlock {
  attnNorm: Float32Array;
  wq: F32Matrix;
  wk: F32Matrix;
  wv: F32Matrix;
  wo: F32Matrix;
  ffnNorm: Float32Array;
  gate: F32Matrix;
  up: F32Matrix;
  down: F32Matrix;
}

export interface CarryOnWeights {
  config: CarryOnConfig;
  /** W_in [width, inputWidth(config)]. */
  inProj: F32Matrix;
  /** [vocab, width] when readsTokenIds, else null. */
  tokEmbeddings: Float32Array | null;
  blocks: CarryOnBlock[];
  /** [width] */
  finalNorm: Float32Array;
  /** W_out [hidden, width]. */
  outProj: F32Matrix;
  /** W_gate [hidden, width]. */
  gateProj: F32Matrix;
  /** b_gate [hidden]. */
  gateBias: Float32Array;
}

export interface InitCarryOnOptions {
  hiddenSize: number;
  vocabSize: number;
  width: number;
  layers: number;
  heads: number;
  /** Default: heads (plain multi-head attention). */
  kvHeads?: number;
  /** Default: 8/3 · width rounded up to a multiple of 32, Llama's SwiGLU sizing. */
  intermediate?: number;
  /** Default: ['final']. */
  inputLayers?: InputLayer[];
  /** Default: none (one base). */
  secondaries?: SecondaryInput[];
  readsTokenIds?: boolean;
  seed?: number;
  /** Default: 2048; pass the base's max_position_embeddings. */
  maxPositions?: number;
  /** Default: 10000. */
  ropeTheta?: number;
  /** Default: 1e-5. */
  rmsNormEps?: number;
}

/** The std of the normal initialisation, as in GPT-2/Llama reference code. */
const INIT_STD = 0.02;
const DEFAULT_ROPE_THETA = 10000;
const DEFAULT_RMS_NORM_EPS = 1e-5;
const DEFAULT_MAX_POSITIONS = 2048;
/** MatMulNBits accuracy level: irrelevant here (all f32), but decoderBlock takes one. */
const F32_ACCURACY_LEVEL = 0;

const PREFIX = 'carry_on';

// ---------------------------------------------------------------------------------------------
// Graph

export function buildCarryOnGraph(weights: CarryOnWeights): Uint8Array {
  validateCarryOnWeights(weights);
  const cfg = weights.config;
  const g = new GraphBuilder('carry_on');
  const inputs = declareInputs(g, cfg);
  const geometry = blockGeometry(cfg);
  const shared = buildSharedTensors(g, geometry, { sequence: N.positionIds, pastKey: N.pastKey(0) });

  g.scope = `${PREFIX}.in_proj`;
  const u = inputs.length === 1 ? inputs[0] : g.op('Concat', inputs, { axis: attr.int(-1) });
  let x = linearLayer(g, u, weights.inProj, `${PREFIX}.in_proj`, F32_ACCURACY_LEVEL);
  if (weights.tokEmbeddings) {
    const embed = g.initializer(`${PREFIX}.embed_tokens.weight`, weights.tokEmbeddings, [cfg.vocabSize, cfg.width]);
    x = g.op('Add', [x, g.op('Gather', [embed, N.inputIds], { axis: attr.int(0) })]);
  }

  weights.blocks.forEach((block, i) => {
    g.scope = `${PREFIX}.layers.${i}`;
    x = decoderBlock(g, x, block, geometry, shared, blockNames(i), F32_ACCURACY_LEVEL);
  });

  g.scope = `${PREFIX}.norm`;
  const h = rmsNorm(g, x, g.initializer(`${PREFIX}.norm.weight`, weights.finalNorm), cfg.rmsNormEps);
  g.scope = `${PREFIX}.head`;
  buildOutputs(g, h, weights);
  declareOutputs(g, cfg);
  return g.serialize({ ...MODEL_OPTIONS, docString: 'GPT Carry-On module: base hidden states -> (delta, gate)' });
}

/** Declares the inputs in the contract's order; returns the hidden-state inputs to concatenate. */
function declareInputs(g: GraphBuilder, cfg: CarryOnConfig): string[] {
  const hidden = hiddenInputs(cfg, cfg.secondaries).map(({ name, size }) => g.input(name, DataType.FLOAT, [DIM_BATCH, DIM_SEQUENCE, size]));
  if (cfg.readsTokenIds) g.input(N.inputIds, DataType.INT64, [DIM_BATCH, DIM_SEQUENCE]);
  g.input(N.positionIds, DataType.INT64, [DIM_BATCH, DIM_SEQUENCE]);
  g.input(N.attentionMask, DataType.INT64, [DIM_BATCH, DIM_TOTAL_SEQUENCE]);
  const kvShape: Dim[] = [DIM_BATCH, cfg.kvHeads, DIM_PAST_SEQUENCE, cfg.headDim];
  for (let i = 0; i < cfg.layers; i++) {
    g.input(N.pastKey(i), DataType.FLOAT, kvShape);
    g.input(N.pastValue(i), DataType.FLOAT, kvShape);
  }
  return hidden;
}

function buildOutputs(g: GraphBuilder, h: string, w: CarryOnWeights): void {
  const delta = linearLayer(g, h, w.outProj, `${PREFIX}.out_proj`, F32_ACCURACY_LEVEL);
  g.op('Identity', [delta], undefined, N.delta);
  const gateLogit = linearLayer(g, h, w.gateProj, `${PREFIX}.gate_proj`, F32_ACCURACY_LEVEL);
  const bias = g.initializer(`${PREFIX}.gate_proj.bias`, w.gateBias);
  g.op('Sigmoid', [g.op('Add', [gateLogit, bias])], undefined, N.gate);
}

function declareOutputs(g: GraphBuilder, cfg: CarryOnConfig): void {
  const hiddenShape: Dim[] = [DIM_BATCH, DIM_SEQUENCE, cfg.hiddenSize];
  g.output(N.delta, DataType.FLOAT, hiddenShape);
  g.output(N.gate, DataType.FLOAT, hiddenShape);
  const kvShape: Dim[] = [DIM_BATCH, cfg.kvHeads, DIM_TOTAL_SEQUENCE, cfg.headDim];
  for (let i = 0; i < cfg.layers; i++) {
    g.output(N.presentKey(i), DataType.FLOAT, kvShape);
    g.output(N.presentValue(i), DataType.FLOAT, kvShape);
  }
}

function blockGeometry(cfg: CarryOnConfig): BlockGeometry {
  return {
    num_attention_heads: cfg.heads,
    num_key_value_heads: cfg.kvHeads,
    head_dim: cfg.headDim,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    max_position_embeddings: cfg.maxPositions,
  };
}

function blockNames(i: number): BlockNames {
  return {
    prefix: `${PREFIX}.layers.${i}`,
    pastKey: N.pastKey(i),
    pastValue: N.pastValue(i),
    presentKey: N.presentKey(i),
    presentValue: N.presentValue(i),
  };
}

// ---------------------------------------------------------------------------------------------
// Parameters

/** Columns of W_in: every hidden-state input's width, the primary's and each secondary base's. */
export function inputWidth(c: Pick<CarryOnConfig, 'hiddenSize' | 'inputLayers' | 'secondaries'>): number {
  return hiddenInputs(c, c.secondaries).reduce((n, input) => n + input.size, 0);
}

/** Trainable parameters: every weight above; the RoPE tables and graph constants are not counted. */
export function countCarryOnParameters(w: CarryOnWeights): number {
  const blockParams = w.blocks.reduce(
    (n, b) =>
      n +
      b.attnNorm.length +
      b.ffnNorm.length +
      [b.wq, b.wk, b.wv, b.wo, b.gate, b.up, b.down].reduce((m, x) => m + x.data.length, 0),
    0,
  );
  return (
    w.inProj.data.length +
    (w.tokEmbeddings?.length ?? 0) +
    blockParams +
    w.finalNorm.length +
    w.outProj.data.length +
    w.gateProj.data.length +
    w.gateBias.length
  );
}

// ---------------------------------------------------------------------------------------------
// Initialisation

export function initCarryOnWeights(opts: InitCarryOnOptions): CarryOnWeights {
  const config = resolveConfig(opts);
  const { hiddenSize: hid, width, headDim: hd, heads, kvHeads, intermediate } = config;
  const rng = new NormalRng(opts.seed ?? 0);
  const random = (rows: number, cols: number): F32Matrix => f32Matrix(rows, cols, rng.fill(rows * cols, INIT_STD));
  const ones = (n: number): Float32Array => new Float32Array(n).fill(1);

  // Draw order is part of the seed's meaning: in_proj, embeddings, then each block in field order.
  const inProj = random(width, inputWidth(config));
  const tokEmbeddings = config.readsTokenIds ? rng.fill(config.vocabSize * width, INIT_STD) : null;
  const blocks = Array.from({ length: config.layers }, (): CarryOnBlock => ({
    attnNorm: ones(width),
    wq: random(heads * hd, width),
    wk: random(kvHeads * hd, width),
    wv: random(kvHeads * hd, width),
    wo: random(width, heads * hd),
    ffnNorm: ones(width),
    gate: random(intermediate, width),
    up: random(intermediate, width),
    down: random(width, intermediate),
  }));
  return {
    config,
    inProj,
    tokEmbeddings,
    blocks,
    finalNorm: ones(width),
    outProj: f32Matrix(hid, width, new Float32Array(hid * width)),
    gateProj: f32Matrix(hid, width, new Float32Array(hid * width)),
    gateBias: new Float32Array(hid),
  };
}

function resolveConfig(opts: InitCarryOnOptions): CarryOnConfig {
  const { width, heads } = opts;
  if (!Number.isInteger(heads) || heads < 1 || width % heads !== 0) {
    throw new Error(`carry-on width (${width}) must be a positive multiple of heads (${heads})`);
  }
  const config: CarryOnConfig = {
    hiddenSize: opts.hiddenSize,
    vocabSize: opts.vocabSize,
    inputLayers: opts.inputLayers ?? ['final'],
    secondaries: opts.secondaries ?? [],
    readsTokenIds: opts.readsTokenIds ?? false,
    width,
    layers: opts.layers,
    heads,
    kvHeads: opts.kvHeads ?? heads,
    headDim: width / heads,
    intermediate: opts.intermediate ?? Math.ceil((8 * width) / 3 / 32) * 32,
    ropeTheta: opts.ropeTheta ?? DEFAULT_ROPE_THETA,
    rmsNormEps: opts.rmsNormEps ?? DEFAULT_RMS_NORM_EPS,
    maxPositions: opts.maxPositions ?? DEFAULT_MAX_POSITIONS,
  };
  validateConfig(config);
  return config;
}

function f32Matrix(rows: number, cols: number, data: Float32Array): F32Matrix {
  return { kind: 'f32', rows, cols, data };
}

/**
 * Seeded N(0, std²) samples: mulberry32 uniforms through Box-Muller. Not cryptographic and not
 * torch's generator; it only has to make `init --seed k` reproducible.
 */
class NormalRng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  fill(n: number, std: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      // 1 - u keeps the log argument in (0, 1], so no -Infinity.
      const radius = std * Math.sqrt(-2 * Math.log(1 - this.uniform()));
      const angle = 2 * Math.PI * this.uniform();
      out[i] = radius * Math.cos(angle);
      if (i + 1 < n) out[i + 1] = radius * Math.sin(angle);
    }
    return out;
  }

  /** mulberry32: a uniform in [0, 1). */
  private uniform(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }
}

// ---------------------------------------------------------------------------------------------
// Validation: fail at build time with a message naming the tensor, not inside ORT at load time.

function validateConfig(c: CarryOnConfig): void {
  const positive: Array<[string, number]> = [
    ['hiddenSize', c.hiddenSize],
    ['vocabSize', c.vocabSize],
    ['width', c.width],
    ['layers', c.layers],
    ['heads', c.heads],
    ['kvHeads', c.kvHeads],
    ['headDim', c.headDim],
    ['intermediate', c.intermediate],
    ['maxPositions', c.maxPositions],
  ];
  for (const [name, v] of positive) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`carry-on ${name} must be a positive integer, got ${v}`);
  }
  if (c.headDim % 2 !== 0) throw new Error(`carry-on head_dim must be even for RoPE, got ${c.headDim}`);
  if (c.heads % c.kvHeads !== 0) {
    throw new Error(`carry-on heads (${c.heads}) must be a multiple of kv heads (${c.kvHeads})`);
  }
  if (!(c.ropeTheta > 0) || !(c.rmsNormEps > 0)) throw new Error('carry-on rope_theta and rms_norm_eps must be > 0');
  validateInputLayers(c.inputLayers);
  for (const sec of c.secondaries) {
    if (!Number.isInteger(sec.hiddenSize) || sec.hiddenSize < 1) throw new Error(`carry-on secondary hiddenSize must be a positive integer, got ${sec.hiddenSize}`);
    validateInputLayers(sec.inputLayers);
  }
}

function validateInputLayers(layers: InputLayer[]): void {
  if (layers.length === 0) throw new Error('carry-on needs at least one input layer');
  for (const l of layers) {
    if (l !== 'final' && !(Number.isInteger(l) && l >= 0)) {
      throw new Error(`carry-on input layer ${l} is not 'final' or a block index`);
    }
  }
  if (new Set(layers).size !== layers.length) throw new Error(`carry-on input layers repeat: ${layers.join(',')}`);
}

function validateCarryOnWeights(w: CarryOnWeights): void {
  const c = w.config;
  validateConfig(c);
  const { hiddenSize: hid, width, headDim: hd, intermediate: inter } = c;
  if (w.blocks.length !== c.layers) throw new Error(`carry-on: expected ${c.layers} blocks, got ${w.blocks.length}`);
  checkMatrix('inProj', w.inProj, width, inputWidth(c));
  if (c.readsTokenIds !== (w.tokEmbeddings !== null)) {
    throw new Error(`carry-on: tokEmbeddings must be present exactly when readsTokenIds (${c.readsTokenIds})`);
  }
  if (w.tokEmbeddings) checkVector('tokEmbeddings', w.tokEmbeddings, c.vocabSize * width);
  w.blocks.forEach((b, i) => {
    const p = `blocks[${i}]`;
    checkVector(`${p}.attnNorm`, b.attnNorm, width);
    checkVector(`${p}.ffnNorm`, b.ffnNorm, width);
    checkMatrix(`${p}.wq`, b.wq, c.heads * hd, width);
    checkMatrix(`${p}.wk`, b.wk, c.kvHeads * hd, width);
    checkMatrix(`${p}.wv`, b.wv, c.kvHeads * hd, width);
    checkMatrix(`${p}.wo`, b.wo, width, c.heads * hd);
    checkMatrix(`${p}.gate`, b.gate, inter, width);
    checkMatrix(`${p}.up`, b.up, inter, width);
    checkMatrix(`${p}.down`, b.down, width, inter);
  });
  checkVector('finalNorm', w.finalNorm, width);
  checkMatrix('outProj', w.outProj, hid, width);
  checkMatrix('gateProj', w.gateProj, hid, width);
  checkVector('gateBias', w.gateBias, hid);
}

function checkVector(name: string, v: Float32Array, length: number): void {
  if (v.length !== length) throw new Error(`carry-on ${name}: expected ${length} values, got ${v.length}`);
}

function checkMatrix(name: string, m: F32Matrix, rows: number, cols: number): void {
  if (m.kind !== 'f32') throw new Error(`carry-on ${name}: only f32 matrices are supported`);
  if (m.rows !== rows || m.cols !== cols) {
    throw new Error(`carry-on ${name}: expected [${rows}, ${cols}], got [${m.rows}, ${m.cols}]`);
  }
  checkVector(name, m.data, rows * cols);
}
