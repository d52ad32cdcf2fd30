import * as ort from 'onnxruntime-node';
import type { CarryOnVersionRecord } from '../../src/carryon/catalog.js';
import { CarryOnTensorNames as N } from '../../src/carryon/tensor-names.js';
import type { Engine } from '../../src/engine/engine.js';
import { ModelRunner } from '../../src/engine/model-runner.js';
import type { SamplingParams } from '../../src/engine/worker-messages.js';
import type { CarryOnRegistry } from '../../src/serving/carry-on-registry.js';
import { argmax } from '../../src/engine/sampler.js';

/**
 * The reference for a carry-on in the engine, greedy: the primary base's body, each secondary
 * base's body (a mixture's), the carry-on graph and the primary's head as separate ONNX Runtime
 * sessions, merged here as x + α·g⊙Δx on the primary's last row, one token at a time.
 */
export async function referenceGreedy(
  record: CarryOnVersionRecord,
  alpha: number,
  opts: { primaryDir: string; secondaryDirs?: string[]; prompt: number[]; steps: number },
): Promise<number[]> {
  const primary = await ModelRunner.create({ modelDir: opts.primaryDir, provider: 'cpu', threads: 1 });
  const secondaries = await Promise.all((opts.secondaryDirs ?? []).map((modelDir) => ModelRunner.create({ modelDir, provider: 'cpu', threads: 1 })));
  const co = await ort.InferenceSession.create(record.graphPath);
  const a = record.manifest.architecture;
  const d = primary.config.hidden_size;
  const cache = primary.newCache();
  const secondaryCaches = secondaries.map((s) => s.newCache());
  const past: Record<string, ort.Tensor> = {};
  for (let i = 0; i < a.layers; i++) {
    past[N.pastKey(i)] = new ort.Tensor('float32', new Float32Array(0), [1, a.kv_heads, 0, a.head_dim]);
    past[N.pastValue(i)] = new ort.Tensor('float32', new Float32Array(0), [1, a.kv_heads, 0, a.head_dim]);
  }
  const out: number[] = [];
  let feed = opts.prompt;
  try {
    for (let step = 0; step < opts.steps; step++) {
      const start = cache.length;
      const n = feed.length;
      const x = (await primary.forwardBody(feed, cache)).hidden;
      const feeds: Record<string, ort.Tensor> = {
        [N.input('final')]: new ort.Tensor('float32', x, [1, n, d]),
        [N.positionIds]: new ort.Tensor('int64', BigInt64Array.from(feed, (_, i) => BigInt(start + i)), [1, n]),
        [N.attentionMask]: new ort.Tensor('int64', new BigInt64Array(start + n).fill(1n), [1, start + n]),
        ...past,
      };
      for (let j = 0; j < secondaries.length; j++) {
        const y = (await secondaries[j].forwardBody(feed, secondaryCaches[j])).hidden;
        feeds[N.secondaryInput(j, 'final')] = new ort.Tensor('float32', y, [1, n, secondaries[j].config.hidden_size]);
      }
      const r = await co.run(feeds);
      for (let i = 0; i < a.layers; i++) {
        past[N.pastKey(i)] = r[N.presentKey(i)];
        past[N.pastValue(i)] = r[N.presentValue(i)];
      }
      const delta = r[N.delta].data as Float32Array;
      const gate = r[N.gate].data as Float32Array;
      const merged = new Float32Array(d);
      for (let j = 0; j < d; j++) {
        const k = (n - 1) * d + j;
        merged[j] = x[k] + Math.fround(alpha * Math.fround(gate[k] * delta[k]));
      }
      out.push(argmax(await primary.forwardHead(merged, 1)));
      feed = [out[out.length - 1]];
    }
    return out;
  } finally {
    await primary.release();
    for (const s of secondaries) await s.release();
    await co.release();
  }
}

/** The engine's own tokens for `prompt` with `record` (null: the base) at α, through a registry lease. */
export async function engineTokens(
  ctx: { engine: Engine; registry: CarryOnRegistry; prompt: number[]; params: SamplingParams },
  record: CarryOnVersionRecord | null,
  alpha: number,
  cacheNamespace: string | null = null,
): Promise<number[]> {
  const lease = record ? await ctx.registry.acquire(record) : null;
  try {
    return await new Promise<number[]>((resolve, reject) => {
      const ids: number[] = [];
      const handlers = {
        onEvent: (ev: { token: number; finish?: unknown }) => {
          ids.push(ev.token);
          if (ev.finish) resolve(ids);
        },
        onError: (m: string) => reject(new Error(m)),
      };
      ctx.engine.submit(ctx.prompt, ctx.params, handlers, lease ? { key: lease.key, alpha } : null, null, null, cacheNamespace);
    });
  } finally {
    lease?.release();
  }
}
