/**
 * A tiny graph-builder on top of onnx-proto (protobufjs classes for the ONNX schema).
 *
 * It exists so the model code reads like a list of operators, and so every place where the
 * protobuf typing is awkward (int64 as number|Long, enum values, raw little-endian tensor bytes)
 * is handled once, here.
 */
import onnxProto from 'onnx-proto';
import type { onnx as proto } from 'onnx-proto';

// onnx-proto is CommonJS that assigns `module.exports = root`; Node's ESM loader cannot see
// `onnx` as a named export, so it has to come through the default import.
const { onnx } = onnxProto;

export const DataType = {
  FLOAT: onnx.TensorProto.DataType.FLOAT,
  UINT8: onnx.TensorProto.DataType.UINT8,
  INT32: onnx.TensorProto.DataType.INT32,
  INT64: onnx.TensorProto.DataType.INT64,
  BOOL: onnx.TensorProto.DataType.BOOL,
} as const;
export type DataType = (typeof DataType)[keyof typeof DataType];

/** A dimension is either fixed or a symbolic name shared by inputs/outputs (e.g. 'batch'). */
export type Dim = number | string;

/** Protobuf's hard limit: ORT refuses to parse a single ModelProto of 2 GiB or more. */
const MAX_PROTOBUF_BYTES = 2 ** 31 - 1;

const AttributeType = onnx.AttributeProto.AttributeType;

/**
 * Attribute values are tagged because ONNX distinguishes INT from FLOAT even when the JS value
 * is integral (an `alpha` of 1.0 must still be a FLOAT attribute).
 */
export type AttributeValue =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'floats'; value: number[] }
  | { kind: 'string'; value: string };

export const attr = {
  int: (value: number): AttributeValue => ({ kind: 'int', value }),
  float: (value: number): AttributeValue => ({ kind: 'float', value }),
  ints: (value: number[]): AttributeValue => ({ kind: 'ints', value }),
  floats: (value: number[]): AttributeValue => ({ kind: 'floats', value }),
  string: (value: string): AttributeValue => ({ kind: 'string', value }),
};

export interface NodeOptions {
  attrs?: Record<string, AttributeValue>;
  /** Operator domain; '' (the default) is ai.onnx, 'com.microsoft' the ORT contrib ops. */
  domain?: string;
  /** Explicit output names; otherwise fresh names are generated. */
  outputs?: string[];
  /** Number of fresh outputs to generate when `outputs` is not given (default 1). */
  numOutputs?: number;
}

export type TensorData = Float32Array | BigInt64Array | Uint8Array;

export interface OpsetImport {
  domain: string;
  version: number;
}

export interface ModelOptions {
  opsets: OpsetImport[];
  irVersion: number;
  producerName?: string;
  producerVersion?: string;
  docString?: string;
}

function toAttributeProto(name: string, value: AttributeValue): proto.IAttributeProto {
  switch (value.kind) {
    case 'int':
      return { name, type: AttributeType.INT, i: value.value };
    case 'float':
      return { name, type: AttributeType.FLOAT, f: value.value };
    case 'ints':
      return { name, type: AttributeType.INTS, ints: value.value };
    case 'floats':
      return { name, type: AttributeType.FLOATS, floats: value.value };
    case 'string':
      return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value.value) };
  }
}

function dataTypeOf(data: TensorData): DataType {
  if (data instanceof Float32Array) return DataType.FLOAT;
  if (data instanceof BigInt64Array) return DataType.INT64;
  return DataType.UINT8;
}

