import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeShardLayer, type HarvestShard } from '../../src/harvest/shard-format.js';
import { hiddenStates, openBase, type HarvestBase } from '../../src/harvest/offline.js';
import { readManifest } from '../../src/model/package-files.js';
import { api } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { downloadShard, harvestFiles, harvestKey, harvestStats, listShards, readShardBytes } from '../helpers/harvest.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { writePerturbedCheckpoint } from '../helpers/stories-bin.js';

/**
 * Live harvest of several bases: a key's policy names two served bases that share a tokenizer.
 * The base that serves a request keeps its own states as it runs; the other replays the same tokens.
 * Both bases' shards then hold every sequence under the same request id, with the same tokens,
 * each with its own base's states (checked against a separate ONNX Runtime session per base): the
 * input a mixture carry-on trains on.
 */
const A = 'stories';
const B = 'stories-other';
const PROMPT = 'Once upon a time';

let gw: TestGateway;
let work: string;
const refs = new Map<string, HarvestBase>();
const pkgDir = (name: string) => path.join(gw.dataDir, 'models', name);
const fingerprint = (name: string) => readManifest(pkgDir(name)).fingerprint;

beforeAll(async () => {
  work = freshDataDir('carryon-harvest-bases-work-');
  const other = path.join(work, 'stories-other.bin');
  writePerturbedCheckpoint(other, { seed: 21, scale: 0.3 });
  fs.copyFileSync(STORIES_TOK, path.join(work, 'tok512.bin'));
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-harvest-bases-'), CARRYON_MODELS: `${A}=${STORIES_BIN},${B}=${other}` });
  for (const name of [A, B]) refs.set(name, await openBase(pkgDir(name)));
}, 120_000);
afterAll(async () => {
  await gw?.close();
  for (const r of refs.values()) await r.runner.release();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

interface Sequence {
  tokenIds: number[];
  targetIds: number[];
  isCompletion: number[];
  hidden: Float32Array;
}

/** Every sequence of a tenant's shards, by base fingerprint, then by request id. */
async function sequencesOf(tenant: string): Promise<Map<string, Map<string, Sequence>>> {
  const out = new Map<string, Map<string, Sequence>>();
  for (const s of await listShards(gw, `?tenant=${tenant}`)) {
    const { shard } = readShardBytes((await downloadShard(gw, s.id)).body);
    expect(shard.metadata.baseFingerprint).toBe(s.metadata.base_fingerprint);
    const bySeq = out.get(shard.metadata.baseFingerprint) ?? new Map<string, Sequence>();
    out.set(shard.metadata.baseFingerprint, bySeq);
    splitSequences(shard).forEach((seq, i) => bySeq.set(shard.metadata.requestIds[i], seq));
  }
  return out;
}

function splitSequences(shard: HarvestShard): Sequence[] {
  const hidden = decodeShardLayer(shard);
  const D = shard.metadata.storedSize;
  const o = shard.seqOffsets;
  return o.slice(0, -1).map((start, i) => ({
    tokenIds: Array.from(shard.tokenIds.subarray(start, o[i + 1])),
    targetIds: Array.from(shard.targetIds.subarray(start, o[i + 1])),
    isCompletion: Array.from(shard.isCompletion.subarray(start, o[i + 1])),
    hidden: hidden.slice(start * D, o[i + 1] * D),
  }));
}

/** Relative RMS error of stored (f16) states against the reference session's f32 ones. */
function relRms(got: Float32Array, want: Float32Array): number {
  let err = 0;
  let norm = 0;
  for (let i = 0; i < want.length; i++) {
    err += (got[i] - want[i]) ** 2;
    norm += want[i] ** 2;
  }
  return Math.sqrt(err / norm);
}

describe('harvesting several bases per policy', () => {
  it('refuses a policy naming a base that is not served here, with the field', async () => {
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 't0' })).status).toBe(201);
    const r = await api<{ error: { param: string; message: string } }>(gw, 'POST', '/admin/keys', ADMIN_KEY, {
      tenant: 't0',
      harvest: { sample_rate: 1, bases: [A, 'nope'] },
    });
    expect(r.status, r.text).toBe(400);
    expect(r.json.error.param).toBe('harvest.bases');
    expect(r.json.error.message).toContain("'nope'");
    const repeated = await api(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 't0', harvest: { sample_rate: 1, bases: [A, A] } });
    expect(repeated.status, repeated.text).toBe(400);
  });

  it('keeps every named base: the serving one as it runs, the others replayed on the same tokens', { timeout: 60_000 }, async () => {
    const key = await harvestKey(gw, 't1', { sample_rate: 1, bases: [A, B] });
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
    const ids: string[] = [];
    const onA = await client.completions.create({ model: A, prompt: PROMPT, max_tokens: 12, temperature: 0 });
    ids.push(`${onA.id}#0`);
    const onB = await client.chat.completions.create({ model: B, messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 8 });
    ids.push(`${onB.id}#0`);
    const two = await client.completions.create({ model: A, prompt: 'The cat', max_tokens: 6, n: 2, temperature: 0.9, seed: 5 });
    ids.push(`${two.id}#0`, `${two.id}#1`);

    // A replay's capture and its last token event come from the engine separately: wait for both.
    const settled = { replayed: ids.length, failed: 0, skipped: 0, dropped: 0, queued: 0, running: 0 };
    await expect.poll(async () => (await harvestStats(gw)).replay, { timeout: 30_000 }).toEqual(settled);
    await gw.harvest.flush();
    const scrape = (await api(gw, 'GET', '/metrics', ADMIN_KEY)).text;
    expect(scrape).toMatch(new RegExp(`^carryon:harvest_replays_total\\{outcome="replayed"\\} ${ids.length}$`, 'm'));

    const byBase = await sequencesOf('t1');
    expect([...byBase.keys()].sort()).toEqual([fingerprint(A), fingerprint(B)].sort());
    const seqA = byBase.get(fingerprint(A))!;
    const seqB = byBase.get(fingerprint(B))!;
    expect([...seqA.keys()].sort()).toEqual([...ids].sort());
    expect([...seqB.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const a = seqA.get(id)!;
      const b = seqB.get(id)!;
      // The same rows, targets and completion marks in both bases' shards…
      expect(b.tokenIds, id).toEqual(a.tokenIds);
      expect(b.targetIds, id).toEqual(a.targetIds);
      expect(b.isCompletion, id).toEqual(a.isCompletion);
      expect(a.isCompletion.some((c) => c === 1)).toBe(true);
      // …each with its own base's states, as a separate session computes them over those tokens.
      for (const [name, seq] of [[A, a], [B, b]] as const) {
        const [want] = await hiddenStates(refs.get(name)!, seq.tokenIds);
        expect(relRms(seq.hidden, want), `${id} on ${name}`).toBeLessThan(2e-3);
      }
      expect(relRms(a.hidden, b.hidden)).toBeGreaterThan(0.05);
    }
  });

  it('a policy without bases keeps the serving base only, on any base', { timeout: 30_000 }, async () => {
    const key = await harvestKey(gw, 't2', { sample_rate: 1 });
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
    const before = await harvestStats(gw);
    const r = await client.completions.create({ model: B, prompt: PROMPT, max_tokens: 5, temperature: 0 });
    // Its capture reaches the writer as the response ends, not necessarily before the client has it.
    await expect.poll(async () => (await harvestStats(gw)).writer.accepted, { timeout: 10_000 }).toBe(before.writer.accepted + 1);
    await gw.harvest.flush();
    const byBase = await sequencesOf('t2');
    expect([...byBase.keys()]).toEqual([fingerprint(B)]);
    expect([...byBase.get(fingerprint(B))!.keys()]).toEqual([`${r.id}#0`]);
    expect((await harvestStats(gw)).replay!.replayed).toBe(before.replay!.replayed);
  });

  it('deleting a tenant forgets its shards of every base', async () => {
    expect((await listShards(gw, '?tenant=t1')).length).toBeGreaterThanOrEqual(2);
    const r = await api(gw, 'DELETE', '/admin/tenants/t1', ADMIN_KEY);
    expect(r.status, r.text).toBe(200);
    expect(await listShards(gw)).toSatisfy((all: Array<{ tenant: string | null }>) => all.every((s) => s.tenant !== 't1'));
    expect(harvestFiles(gw.dataDir).filter((f) => f.startsWith('t1'))).toEqual([]);
  });
});
