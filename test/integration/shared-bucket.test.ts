import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CarryOnVersionObject, CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { llama2cToCheckpoint } from '../../src/model/llama2c.js';
import { graphKey } from '../../src/objects/carry-on-graph-bucket.js';
import type { ObjectStore } from '../../src/objects/object-store.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makePushCarryOn } from '../helpers/carry-on.js';
import { startBucketReplicas, type BucketReplicas } from '../helpers/bucket-replicas.js';
import { POSTGRES_AVAILABLE } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir, type TestGateway } from '../helpers/gateway.js';
import type { TestBucket } from '../helpers/object-store.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * Two gateways with their own data folders over one PostgreSQL database and one bucket (s3rver):
 * a carry-on uploaded on A has its graph in the bucket, and B fetches it into its own cache on first
 * use, checking its digest. Skips without CARRYON_TEST_DATABASE_URL, unless
 * CARRYON_POSTGRES_REQUIRED=1 (then the helper fails the run); the bucket is always started here.
 */
describe.runIf(POSTGRES_AVAILABLE)('two gateways sharing carry-on graphs through a bucket', () => {
  const PROMPT = 'Once upon a time';
  let replicas: BucketReplicas;
  let bucket: TestBucket;
  let objects: ObjectStore;
  let work: string;
  let a: TestGateway;
  let b: TestGateway;
  let key: string;

  beforeAll(async () => {
    replicas = await startBucketReplicas('bucket');
    ({ bucket, objects, a, b } = replicas);
    work = freshDataDir('carryon-bucket-pkgs-');
    expect((await api(a, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' })).status).toBe(201);
    const created = await api<CreatedApiKeyObject>(a, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme' });
    expect(created.status, created.text).toBe(201);
    key = created.json.key;
  }, 120_000);
  afterAll(async () => {
    await replicas?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  /** Uploads, on A, a carry-on that pushes `word` into every completion. */
  async function uploadPush(id: string, word: string) {
    const tok = a.gateway.model().tokenizer;
    const tokenId = tok.encode(word, false).at(-1)!;
    const embedding = (await llama2cToCheckpoint(STORIES_BIN, STORIES_TOK)).weights.tokEmbeddings;
    const rec = await makePushCarryOn(path.join(a.dataDir, 'models', 'stories260K'), path.join(work, id), { id, tokenId, strength: 40, baseEmbedding: embedding });
    const parts: FormPart[] = [
      { name: 'manifest', data: JSON.stringify(rec.manifest) },
      { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
    ];
    return { response: await uploadCarryOn<CarryOnVersionObject>(a, 'acme', ADMIN_KEY, parts), piece: tok.piece(tokenId).text };
  }

  const complete = (g: TestGateway, model: string) =>
    api<{ choices: Array<{ text: string }> }>(g, 'POST', '/v1/completions', key, { model, prompt: PROMPT, max_tokens: 12, temperature: 0 });
  const cached = (g: TestGateway, sha256: string) => path.join(g.dataDir, 'carry-ons', 'blobs', `${sha256}.onnx`);
  const blobsOf = (g: TestGateway) => (fs.existsSync(path.join(g.dataDir, 'carry-ons', 'blobs')) ? fs.readdirSync(path.join(g.dataDir, 'carry-ons', 'blobs')) : []);

  it('a carry-on uploaded on A is served on B, fetched from the bucket, with identical greedy output', async () => {
    const { response, piece } = await uploadPush('lily', 'Lily');
    expect(response.status, response.text).toBe(201);
    const { sha256, bytes } = response.json;
    expect(await objects.head(graphKey(sha256))).toMatchObject({ bytes });
    expect(fs.existsSync(cached(b, sha256))).toBe(false);

    const onA = await complete(a, 'lily');
    const onB = await complete(b, 'lily');
    expect(onA.status, onA.text).toBe(200);
    expect(onB.status, onB.text).toBe(200);
    expect(onB.json.choices[0].text).toBe(onA.json.choices[0].text);
    expect(onA.json.choices[0].text).toContain(piece);
    // B's cached copy is the verified graph, and nothing half-written is left beside it.
    expect(createHash('sha256').update(fs.readFileSync(cached(b, sha256))).digest('hex')).toBe(sha256);
    expect(blobsOf(b)).toEqual([`${sha256}.onnx`]);
  });

  it('a corrupt or missing object is a clear error on a replica without a cached copy, which keeps serving', async () => {
    const { response } = await uploadPush('ball', 'ball');
    expect(response.status, response.text).toBe(201);
    const { sha256 } = response.json;
    const garbage = path.join(work, 'garbage.onnx');
    fs.writeFileSync(garbage, 'not a graph');
    await objects.putFile(graphKey(sha256), garbage);

    const corrupt = await complete(b, 'ball');
    expect(corrupt.status).toBe(500);
    expect(corrupt.json.error).toMatchObject({ type: 'server_error', code: 'internal_error' });
    expect(corrupt.json.error?.message).toMatch(/carry-on ball v1 .*corrupt: its sha256 is [0-9a-f]{64}, not the recorded/);
    expect(fs.existsSync(cached(b, sha256))).toBe(false);

    await objects.delete(graphKey(sha256));
    const missing = await complete(b, 'ball');
    expect(missing.status).toBe(500);
    expect(missing.json.error?.message).toMatch(/carry-on ball v1 .*has no object/);
    // Still serving what it has, and A (which has its own copy) serves this one.
    expect((await complete(b, 'lily')).status).toBe(200);
    expect((await complete(a, 'ball')).status).toBe(200);

    // Put back, the object is fetched on the next request: nothing was remembered as broken.
    await objects.putFile(graphKey(sha256), cached(a, sha256));
    const restored = await complete(b, 'ball');
    expect(restored.status, restored.text).toBe(200);
    expect(restored.json.choices[0].text).toBe((await complete(a, 'ball')).json.choices[0].text);
  });

  it('with the bucket down an upload is a 503 in the OpenAI error shape and records nothing; an uncached version is a 503 on B', async () => {
    const { response: first } = await uploadPush('later', 'dog');
    expect(first.status, first.text).toBe(201);
    await bucket.stop();
    try {
      const { response } = await uploadPush('refused', 'cat');
      expect(response.status).toBe(503);
      expect(response.headers['retry-after']).toBeDefined();
      expect(Object.keys(response.json)).toEqual(['error']);
      expect(response.json.error).toMatchObject({ type: 'server_error', param: null, code: 'object_store_unavailable' });
      expect(response.json.error?.message).toMatch(/object store .* unreachable/);
      const listed = await api<{ data: Array<{ id: string }> }>(a, 'GET', '/admin/tenants/acme/carry-ons', ADMIN_KEY);
      expect(listed.json.data.map((c) => c.id)).not.toContain('refused');

      const uncached = await complete(b, 'later');
      expect(uncached.status).toBe(503);
      expect(uncached.json.error).toMatchObject({ type: 'server_error', code: 'object_store_unavailable' });
      // What B has cached does not need the bucket.
      expect((await complete(b, 'lily')).status).toBe(200);
    } finally {
      await bucket.start();
    }
    expect((await complete(b, 'later')).status).toBe(200);
    expect((await uploadPush('refused', 'cat')).response.status).toBe(201);
  });

  it('deleting the last version that uses a graph removes its object from the bucket', async () => {
    const listed = await api<{ versions: Array<{ sha256: string }> }>(a, 'GET', '/admin/tenants/acme/carry-ons/refused', ADMIN_KEY);
    const { sha256 } = listed.json.versions[0];
    expect(await objects.head(graphKey(sha256))).not.toBeNull();
    expect((await api(b, 'DELETE', '/admin/tenants/acme/carry-ons/refused', ADMIN_KEY)).status).toBe(200);
    expect(await objects.head(graphKey(sha256))).toBeNull();
  });
});