/** Raw little-endian bytes of a typed array, without copying (every supported host is LE). */
function bytesOf(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function valueInfo(name: string, elemType: DataType, shape: Dim[]): proto.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export class GraphBuilder {
  private readonly nodes: proto.INodeProto[] = [];
  private readonly initializers: proto.ITensorProto[] = [];
  private readonly inputs: proto.IValueInfoProto[] = [];
  private readonly outputs: proto.IValueInfoProto[] = [];
  private readonly usedNames = new Set<string>();
  private readonly constCache = new Map<string, string>();
  private initializerBytes = 0;
  private counter = 0;
  /** Prefix for generated names, so a dumped graph shows which layer a tensor belongs to. */
  scope = '';

  constructor(private readonly name: string) {}

  /** A fresh tensor name under the current scope. */
  fresh(hint: string): string {
    const base = this.scope ? `${this.scope}/${hint}` : hint;
    let name = base;
    while (this.usedNames.has(name)) name = `${base}_${++this.counter}`;
    this.usedNames.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.usedNames.has(name)) throw new Error(`ONNX graph '${this.name}': duplicate tensor name '${name}'`);
    this.usedNames.add(name);
    return name;
  }

  input(name: string, elemType: DataType, shape: Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), elemType, shape));
    return name;
  }

  /** Declares `name` (which some node must produce) as a graph output. */
  output(name: string, elemType: DataType, shape: Dim[]): string {
    this.outputs.push(valueInfo(name, elemType, shape));
    return name;
  }

  /** Adds a constant tensor stored in the model file. `dims` defaults to 1-D. */
  initializer(name: string, data: TensorData, dims: number[] = [data.length]): string {
    return this.addInitializer(this.claim(name), data, dims);
  }

  private addInitializer(name: string, data: TensorData, dims: number[]): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) {
      throw new Error(`initializer '${name}': dims [${dims}] hold ${count} values but data has ${data.length}`);
    }
    this.initializers.push({
      name,
      dataType: dataTypeOf(data),
      dims,
      rawData: bytesOf(data),
    });
    this.initializerBytes += data.byteLength;
    return name;
  }

  /** A small f32 constant, deduplicated so repeated scalars (eps, 1.0) appear once. */
  constF32(values: number[], dims: number[] = [values.length]): string {
    return this.cachedConst('f32', values, dims, () => Float32Array.from(values));
  }

  /** A small int64 constant (shapes, axes, indices), deduplicated like constF32. */
  constI64(values: number[], dims: number[] = [values.length]): string {
    return this.cachedConst('i64', values, dims, () => BigInt64Array.from(values, (v) => BigInt(v)));
  }

  private cachedConst(tag: string, values: number[], dims: number[], make: () => TensorData): string {
    const key = `${tag}:${dims.join('x')}:${values.join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    // Constants are shared across layers, so they live outside any scope.
    const name = this.claim(`const_${tag}_${this.constCache.size}`);
    this.addInitializer(name, make(), dims);
    this.constCache.set(key, name);
    return name;
  }

  /** Adds a node and returns its output names. An empty string input means "absent optional". */
  node(opType: string, inputs: string[], options: NodeOptions = {}): string[] {
    const outputs =
      options.outputs?.map((n) => this.claim(n)) ??
      Array.from({ length: options.numOutputs ?? 1 }, (_, i) =>
        this.fresh(options.numOutputs && options.numOutputs > 1 ? `${opType}_out${i}` : opType),
      );
    this.nodes.push({
      name: this.fresh(`${opType}_node`),
      opType,
      domain: options.domain ?? '',
      input: inputs,
      output: outputs,
      attribute: Object.entries(options.attrs ?? {}).map(([k, v]) => toAttributeProto(k, v)),
    });
    return outputs;
  }

  /** Single-output shorthand for node(). */
  op(opType: string, inputs: string[], attrs?: Record<string, AttributeValue>, output?: string): string {
    return this.node(opType, inputs, { attrs, outputs: output === undefined ? undefined : [output] })[0];
  }

  /** Bytes of weights added so far: lets callers fail early instead of at serialization. */
  get weightBytes(): number {
    return this.initializerBytes;
  }

  toModel(options: ModelOptions): proto.IModelProto {
    return {
      irVersion: options.irVersion,
      opsetImport: options.opsets.map((o) => ({ domain: o.domain, version: o.version })),
      producerName: options.producerName ?? 'carry-on-gateway',
      producerVersion: options.producerVersion ?? '',
      docString: options.docString ?? '',
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    };
  }

  /** Builds and serializes in one go; refuses models protobuf parsers cannot read back. */
  serialize(options: ModelOptions): Uint8Array {
    if (this.initializerBytes >= MAX_PROTOBUF_BYTES) {
      throw new Error(
        `ONNX graph '${this.name}' holds ${this.initializerBytes} bytes of weights; a single ModelProto ` +
          'must stay under 2 GiB (external-data files are not supported by this builder)',
      );
    }
    return serializeModel(this.toModel(options));
  }
}

export function serializeModel(model: proto.IModelProto): Uint8Array {
  return onnx.ModelProto.encode(model).finish();
}

/** Parses a serialized model back (tests and debugging: inspect names, ops, shapes). */
export function parseModel(bytes: Uint8Array): proto.ModelProto {
  return onnx.ModelProto.decode(bytes);
}

export interface ModelSummary {
  inputs: string[];
  outputs: string[];
  opsets: OpsetImport[];
  /** Node count per `domain:opType` ('' domain shown as 'ai.onnx'). */
  opCounts: Record<string, number>;
  initializerBytes: number;
}

/** The parts of a serialized model a caller usually wants, without protobuf's optional fields. */
export function summarizeModel(bytes: Uint8Array): ModelSummary {
  const model = parseModel(bytes);
  const graph = model.graph ?? {};
  const opCounts: Record<string, number> = {};
  for (const n of graph.node ?? []) {
    const key = `${n.domain || 'ai.onnx'}:${n.opType ?? ''}`;
    opCounts[key] = (opCounts[key] ?? 0) + 1;
  }
  return {
    inputs: (graph.input ?? []).map((v) => v.name ?? ''),
    outputs: (graph.output ?? []).map((v) => v.name ?? ''),
    opsets: model.opsetImport.map((o) => ({ domain: o.domain ?? '', version: Number(o.version ?? 0) })),
    opCounts,
    initializerBytes: (graph.initializer ?? []).reduce((n, t) => n + (t.rawData?.length ?? 0), 0),
  };
}
