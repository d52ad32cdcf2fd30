import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shardObjectKey } from '../../src/harvest/shard-uploads.js';
import type { ObjectStore } from '../../src/objects/object-store.js';
import { api } from '../helpers/admin.js';
import { startBucketReplicas, type BucketReplicas } from '../helpers/bucket-replicas.js';
import { POSTGRES_AVAILABLE } from '../helpers/databases.js';
import { ADMIN_KEY, type TestGateway } from '../helpers/gateway.js';
import { downloadShard, expectShardsOnlyInBucket, harvestFiles, harvestKey, listShards, readShardBytes } from '../helpers/harvest.js';
import type { TestBucket } from '../helpers/object-store.js';

/**
 * Harvest shards through the bucket: A harvests, uploads each shard when it closes and indexes it
 * in the shared database; B (its own data folder) lists it and serves downloads from the bucket,
 * with Range and ETag; what both harvest is listed once on each. While the bucket is down, closed shards wait on A's disk and go up later.
 * Skips without CARRYON_TEST_DATABASE_URL, unless CARRYON_POSTGRES_REQUIRED=1.
 */
describe.runIf(POSTGRES_AVAILABLE)('harvest shards shared through a bucket', () => {
  let replicas: BucketReplicas;
  let bucket: TestBucket;
  let objects: ObjectStore;
  let a: TestGateway;
  let b: TestGateway;
  let key: string;

  beforeAll(async () => {
    // Shards close on flush only, never by age, so each test decides when one closes.
    replicas = await startBucketReplicas('harvest', { CARRYON_HARVEST_SHARD_AGE_MS: '3600000' });
    ({ bucket, objects, a, b } = replicas);
    key = await harvestKey(a, 'acme', { sample_rate: 1 });
  }, 120_000);
  afterAll(() => replicas?.close());

  const complete = (prompt: string) =>
    new OpenAI({ baseURL: `${a.url}/v1`, apiKey: key, maxRetries: 0 }).completions.create({ model: 'stories260K', prompt, max_tokens: 8 });
  /** Closes A's open shard and returns it, once indexed. */
  async function closeShard(): Promise<{ id: string; bytes: number }> {
    const before = new Set((await listShards(a)).map((s) => s.id));
    await a.harvest.flush();
    const fresh = (await listShards(a)).filter((s) => !before.has(s.id));
    expect(fresh).toHaveLength(1);
    return fresh[0];
  }

  it('a shard closed on A is uploaded, listed on B and downloaded from the bucket, whole and by range, with its ETag', async () => {
    await complete('One day');
    await complete('The sun');
    const shard = await closeShard();
    await a.harvest.uploads!.settled();
    expect(await objects.head(shardObjectKey({ id: shard.id, tenantId: 'acme' }))).toMatchObject({ bytes: shard.bytes });
    // The bucket holds it now: A's disk does not (once the writer released it), and B never had it.
    await expectShardsOnlyInBucket(a.dataDir);
    expect(harvestFiles(b.dataDir)).toEqual([]);

    expect((await listShards(b)).map((s) => s.id)).toContain(shard.id);
    const whole = await downloadShard(b, shard.id);
    expect(whole.status).toBe(200);
    expect(whole.body.length).toBe(shard.bytes);
    const { shard: read } = readShardBytes(whole.body); // checks the data section's sha256
    expect(read.seqOffsets.length - 1).toBe(2);
    const etag = whole.headers.etag as string;
    expect(etag).toBe(`"${read.metadata.dataSha256}"`);

    const part = await downloadShard(b, shard.id, { range: 'bytes=10-19' });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 10-19/${shard.bytes}`);
    expect(part.body).toEqual(whole.body.subarray(10, 20));
    expect((await downloadShard(b, shard.id, { 'if-none-match': etag })).status).toBe(304);
    expect((await downloadShard(a, shard.id, { range: `bytes=-5` })).body).toEqual(whole.body.subarray(-5));
  });

  it('while the bucket is down a closed shard waits on A’s disk and goes up once the bucket is back; downloads are 503 meanwhile', async () => {
    const [uploaded] = await listShards(b);
    await bucket.stop();
    let id: string;
    try {
      const down = await downloadShard(b, uploaded.id);
      expect(down.status).toBe(503);
      expect((JSON.parse(down.body.toString()) as { error: unknown }).error).toMatchObject({ type: 'server_error', code: 'object_store_unavailable' });
      await complete('A bird');
      ({ id } = await closeShard());
      // Give the uploader a failed try or two.
      await new Promise((r) => setTimeout(r, 1500));
      expect((await a.store.harvestShards.get(id))?.objectKey).toBeNull();
      expect(harvestFiles(a.dataDir).some((f) => f.endsWith(`${id}.safetensors`))).toBe(true);
    } finally {
      await bucket.start();
    }
    await a.harvest.uploads!.settled();
    expect((await a.store.harvestShards.get(id))?.objectKey).toBe(shardObjectKey({ id, tenantId: 'acme' }));
    const got = await downloadShard(b, id);
    expect(got.status).toBe(200);
    expect(readShardBytes(got.body).shard.seqOffsets.length - 1).toBe(1);
  });

  it('traffic harvested on both replicas is listed once on each and downloadable from either', async () => {
    const before = new Set((await listShards(a)).map((s) => s.id));
    const onB = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: key, maxRetries: 0 });
    await complete('Tom had a kite');
    await onB.completions.create({ model: 'stories260K', prompt: 'Mia saw a fox', max_tokens: 8 });
    await Promise.all([a.harvest.flush(), b.harvest.flush()]);
    await Promise.all([a.harvest.uploads!.settled(), b.harvest.uploads!.settled()]);
    const fromA = (await listShards(a)).filter((s) => !before.has(s.id));
    const fromB = (await listShards(b)).filter((s) => !before.has(s.id));
    expect(fromA.map((s) => s.id).sort()).toEqual(fromB.map((s) => s.id).sort());
    expect(new Set(fromA.map((s) => s.id)).size).toBe(fromA.length);
    expect(fromA).toHaveLength(2);
    for (const s of fromA) {
      for (const gw of [a, b]) {
        const got = await downloadShard(gw, s.id);
        expect(got.status).toBe(200);
        expect(got.body.length).toBe(s.bytes);
      }
    }
  });

  it('a shard deleted on B is gone from the bucket too', async () => {
    const [first] = await listShards(b);
    expect((await api(b, 'DELETE', `/admin/harvest/shards/${first.id}`, ADMIN_KEY)).status).toBe(200);
    expect(await objects.head(shardObjectKey({ id: first.id, tenantId: 'acme' }))).toBeNull();
    expect((await downloadShard(a, first.id)).status).toBe(404);
  });
});
