import fs from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { CarryOnTensorNames as N } from '../carryon/tensor-names.js';
import { parseModel } from '../formats/onnx-builder.js';
import { expectedInterface, externalDataReferences, interfaceProblems, type TensorSpec } from '../carryon/graph-contract.js';
import type { GraphCheckInput, GraphCheckResult } from './graph-check-messages.js';

/**
 * One-shot worker: parses an uploaded carry-on graph, checks it against the contract, then loads
 * it in ONNX Runtime and runs one token through it. In a worker because parsing a large protobuf
 * and creating a session block their thread for as long as they take.
 */
if (!parentPort) throw new Error('graph check must run in a worker thread');
const port = parentPort;

check(workerData as GraphCheckInput).then(
  (result) => port.postMessage(result satisfies GraphCheckResult),
  (err: unknown) => port.postMessage({ ok: false, problem: `the graph check failed: ${(err as Error).message}` } satisfies GraphCheckResult),
);

async function check(input: GraphCheckInput): Promise<GraphCheckResult> {
  const bytes = await fs.readFile(input.graphPath);
  let model;
  try {
    model = parseModel(bytes);
  } catch (err) {
    return { ok: false, problem: `the graph is not an ONNX model (${(err as Error).message})` };
  }
  const external = externalDataReferences(model);
  if (external.length > 0) {
    return { ok: false, problem: `the graph must be self-contained, but it references external data: ${external.slice(0, 5).join('; ')}` };
  }
  const expected = expectedInterface(input.manifest);
  const problems = interfaceProblems(model, expected);
  if (problems.length > 0) {
    return { ok: false, problem: `the graph's inputs and outputs do not match the carry-on contract for its manifest: ${problems.slice(0, 8).join('; ')}` };
  }
  return testRun(bytes, input, expected.outputs);
}

/** Creates a session and runs one token with an empty cache, as the engine's first step would. */
async function testRun(bytes: Uint8Array, input: GraphCheckInput, outputs: TensorSpec[]): Promise<GraphCheckResult> {
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['cpu'],
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      // Failures come back as exceptions and reach the uploader; ORT's own log would only duplicate them.
      logSeverityLevel: 4,
    });
  } catch (err) {
    return { ok: false, problem: `ONNX Runtime cannot load the graph: ${(err as Error).message}` };
  }
  try {
    const result = await session.run(feeds(input), { logSeverityLevel: 4 });
    for (const spec of outputs) {
      const t = result[spec.name];
      // Every dynamic axis is 1 here: batch 1, one token, total sequence 0 + 1.
      const want = spec.dims.map((d) => d ?? 1);
      if (!t || t.type !== 'float32') return { ok: false, problem: `the test run produced no float32 '${spec.name}'` };
      if (t.dims.join(',') !== want.join(',')) {
        return { ok: false, problem: `the test run produced '${spec.name}' of shape [${t.dims.join(', ')}], expected [${want.join(', ')}]` };
      }
      const data = t.data as Float32Array;
      if (!data.every(Number.isFinite)) return { ok: false, problem: `the test run produced non-finite values in '${spec.name}'` };
      if (spec.name === N.gate && !data.every((g) => g >= 0 && g <= 1)) return { ok: false, problem: "the test run produced 'gate' values outside [0, 1]" };
    }
    return { ok: true };
  } catch (err) {
    return { ok: false, problem: `the graph failed its test run on one token: ${(err as Error).message}` };
  } finally {
    await session.release();
  }
}

function feeds({ manifest: m, vocabSize }: GraphCheckInput): Record<string, ort.Tensor> {
  const H = m.hidden_size;
  const { kv_heads: kv, head_dim: hd, layers } = m.architecture;
  const ids = (v: number) => new ort.Tensor('int64', BigInt64Array.from([BigInt(v)]), [1, 1]);
  // Deterministic, non-constant activations: a constant vector would hide a broken normalisation.
  const hidden = () => new ort.Tensor('float32', Float32Array.from({ length: H }, (_, i) => Math.sin(i + 1)), [1, 1, H]);
  const out: Record<string, ort.Tensor> = {};
  for (const layer of m.input_layers) out[N.input(layer)] = hidden();
  if (m.reads_token_ids) out[N.inputIds] = ids(vocabSize - 1);
  out[N.positionIds] = ids(0);
  out[N.attentionMask] = ids(1);
  for (let i = 0; i < layers; i++) {
    out[N.pastKey(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
    out[N.pastValue(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
  }
  return out;
}
