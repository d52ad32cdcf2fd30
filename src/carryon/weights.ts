/**
 * A carry-on's weights as one safetensors file: what tenants upload and trainers export. The gateway
 * builds the ONNX graph from them itself (./graph.ts), so an upload is data checked against a known
 * architecture, never a program. Layout is PyTorch's ([out, in] matrices), F32, tensor names below.
 */
import type { DecodedTensor, HeaderEntry, TensorInput } from '../formats/safetensors.js';
import { inputWidth, type CarryOnBlock, type CarryOnConfig, type CarryOnWeights, type F32Matrix } from './graph.js';
import { secondaryBasesOf, type CarryOnManifest } from './manifest.js';

/** Safetensors names of the weights, PyTorch layout: matrices [out, in]. */
export const WEIGHT_NAMES = {
  inProj: 'carry_on.in_proj.weight',
  embedTokens: 'carry_on.embed_tokens.weight',
  finalNorm: 'carry_on.norm.weight',
  outProj: 'carry_on.out_proj.weight',
  gateProj: 'carry_on.gate_proj.weight',
  gateBias: 'carry_on.gate_proj.bias',
  block: (i: number) => ({
    attnNorm: `carry_on.layers.${i}.input_layernorm.weight`,
    wq: `carry_on.layers.${i}.self_attn.q_proj.weight`,
    wk: `carry_on.layers.${i}.self_attn.k_proj.weight`,
    wv: `carry_on.layers.${i}.self_attn.v_proj.weight`,
    wo: `carry_on.layers.${i}.self_attn.o_proj.weight`,
    ffnNorm: `carry_on.layers.${i}.post_attention_layernorm.weight`,
    gate: `carry_on.layers.${i}.mlp.gate_proj.weight`,
    up: `carry_on.layers.${i}.mlp.up_proj.weight`,
    down: `carry_on.layers.${i}.mlp.down_proj.weight`,
  }),
} as const;

/** A weights file that does not fit its architecture; `tensor` names the offending tensor, if one. */
export class WeightsError extends Error {
  override name = 'WeightsError';
  constructor(
    message: string,
    readonly tensor: string | null = null,
  ) {
    super(message);
  }
}

/** Every tensor the architecture has, with its exact shape, in file order. The one source of truth. */
export function expectedWeightShapes(c: CarryOnConfig): Map<string, number[]> {
  const { hiddenSize: H, width: W, headDim: hd, intermediate: I } = c;
  const shapes = new Map<string, number[]>();
  shapes.set(WEIGHT_NAMES.inProj, [W, inputWidth(c)]);
  if (c.readsTokenIds) shapes.set(WEIGHT_NAMES.embedTokens, [c.vocabSize, W]);
  for (let i = 0; i < c.layers; i++) {
    const n = WEIGHT_NAMES.block(i);
    shapes.set(n.attnNorm, [W]);
    shapes.set(n.wq, [c.heads * hd, W]);
    shapes.set(n.wk, [c.kvHeads * hd, W]);
    shapes.set(n.wv, [c.kvHeads * hd, W]);
    shapes.set(n.wo, [W, c.heads * hd]);
    shapes.set(n.ffnNorm, [W]);
    shapes.set(n.gate, [I, W]);
    shapes.set(n.up, [I, W]);
    shapes.set(n.down, [W, I]);
  }
  shapes.set(WEIGHT_NAMES.finalNorm, [W]);
  shapes.set(WEIGHT_NAMES.outProj, [H, W]);
  shapes.set(WEIGHT_NAMES.gateProj, [H, W]);
  shapes.set(WEIGHT_NAMES.gateBias, [H]);
  return shapes;
}

