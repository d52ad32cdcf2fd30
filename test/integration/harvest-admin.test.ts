/**
 * The harvest admin API and the index's lifecycle on a real gateway: who sees which shards, deleting
 * one, pushing to CARRYON_HARVEST_PUSH_URL with retries, retention by bytes and by age, and deleting a
 * tenant. Each check compares the index (the admin API) with the files on disk, so "exactly the right
 * shards and rows" holds on both sides.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { CreatedApiKeyObject, HarvestShardObject } from '../../src/admin/schemas.js';
import { Store } from '../../src/store/store.js';
import { api, LogCapture } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { downloadShard, harvestFiles, harvestKey, harvestStats, listShards, readShardBytes } from '../helpers/harvest.js';
import { STORE_SETUPS, testDatabase, type TestDatabase } from '../helpers/databases.js';

// Every test here runs on each metadata backend, and on PostgreSQL with a bucket (test/helpers/databases.ts), each on a database of its own.
describe.each(STORE_SETUPS)('on %s', (backend) => {

  const MODEL = 'stories260K';
  const dirs: string[] = [];
  const databases: TestDatabase[] = [];

  /** A data folder and a database of its own for each gateway this file starts: two of them must not share a shard index. */
  async function freshPlace(prefix: string): Promise<{ dataDir: string; db: TestDatabase }> {
    const dataDir = freshDataDir(prefix);
    dirs.push(dataDir);
    const db = await testDatabase(backend);
    databases.push(db);
    return { dataDir, db };
  }
  let gw: TestGateway;
  let mainDb: TestDatabase;
  let packageDir: string;
  const logs = new LogCapture();

  /** A push target that refuses the first PUT (503) and keeps every later one. */
  const pushes: Array<{ url: string; sha256: string; bytes: number; dataSha256: string | undefined }> = [];
  let pushAttempts = 0;
  const sink = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'PUT' || pushAttempts++ === 0) {
        res.writeHead(503).end();
        return;
      }
      const body = Buffer.concat(chunks);
      pushes.push({ url: req.url ?? '', sha256: createHash('sha256').update(body).digest('hex'), bytes: body.length, dataSha256: req.headers['x-carryon-data-sha256'] as string | undefined });
      res.writeHead(201).end();
    });
  });

  beforeAll(async () => {
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
    const { dataDir, db } = await freshPlace('carryon-harvest-admin-');
    mainDb = db;
    gw = await startTestGateway(
      {
        CARRYON_DATA_DIR: dataDir,
        ...db.env,
        CARRYON_LOG_LEVEL: 'info',
        CARRYON_HARVEST_SHARD_AGE_MS: '3600000',
        CARRYON_HARVEST_PUSH_URL: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/sink/`,
      },
      { logStream: logs },
    );
    packageDir = path.join(dataDir, 'models', MODEL);
  });
  afterAll(async () => {
    await gw?.close();
    sink.close();
    for (const db of databases) await db.drop();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  async function complete(g: TestGateway, key: string, prompt: string, extra: Record<string, unknown> = {}): Promise<string> {
    const sdk = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: key, maxRetries: 0 });
    return (await sdk.completions.create({ model: MODEL, prompt, max_tokens: 8, ...extra })).id;
  }

  async function adminKey(g: TestGateway, tenant: string): Promise<string> {
    const r = await api<CreatedApiKeyObject>(g, 'POST', '/admin/keys', ADMIN_KEY, { tenant, scope: 'admin' });
    expect(r.status, r.text).toBe(201);
    return r.json.key;
  }

  /**
   * The index and the storage agree: every listed shard's file exists and every shard file is
   * listed. With a bucket, a shard is in the bucket once uploaded and on disk until then (or while a
   * push still needs it): the two together are the storage.
   */
  async function expectIndexMatchesDisk(g: TestGateway, listed: HarvestShardObject[], db: TestDatabase): Promise<void> {
    const onDisk = harvestFiles(g.dataDir);
    expect(onDisk.filter((f) => !f.endsWith('.safetensors'))).toEqual([]);
    const stored = new Set(onDisk.map((f) => path.basename(f, '.safetensors')));
    if (db.objectKeys) {
      await g.harvest.uploads?.settled();
      for (const k of await db.objectKeys()) if (k.startsWith('harvest/')) stored.add(path.basename(k, '.safetensors'));
    }
    expect([...stored].sort()).toEqual(listed.map((s) => s.id).sort());
  }

  describe('harvest admin API', () => {
    it('scopes shards by tenant, downloads and deletes with audit lines, and pushes each shard at least once', async () => {
      const k1 = await harvestKey(gw, 'a1', { sample_rate: 1 });
      const k2 = await harvestKey(gw, 'a2', { sample_rate: 1 });
      const admin2 = await adminKey(gw, 'a2');
      await complete(gw, k1, 'One day');
      await complete(gw, k1, 'The sun');
      await complete(gw, k2, 'A bird');
      await gw.harvest.flush();

      const all = await listShards(gw);
      expect(all.map((s) => s.tenant).sort()).toEqual(['a1', 'a2']);
      const [s1, s2] = [all.find((s) => s.tenant === 'a1')!, all.find((s) => s.tenant === 'a2')!];
      expect(s1.sequences).toBe(2);
      const ids = (list: HarvestShardObject[]) => list.map((s) => s.id);
      expect(ids(await listShards(gw, '?tenant=a1'))).toEqual([s1.id]);
      await expectIndexMatchesDisk(gw, all, mainDb);

      // A tenant's admin key: its own shards only; others answer 404 like missing ones; stats are global.
      expect(ids(await listShards(gw, '', admin2))).toEqual([s2.id]);
      expect((await api(gw, 'GET', '/admin/harvest/shards?tenant=a1', admin2)).status).toBe(404);
      expect((await downloadShard(gw, s1.id, {}, admin2)).status).toBe(404);
      expect((await api(gw, 'DELETE', `/admin/harvest/shards/${s1.id}`, admin2)).status).toBe(404);
      expect((await api(gw, 'GET', '/admin/harvest/stats', admin2)).json.error?.code).toBe('permission_denied');
      expect((await api(gw, 'GET', '/admin/harvest/shards', k1)).status).toBe(403);
      expect((await api(gw, 'GET', '/admin/harvest/shards?tenants=a1', ADMIN_KEY)).json.error?.code).toBe('unknown_parameter');
      expect((await downloadShard(gw, 'nope', {})).status).toBe(404);

      // HEAD: the headers of a download, no body.
      const head = await request(`${gw.url}/admin/harvest/shards/${s2.id}`, { method: 'HEAD', headers: { authorization: `Bearer ${admin2}` } });
      expect(head.statusCode).toBe(200);
      expect(head.headers['content-length']).toBe(String(s2.bytes));
      await head.body.dump();

      // Pushes: the first PUT fails (503) and is retried with backoff; each shard arrives whole, once indexed as pushed.
      await gw.harvest.pushesSettled();
      expect(pushes.map((p) => p.url).sort()).toEqual([`/sink/a1/${s1.id}.safetensors`, `/sink/a2/${s2.id}.safetensors`].sort());
      for (const s of [s1, s2]) {
        const p = pushes.find((x) => x.url.includes(s.id))!;
        const file = (await downloadShard(gw, s.id)).body;
        expect(p).toMatchObject({ bytes: s.bytes, sha256: createHash('sha256').update(file).digest('hex'), dataSha256: s.metadata.data_sha256 });
      }
      const pushed = await listShards(gw);
      for (const s of pushed) expect(s.pushed_at).toEqual(expect.any(String));
      expect((await harvestStats(gw)).push).toMatchObject({ pushed: 2, pending: 0, failed_attempts: 1 });
      // The writer's counters reach Prometheus too.
      const scrape = (await api(gw, 'GET', '/metrics', ADMIN_KEY)).text;
      expect(scrape).toMatch(/^carryon:harvest_sequences_accepted_total 3$/m);
      expect(scrape).toMatch(/^carryon:harvest_sequences_dropped_total 0$/m);
      expect(scrape).toMatch(new RegExp(`^carryon:harvest_bytes_written_total ${s1.bytes + s2.bytes}$`, 'm'));

      const del = await api(gw, 'DELETE', `/admin/harvest/shards/${s2.id}`, admin2);
      expect(del.status, del.text).toBe(200);
      expect(del.json).toEqual({ object: 'harvest.shard', id: s2.id, deleted: true });
      expect((await api(gw, 'DELETE', `/admin/harvest/shards/${s2.id}`, admin2)).status).toBe(404);
      const after = await listShards(gw);
      expect(after.map((s) => s.id)).toEqual([s1.id]);
      await expectIndexMatchesDisk(gw, after, mainDb);

      const audits = logs.audits().filter((a) => a.action.startsWith('harvest.'));
      expect(audits).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ action: 'harvest.shard.download', tenant: 'a1', target: s1.id }),
          expect.objectContaining({ action: 'harvest.shard.delete', tenant: 'a2', target: s2.id }),
        ]),
      );
      expect(audits.filter((a) => a.action === 'harvest.shard.delete')).toHaveLength(1);
    });

    it('deleting a tenant forgets its shards, its open shard and journal, and its rows, and nothing else', async () => {
      const k3 = await harvestKey(gw, 'gone', { sample_rate: 1 });
      const k4 = await harvestKey(gw, 'kept', { sample_rate: 1 });
      await complete(gw, k3, 'Once');
      await complete(gw, k4, 'Twice');
      await gw.harvest.flush();
      await complete(gw, k3, 'Again'); // an open shard, with its journal on disk
      await complete(gw, k4, 'More');
      await gw.harvest.journaled(); // the writer has appended both to their shards' journals
      await gw.harvest.pushesSettled(); // the closed shards' pushes land before the snapshot, not during the comparison
      const before = await listShards(gw);
      const kept = before.filter((s) => s.tenant !== 'gone');
      expect(before.filter((s) => s.tenant === 'gone')).toHaveLength(1);
      expect(harvestFiles(gw.dataDir).some((f) => f.startsWith('gone/') && f.endsWith('.journal'))).toBe(true);

      // A request of the tenant still generating when the tenant is deleted: its sequence is dropped.
      const inFlight = await new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: k3, maxRetries: 0 }).completions.create({
        model: MODEL,
        prompt: 'Once upon a time',
        max_tokens: 400,
        temperature: 0,
        stream: true,
      });
      const chunks = inFlight[Symbol.asyncIterator]();
      await chunks.next();
      const r = await api(gw, 'DELETE', '/admin/tenants/gone', ADMIN_KEY);
      expect(r.status, r.text).toBe(200);
      let streamed = 1;
      while (!(await chunks.next()).done) streamed++;
      expect(streamed).toBeGreaterThan(20);
      // The capture reaches the writer just after the last chunk reaches the client: wait for it.
      await expect.poll(async () => (await harvestStats(gw)).dropped_deleted_tenant, { timeout: 5_000 }).toBe(1);
      expect(fs.existsSync(path.join(gw.dataDir, 'harvest', 'gone'))).toBe(false);
      expect(await listShards(gw)).toEqual(kept);
      // The discarded open shard never comes back; the other tenant's open shard is written as usual.
      await gw.harvest.flush();
      const after = await listShards(gw);
      expect(after.filter((s) => s.tenant === 'gone')).toEqual([]);
      expect(after.filter((s) => s.tenant === 'kept')).toHaveLength(kept.filter((s) => s.tenant === 'kept').length + 1);
      expect(after.slice(0, kept.length)).toEqual(kept);
      await expectIndexMatchesDisk(gw, after, mainDb);
      // Its key is revoked.
      await expect(complete(gw, k3, 'Late')).rejects.toMatchObject({ status: 401 });
    });
  });

  describe('start', () => {
    // Local disk only: with a bucket a replica's disk holds only the shards it has not uploaded yet,
    // so a row whose file is not here may be another replica's and is kept (docs/operations.md,
    // "Object storage"); test/integration/shared-harvest.test.ts covers the bucket's recovery.
    it.skipIf(backend === 'postgres+bucket')('heals what a crash can leave (rows without a file, data of a tenant deleted before its harvest data), also with harvesting off', async () => {
      const { dataDir, db } = await freshPlace('carryon-harvest-heal-');
      const env = { CARRYON_DATA_DIR: dataDir, CARRYON_MODEL: packageDir, ...db.env };
      let g = await startTestGateway(env);
      await complete(g, await harvestKey(g, 'h1', { sample_rate: 1 }), 'One');
      await complete(g, await harvestKey(g, 'h2', { sample_rate: 1 }), 'Two');
      await complete(g, await harvestKey(g, 'h3', { sample_rate: 1 }), 'Three');
      await g.harvest.flush();
      const before = await listShards(g);
      expect(before.map((s) => s.tenant)).toEqual(['h1', 'h2', 'h3']);
      await g.close();
      // A crash after h1's deletion committed but before its harvest data went; and one between
      // deleting h2's shard file and its row.
      const store = await Store.connect({ dataDir, url: db.url });
      await store.tenants.markDeleted('h1');
      await store.end();
      fs.rmSync(path.join(dataDir, 'harvest', 'h2', `${before[1].id}.safetensors`));
      // Restarted with harvesting off: the index is healed and served all the same, nothing new is written.
      g = await startTestGateway({ ...env, CARRYON_HARVEST: 'off' });
      try {
        const after = await listShards(g);
        expect(after.map((s) => s.id)).toEqual([before[2].id]);
        expect(fs.existsSync(path.join(dataDir, 'harvest', 'h1'))).toBe(false);
        await expectIndexMatchesDisk(g, after, db);
        expect((await downloadShard(g, after[0].id)).status).toBe(200);
        await complete(g, await harvestKey(g, 'h3', { sample_rate: 1 }), 'Four');
        await g.harvest.flush();
        expect((await listShards(g)).map((s) => s.id)).toEqual([before[2].id]);
        expect(await harvestStats(g)).toMatchObject({ enabled: false, writer: { accepted: 0 } });
      } finally {
        await g.close();
      }
    });
  });

  describe('retention', () => {
    it('CARRYON_HARVEST_MAX_BYTES keeps the newest shards that fit and deletes the rest, files and rows', async () => {
      const { dataDir, db } = await freshPlace('carryon-harvest-bytes-');
      // Shards of one sequence each (a ~4 KB shard is past 4096 after its first), all the same size
      // (greedy, same prompt): the budget keeps exactly floor(MAX / size) of them.
      const MAX = 12_000;
      const g = await startTestGateway({ CARRYON_DATA_DIR: dataDir, ...db.env, CARRYON_MODEL: packageDir, CARRYON_HARVEST_SHARD_BYTES: '4096', CARRYON_HARVEST_MAX_BYTES: String(MAX) });
      try {
        const key = await harvestKey(g, 'r', { sample_rate: 1 });
        const ids: string[] = [];
        for (let i = 0; i < 8; i++) ids.push(await complete(g, key, 'Once upon a time', { temperature: 0 }));
        await g.harvest.flush();
        const listed = await listShards(g);
        const size = listed[0].bytes;
        expect(listed.every((s) => s.bytes === size && s.sequences === 1)).toBe(true);
        const keep = Math.floor(MAX / size);
        expect(keep).toBeGreaterThanOrEqual(2);
        expect(listed).toHaveLength(keep);
        // The newest ones, in order.
        const requestOf = async (s: HarvestShardObject) => readShardBytes((await downloadShard(g, s.id)).body).shard.metadata.requestIds[0];
        const kept = await Promise.all(listed.map(requestOf));
        expect(kept).toEqual(ids.slice(-keep).map((id) => `${id}#0`));
        const stats = await harvestStats(g);
        expect(stats.writer.shards_written).toBe(8);
        expect(stats.retention_deleted).toBe(8 - keep);
        expect(stats.index).toMatchObject({ shards: keep, bytes: keep * size });
        await expectIndexMatchesDisk(g, listed, db);
      } finally {
        await g.close();
      }
    });

    it('CARRYON_HARVEST_MAX_AGE_MS deletes shards past the age on its timer, and only those', async () => {
      const { dataDir, db } = await freshPlace('carryon-harvest-age-');
      // Retention measures ages on our clock, moved by the test rather than waited for; the shards'
      // times come from the writer's own clock, which `skew` leaves alone.
      let skew = 0;
      const intervals = vi.spyOn(globalThis, 'setInterval');
      let g: TestGateway;
      let timers: Parameters<typeof setInterval>[];
      try {
        g = await startTestGateway(
          { CARRYON_DATA_DIR: dataDir, ...db.env, CARRYON_MODEL: packageDir, CARRYON_HARVEST_MAX_AGE_MS: '2000' },
          { harvestNow: () => Date.now() + skew },
        );
      } finally {
        timers = intervals.mock.calls.filter(([, ms]) => ms === 500);
        intervals.mockRestore();
      }
      // The start armed the retention timer, every quarter of the age; `tick` is its own callback.
      expect(timers).toHaveLength(1);
      const tick = timers[0][0];
      try {
        const key = await harvestKey(g, 'old', { sample_rate: 1 });
        await complete(g, key, 'First');
        await g.harvest.flush();
        const first = await listShards(g);
        expect(first).toHaveLength(1);
        skew = 2_500; // past the age
        tick();
        await g.harvest.retentionSettled();
        expect(await listShards(g)).toEqual([]);
        skew = 0; // back to the writer's time, so the next shard is new
        await complete(g, key, 'Second');
        await g.harvest.flush();
        tick(); // not past the age: kept
        await g.harvest.retentionSettled();
        const second = await listShards(g);
        expect(second).toHaveLength(1);
        expect(second[0].id).not.toBe(first[0].id);
        expect((await harvestStats(g)).retention_deleted).toBe(1);
        await expectIndexMatchesDisk(g, second, db);
      } finally {
        await g.close();
      }
    });
  });
});
