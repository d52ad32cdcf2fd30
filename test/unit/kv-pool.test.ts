import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvPool } from '../../src/engine/kv-pool.js';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { importModel, readCheckpoint } from '../../src/model/import.js';
import { buildBodyModel } from '../../src/model/onnx-graph.js';
import { TensorNames as T } from '../../src/model/tensor-names.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * The pooled body (reads a shared KV pool in place, returns only new keys/values) against the
 * reference body (growing KV tensors), on real stories260K weights: rows of different lengths in
 * one batch, prompts read in chunks, slots moved and the pool regrown in between.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-kvpool-'));
let runner: ModelRunner;
let reference: ort.InferenceSession;

beforeAll(async () => {
  await importModel(STORIES_BIN, tmp, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  runner = await ModelRunner.create({ modelDir: tmp, provider: 'cpu', threads: 1 });
  const { weights } = await readCheckpoint(STORIES_BIN, { tokenizerPath: STORIES_TOK });
  reference = await ort.InferenceSession.create(buildBodyModel(weights, { attention: 'reference' }), { intraOpNumThreads: 1 });
});
afterAll(async () => {
  await runner?.release();
  await reference?.release();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Hidden states of `ids` through the reference body, one token per call (its own KV concat path). */
async function referenceHidden(ids: number[]): Promise<Float32Array[]> {
  const { num_hidden_layers: L, num_key_value_heads: kv, head_dim: hd } = runner.config;
  const cache: Record<string, ort.Tensor> = {};
  for (let i = 0; i < L; i++) {
    cache[T.pastKey(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
    cache[T.pastValue(i)] = new ort.Tensor('float32', new Float32Array(0), [1, kv, 0, hd]);
  }
  const out: Float32Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const r = await reference.run({
      ...cache,
      [T.inputIds]: new ort.Tensor('int64', BigInt64Array.from([BigInt(ids[t])]), [1, 1]),
      [T.positionIds]: new ort.Tensor('int64', BigInt64Array.from([BigInt(t)]), [1, 1]),
      [T.attentionMask]: new ort.Tensor('int64', new BigInt64Array(t + 1).fill(1n), [1, t + 1]),
    });
    for (let i = 0; i < L; i++) {
      cache[T.pastKey(i)] = r[T.presentKey(i)];
      cache[T.pastValue(i)] = r[T.presentValue(i)];
    }
    out.push((r[T.hiddenStates].data as Float32Array).slice());
  }
  return out;
}

function maxDiff(a: Float32Array[], b: Float32Array[]): number {
  let m = 0;
  a.forEach((row, t) => row.forEach((v, i) => (m = Math.max(m, Math.abs(v - b[t][i])))));
  return m;
}

describe('KV pool and the pooled body', () => {
  it('matches the reference body for ragged rows decoded together, across chunked prefill, slot moves and growth', async () => {
    const H = runner.config.hidden_size;
    const prompts = [[1, 403, 407, 261, 378, 290, 11], [1, 300], [1, 88, 99, 100, 101]];
    const decode = [5, 6, 7, 8, 9, 10];
    const pool = runner.newPool();
    pool.ensure(4, 64);
    const got: Float32Array[][] = [[], [], [], []];
    const rows = (h: Float32Array, n: number) => Array.from({ length: n }, (_, t) => h.slice(t * H, (t + 1) * H));
    // Slots 0..2 read their prompts (slot 0 in chunks of 3, 3, 1); slot 3 holds a decoy that leaves.
    for (const [slot, p] of prompts.entries()) {
      for (let i = 0; i < p.length; i += 3) got[slot].push(...rows((await runner.forwardRows(pool, slot, 1, p.slice(i, i + 3))).hidden, Math.min(3, p.length - i)));
    }
    await runner.forwardRows(pool, 3, 1, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for (const [step, tok] of decode.entries()) {
      if (step === 2) pool.ensure(4, 128); // regrowth keeps every row
      if (step === 3) {
        pool.swap(0, 2); // slot order changes as sequences come and go
        [got[0], got[2]] = [got[2], got[0]];
        [prompts[0], prompts[2]] = [prompts[2], prompts[0]];
      }
      const h = (await runner.forwardRows(pool, 0, 3, [tok, tok, tok])).hidden;
      rows(h, 3).forEach((r, b) => got[b].push(r));
    }
    for (let b = 0; b < 3; b++) {
      const want = await referenceHidden([...prompts[b], ...decode]);
      expect(pool.length(b)).toBe(want.length);
      expect(maxDiff(got[b], want), `row ${b}`).toBeLessThan(5e-5);
    }
  });

  it('reads a short row beside a long one from a past of its own size, with the same results bit for bit', async () => {
    const H = runner.config.hidden_size;
    const prompt = [1, 403, 407, 261, 378, 290, 11, 42, 43];
    const read = async (capacity: number, long: number): Promise<Float32Array[]> => {
      const pool = runner.newPool();
      pool.ensure(2, capacity);
      if (long > 0) await runner.forwardRows(pool, 1, 1, Array.from({ length: long }, (_, i) => 1 + (i % 400)));
      const out: Float32Array[] = [];
      for (let i = 0; i < prompt.length; i += 3) out.push((await runner.forwardRows(pool, 0, 1, prompt.slice(i, i + 3))).hidden.slice());
      // A decode step of both rows together reads the pool in place.
      const both = (await runner.forwardRows(pool, 0, 2, [5, 5])).hidden;
      out.push(both.slice(0, H));
      return out;
    };
    // At capacity 64 every chunk reads the pool in place; at 512 the short row's later chunks get a
    // compact past and its first one none. The long row must not change what the short one sees.
    const inPlace = await read(64, 40);
    const compact = await read(512, 300);
    expect(compact.length).toBe(inPlace.length);
    compact.forEach((h, i) => expect(Array.from(h), `call ${i}`).toEqual(Array.from(inPlace[i])));
    const want = await referenceHidden([...prompt, 5]);
    expect(maxDiff([compact[compact.length - 1]], [want[want.length - 1]])).toBeLessThan(5e-5);
  });

  it('moves, swaps and regrows slots without touching other rows', () => {
    const pool = new KvPool({ layers: 2, kvHeads: 2, headDim: 4 });
    pool.ensure(3, 8);
    const fill = (slot: number, n: number, base: number) => {
      const k = Float32Array.from({ length: 2 * n * 4 }, (_, i) => base + i);
      for (let layer = 0; layer < 2; layer++) pool.append(layer, slot, 1, n, k, k.map((x) => -x));
      pool.setLength(slot, n);
    };
    fill(0, 3, 100);
    fill(1, 5, 200);
    fill(2, 2, 300);
    const snapshot = (slot: number) => {
      const feeds = pool.bind(slot, 1);
      const k = feeds[T.pastKey(1)].data as Float32Array;
      const out: number[] = [];
      for (let h = 0; h < 2; h++) out.push(...k.subarray(h * pool.capacity * 4, h * pool.capacity * 4 + pool.length(slot) * 4));
      return out;
    };
    const [a, b, c] = [snapshot(0), snapshot(1), snapshot(2)];
    pool.ensure(5, 16);
    expect([snapshot(0), snapshot(1), snapshot(2)]).toEqual([a, b, c]);
    pool.swap(0, 2);
    expect([snapshot(0), snapshot(2), pool.length(0), pool.length(2)]).toEqual([c, a, 2, 3]);
    pool.move(1, 0);
    expect([snapshot(0), pool.length(0), pool.length(1)]).toEqual([b, 5, 0]);
    expect(() => fill(0, 12, 0)).toThrow(/holds 16 positions; 17 needed/);
  });
});
