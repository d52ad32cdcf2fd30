/**
 * The build child: one process per upload, started by ./carry-on-build.ts with a heap limit and
 * killed on timeout. It reads the uploaded weights file, checks it against the architecture
 * (header first, before any data is read; then every value finite), builds the ONNX graph with
 * the gateway's own builder and writes it fsynced. Whatever the upload does, it can only fail
 * this process. It exits when its parent goes away.
 */
import fs from 'node:fs';
import { buildCarryOnGraph, countCarryOnParameters } from '../carryon/graph.js';
import { sha256Hex } from '../carryon/manifest.js';
import { checkWeightsHeader, weightsFromTensors, WeightsError } from '../carryon/weights.js';
import { decodeSafetensors, readSafetensorsHeader, SafetensorsError } from '../formats/safetensors.js';
import type { BuildJob, BuildResult } from './carry-on-build-messages.js';

process.on('disconnect', () => process.exit(1));
process.once('message', (job: BuildJob) => {
  let result: BuildResult;
  try {
    result = build(job);
  } catch (err) {
    result = refusal(err);
  }
  process.send!(result, undefined, {}, () => process.exit(0));
});

function build(job: BuildJob): BuildResult {
  checkWeightsHeader(readSafetensorsHeader(job.weightsPath).tensors, job.config);
  const weights = weightsFromTensors(decodeSafetensors(fs.readFileSync(job.weightsPath)).tensors, job.config);
  const graph = buildCarryOnGraph(weights);
  const fd = fs.openSync(job.graphPath, 'wx', 0o644);
  try {
    fs.writeSync(fd, graph);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return { ok: true, sha256: sha256Hex(graph), bytes: graph.length, parameterCount: countCarryOnParameters(weights) };
}

function refusal(err: unknown): BuildResult {
  if (err instanceof WeightsError) return { ok: false, problem: err.message, param: err.tensor ? `weights.${err.tensor}` : 'weights' };
  // Structure errors of the file (truncated, bad header): the reader's own wording names the rule broken.
  if (err instanceof SafetensorsError) return { ok: false, problem: `the file is not valid safetensors: ${err.message}`, param: 'weights' };
  return { ok: false, problem: 'the weights could not be built into a carry-on', param: 'weights' };
}
