/**
 * Helpers of the live-harvest tests: keys with a harvest policy, the shard admin routes, and reading
 * a downloaded shard back with the project's reader.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { expect } from 'vitest';
import type { CreatedApiKeyObject, HarvestShardObject, HarvestStatsObject, List } from '../../src/admin/schemas.js';
import { readShard, type HarvestShard } from '../../src/harvest/shard-format.js';
import { api } from './admin.js';
import { ADMIN_KEY, type TestGateway } from './gateway.js';

/** Creates a tenant (if needed) and an inference key; `harvest` is sent exactly as given. */
export async function harvestKey(gw: TestGateway, tenant: string, harvest?: Record<string, unknown>): Promise<string> {
  const t = await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: tenant });
  expect([201, 409], t.text).toContain(t.status);
  const body = harvest === undefined ? { tenant } : { tenant, harvest };
  const r = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, body);
  expect(r.status, r.text).toBe(201);
  return r.json.key;
}

export async function listShards(gw: TestGateway, query = '', key = ADMIN_KEY): Promise<HarvestShardObject[]> {
  const r = await api<List<HarvestShardObject>>(gw, 'GET', `/admin/harvest/shards${query}`, key);
  expect(r.status, r.text).toBe(200);
  return r.json.data;
}

export async function harvestStats(gw: TestGateway): Promise<HarvestStatsObject> {
  const r = await api<HarvestStatsObject>(gw, 'GET', '/admin/harvest/stats', ADMIN_KEY);
  expect(r.status, r.text).toBe(200);
  return r.json;
}

export interface Download {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export async function downloadShard(gw: TestGateway, id: string, headers: Record<string, string> = {}, key = ADMIN_KEY): Promise<Download> {
  const res = await request(`${gw.url}/admin/harvest/shards/${id}`, { headers: { authorization: `Bearer ${key}`, ...headers } });
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) };
}

/** Writes downloaded bytes to a temp file and reads them with src/harvest (which validates the sha256). */
export function readShardBytes(bytes: Buffer): { shard: HarvestShard; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'harvest-dl-'));
  const file = path.join(dir, 'shard.safetensors');
  fs.writeFileSync(file, bytes);
  return { shard: readShard(file), file };
}

/** Every sequence of a shard is whole: targets are the next tokens, prompt rows precede completion rows. */
export function expectWellFormed(shard: HarvestShard): void {
  const { seqOffsets: o, tokenIds, targetIds, isCompletion } = shard;
  expect(o[0]).toBe(0);
  expect(o[o.length - 1]).toBe(shard.metadata.rowCount);
  for (let i = 0; i + 1 < o.length; i++) {
    expect(o[i + 1]).toBeGreaterThan(o[i]);
    for (let j = o[i]; j + 1 < o[i + 1]; j++) expect(targetIds[j]).toBe(tokenIds[j + 1]);
    for (let j = o[i]; j + 1 < o[i + 1]; j++) expect(isCompletion[j + 1]).toBeGreaterThanOrEqual(isCompletion[j]);
  }
}

/** Files under a harvest folder, relative to it. */
export function harvestFiles(dataDir: string): string[] {
  const root = path.join(dataDir, 'harvest');
  if (!fs.existsSync(root)) return [];
  return (fs.readdirSync(root, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(root, f)).isFile()).sort();
}

/** Waits (up to 5 s) until the node's disk holds no closed shard: each went to the bucket and was removed. */
export async function expectShardsOnlyInBucket(dataDir: string): Promise<void> {
  const shards = () => harvestFiles(dataDir).filter((f) => f.endsWith('.safetensors'));
  const deadline = Date.now() + 5_000;
  while (shards().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(shards()).toEqual([]);
}
