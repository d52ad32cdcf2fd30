/**
 * The carry-on graph contract (src/carryon/tensor-names.ts) as data, and the static checks of a
 * graph against it. Pure functions over the parsed ModelProto: `carryon carry-on verify`
 * (./build-from-weights.ts) checks a package's model.onnx with them. Uploads carry no graph (the
 * gateway builds it from the uploaded weights, ./weights.ts), so no upload goes through them.
 */
import type { onnx as proto } from 'onnx-proto';
import type { CarryOnManifest } from './manifest.js';
import { secondaryBasesOf } from './manifest.js';
import { hiddenInputs, CarryOnTensorNames as N } from './tensor-names.js';
import { DataType } from '../formats/onnx-builder.js';

export type ElemType = 'float32' | 'int64';

export interface TensorSpec {
  name: string;
  type: ElemType;
  /** A number: that exact size. null: a dynamic axis (batch, sequence), which must stay symbolic. */
  dims: Array<number | null>;
}

export interface GraphInterface {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

const ELEM_TYPES: Record<ElemType, number> = { float32: DataType.FLOAT, int64: DataType.INT64 };

/** The inputs and outputs a graph described by `m` must have, in the contract's order. */
export function expectedInterface(m: CarryOnManifest): GraphInterface {
  const H = m.hidden_size;
  const { kv_heads: kv, head_dim: hd, layers } = m.architecture;
  const hidden = (name: string): TensorSpec => ({ name, type: 'float32', dims: [null, null, H] });
  const ids = (name: string): TensorSpec => ({ name, type: 'int64', dims: [null, null] });
  const kvCache = (name: string): TensorSpec => ({ name, type: 'float32', dims: [null, kv, null, hd] });
  const blocks = Array.from({ length: layers }, (_, i) => i);
  return {
    inputs: [
      ...hiddenInputs(
        { hiddenSize: H, inputLayers: m.input_layers },
        secondaryBasesOf(m).map((b) => ({ hiddenSize: b.hidden_size, inputLayers: b.input_layers })),
      ).map(({ name, size }): TensorSpec => ({ name, type: 'float32', dims: [null, null, size] })),
      ...(m.reads_token_ids ? [ids(N.inputIds)] : []),
      ids(N.positionIds),
      ids(N.attentionMask),
      ...blocks.flatMap((i) => [kvCache(N.pastKey(i)), kvCache(N.pastValue(i))]),
    ],
    outputs: [
      hidden(N.delta),
      hidden(N.gate),
      ...blocks.flatMap((i) => [kvCache(N.presentKey(i)), kvCache(N.presentValue(i))]),
    ],
  };
}

/** onnx.TensorProto.DataLocation.EXTERNAL; the onnx-proto import is type-only, so the value is restated. */
const EXTERNAL_DATA: proto.TensorProto.DataLocation = 1;

/**
 * Every tensor that points at external data, by name. A carry-on must be one self-contained
 * file: ONNX Runtime resolves external-data paths relative to the model, so a graph from elsewhere
 * could otherwise make its reader read any file it can reach. (The gateway's builder never writes
 * external data, and uploads carry no graph.)
 */
export function externalDataReferences(model: proto.IModelProto): string[] {
  const found: string[] = [];
  const tensor = (t: proto.ITensorProto | null | undefined, where: string) => {
    if (!t) return;
    const external = t.dataLocation === EXTERNAL_DATA || (t.externalData?.length ?? 0) > 0;
    if (external) found.push(`${where}${t.name ? ` '${t.name}'` : ''}`);
  };
  const sparse = (s: proto.ISparseTensorProto | null | undefined, where: string) => {
    tensor(s?.values, `${where} values`);
    tensor(s?.indices, `${where} indices`);
  };
  const nodes = (list: proto.INodeProto[] | null | undefined, where: string) => {
    for (const n of list ?? []) {
      for (const a of n.attribute ?? []) {
        const at = `${where} node '${n.name || n.opType || '?'}' attribute '${a.name ?? '?'}'`;
        tensor(a.t, at);
        for (const t of a.tensors ?? []) tensor(t, at);
        sparse(a.sparseTensor, at);
        for (const s of a.sparseTensors ?? []) sparse(s, at);
        if (a.g) graph(a.g, `${at} subgraph`);
        for (const g of a.graphs ?? []) graph(g, `${at} subgraph`);
      }
    }
  };
  const graph = (g: proto.IGraphProto, where: string) => {
    for (const t of g.initializer ?? []) tensor(t, `${where} initializer`);
    for (const s of g.sparseInitializer ?? []) sparse(s, `${where} sparse initializer`);
    nodes(g.node, where);
  };
  if (model.graph) graph(model.graph, 'graph');
  for (const f of model.functions ?? []) nodes(f.node, `function '${f.name ?? '?'}'`);
  return found;
}

/** Every way the graph's declared inputs/outputs differ from `expected`; empty when they match. */
export function interfaceProblems(model: proto.IModelProto, expected: GraphInterface): string[] {
  const graph = model.graph;
  if (!graph) return ['the model has no graph'];
  // Initializers may be listed as graph inputs (older exporters); they are not fed, so not part of the interface.
  const initializers = new Set((graph.initializer ?? []).map((t) => t.name));
  const inputs = (graph.input ?? []).filter((v) => !initializers.has(v.name ?? ''));
  return [...sideProblems('input', inputs, expected.inputs), ...sideProblems('output', graph.output ?? [], expected.outputs)];
}

function sideProblems(side: 'input' | 'output', actual: proto.IValueInfoProto[], expected: TensorSpec[]): string[] {
  const problems: string[] = [];
  const byName = new Map(actual.map((v) => [v.name ?? '', v]));
  for (const spec of expected) {
    const v = byName.get(spec.name);
    if (!v) problems.push(`missing ${side} '${spec.name}'`);
    else problems.push(...tensorProblems(side, v, spec));
  }
  const wanted = new Set(expected.map((s) => s.name));
  for (const v of actual) if (!wanted.has(v.name ?? '')) problems.push(`unexpected ${side} '${v.name ?? ''}'`);
  return problems;
}

function tensorProblems(side: string, v: proto.IValueInfoProto, spec: TensorSpec): string[] {
  const what = `${side} '${spec.name}'`;
  const t = v.type?.tensorType;
  if (!t) return [`${what} must be a tensor`];
  if (t.elemType !== ELEM_TYPES[spec.type]) return [`${what} must be ${spec.type} (ONNX type ${ELEM_TYPES[spec.type]}), not ONNX type ${t.elemType ?? '?'}`];
  // An undeclared shape is legal ONNX; the test run checks the real output shapes.
  if (!t.shape) return side === 'input' ? [`${what} must declare its shape (rank ${spec.dims.length})`] : [];
  const dims = t.shape.dim ?? [];
  if (dims.length !== spec.dims.length) return [`${what} must have rank ${spec.dims.length}, not ${dims.length}`];
  const problems: string[] = [];
  spec.dims.forEach((want, axis) => {
    const d = dims[axis];
    const fixed = d.dimValue !== null && d.dimValue !== undefined ? Number(d.dimValue) : null;
    if (want === null && fixed !== null) problems.push(`${what} axis ${axis} must be dynamic (batch/sequence), not fixed at ${fixed}`);
    if (want !== null && fixed !== null && fixed !== want) problems.push(`${what} axis ${axis} must be ${want}, not ${fixed}`);
  });
  return problems;
}