/** Parameters of the architecture: known before a single weight is read, so sizes are bounded up front. */
export function parameterCountOf(c: CarryOnConfig): number {
  let n = 0;
  for (const shape of expectedWeightShapes(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * Checks a weights file's header against the architecture before its data is read: exactly the
 * expected tensor names, F32, exact shapes. Messages name the tensor and the rule, never data.
 */
export function checkWeightsHeader(tensors: ReadonlyMap<string, Pick<HeaderEntry, 'dtype' | 'shape'>>, c: CarryOnConfig): void {
  const expected = expectedWeightShapes(c);
  for (const [name, entry] of tensors) {
    const shape = expected.get(name);
    if (!shape) throw new WeightsError(`'${clip(name)}' is not a tensor of this architecture`, clip(name));
    if (entry.dtype !== 'F32') throw new WeightsError(`'${name}' must be F32`, name);
    if (entry.shape.join(',') !== shape.join(',')) throw new WeightsError(`'${name}' must have shape [${shape.join(', ')}]`, name);
  }
  for (const [name, shape] of expected) {
    if (!tensors.has(name)) throw new WeightsError(`missing tensor '${name}' [${shape.join(', ')}]`, name);
  }
}

/**
 * Fills CarryOnWeights from decoded safetensors. Every expected tensor must be there with its exact
 * shape and F32, finite; a tensor nobody asked for is an error too (a misspelt name would otherwise
 * be silently replaced by nothing).
 */
export function weightsFromTensors(tensors: Map<string, DecodedTensor>, config: CarryOnConfig): CarryOnWeights {
  const expected = expectedWeightShapes(config);
  checkWeightsHeader(tensors, config);
  const take = (name: string): Float32Array => {
    // A copy: the decoded view points into the file's buffer, possibly unaligned or shared.
    const data = Float32Array.from(tensors.get(name)!.data as Float32Array);
    if (!data.every(Number.isFinite)) throw new WeightsError(`'${name}' has values that are not finite (NaN or infinity)`, name);
    return data;
  };
  const matrix = (name: string): F32Matrix => {
    const [rows, cols] = expected.get(name)!;
    return { kind: 'f32', rows, cols, data: take(name) };
  };
  const blocks = Array.from({ length: config.layers }, (_, i): CarryOnBlock => {
    const n = WEIGHT_NAMES.block(i);
    return {
      attnNorm: take(n.attnNorm),
      wq: matrix(n.wq),
      wk: matrix(n.wk),
      wv: matrix(n.wv),
      wo: matrix(n.wo),
      ffnNorm: take(n.ffnNorm),
      gate: matrix(n.gate),
      up: matrix(n.up),
      down: matrix(n.down),
    };
  });
  return {
    config,
    inProj: matrix(WEIGHT_NAMES.inProj),
    tokEmbeddings: config.readsTokenIds ? take(WEIGHT_NAMES.embedTokens) : null,
    blocks,
    finalNorm: take(WEIGHT_NAMES.finalNorm),
    outProj: matrix(WEIGHT_NAMES.outProj),
    gateProj: matrix(WEIGHT_NAMES.gateProj),
    gateBias: take(WEIGHT_NAMES.gateBias),
  };
}

/** The weights as safetensors tensors (for a package's weights.safetensors). */
export function weightsToTensors(w: CarryOnWeights): Record<string, TensorInput> {
  const shapes = expectedWeightShapes(w.config);
  const data = new Map<string, Float32Array>([
    [WEIGHT_NAMES.inProj, w.inProj.data],
    [WEIGHT_NAMES.finalNorm, w.finalNorm],
    [WEIGHT_NAMES.outProj, w.outProj.data],
    [WEIGHT_NAMES.gateProj, w.gateProj.data],
    [WEIGHT_NAMES.gateBias, w.gateBias],
  ]);
  if (w.tokEmbeddings) data.set(WEIGHT_NAMES.embedTokens, w.tokEmbeddings);
  w.blocks.forEach((b, i) => {
    const n = WEIGHT_NAMES.block(i);
    for (const [name, value] of [
      [n.attnNorm, b.attnNorm],
      [n.wq, b.wq.data],
      [n.wk, b.wk.data],
      [n.wv, b.wv.data],
      [n.wo, b.wo.data],
      [n.ffnNorm, b.ffnNorm],
      [n.gate, b.gate.data],
      [n.up, b.up.data],
      [n.down, b.down.data],
    ] as const) {
      data.set(name, value);
    }
  });
  const out: Record<string, TensorInput> = {};
  for (const [name, shape] of shapes) out[name] = { dtype: 'F32', shape, data: data.get(name)! };
  return out;
}

/** The builder's config for a manifest's architecture over a base of `vocabSize` tokens. */
export function configFromManifest(
  m: Pick<CarryOnManifest, 'hidden_size' | 'input_layers' | 'secondary_bases' | 'reads_token_ids' | 'architecture'>,
  vocabSize: number,
): CarryOnConfig {
  const a = m.architecture;
  return {
    hiddenSize: m.hidden_size,
    vocabSize,
    inputLayers: m.input_layers,
    secondaries: secondaryBasesOf(m).map((b) => ({ hiddenSize: b.hidden_size, inputLayers: b.input_layers })),
    readsTokenIds: m.reads_token_ids,
    width: a.width,
    layers: a.layers,
    heads: a.heads,
    kvHeads: a.kv_heads,
    headDim: a.head_dim,
    intermediate: a.intermediate,
    ropeTheta: a.rope_theta,
    rmsNormEps: a.rms_norm_eps,
    maxPositions: a.max_positions,
  };
}

function clip(s: string): string {
  return s.length > 100 ? `${s.slice(0, 100)}…` : s;
}
