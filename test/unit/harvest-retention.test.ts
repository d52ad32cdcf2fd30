/**
 * Retention (by total bytes and by age, oldest first) and forget-tenant remove exactly the files
 * and index rows they should, and nothing else.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Harvester } from '../../src/harvest/harvester.js';
import { applyRetention, forgetTenant, planRetention, type IndexedShard } from '../../src/harvest/retention.js';
import type { ShardInfo } from '../../src/harvest/shard-format.js';
import { ShardWriter, tenantDirName } from '../../src/harvest/shard-writer.js';
import { Sigma } from '../../src/harvest/sigma.js';
import { syntheticSequence } from '../helpers/harvest-fixtures.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'harvest-retention-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

/** A fake index: a Map keyed by shard id, as the gateway's SQLite table would be. */
class FakeIndex {
  readonly rows = new Map<string, IndexedShard>();
  add = (i: ShardInfo): void => {
    this.rows.set(i.id, { id: i.id, path: i.path, tenantId: i.tenantId, bytes: i.bytes, createdAt: i.createdAt });
  };
  remove = (s: IndexedShard): void => {
    this.rows.delete(s.id);
  };
  list = (): IndexedShard[] => [...this.rows.values()];
}

/** Shards with controlled creation times: one sequence each, closed by size. */
async function makeShards(dir: string, index: FakeIndex, plan: Array<{ tenant: string | null; at: number }>): Promise<void> {
  let clock = 0;
  const w = new ShardWriter({
    dir,
    sigma: new Sigma('f16'),
    maxShardBytes: 1, // every sequence closes its shard
    maxShardAgeMs: 3_600_000,
    onShardFinished: index.add,
    now: () => clock,
  });
  plan.forEach((p, i) => {
    clock = p.at;
    w.append(syntheticSequence(`r${i}`, 10, 32, { tenantId: p.tenant }));
  });
  await w.close();
}

describe('retention', () => {
  it('plans by age, then by total bytes, oldest first', () => {
    const s = (id: string, createdAt: number, bytes = 100): IndexedShard => ({ id, path: `/x/${id}`, tenantId: null, bytes, createdAt });
    const shards = [s('c', 3000), s('a', 1000), s('b', 2000), s('d', 4000)];
    expect(planRetention(shards, {}, 5000)).toEqual([]);
    expect(planRetention(shards, { maxAgeMs: 2500 }, 5000).map((x) => x.id)).toEqual(['a', 'b']);
    expect(planRetention(shards, { maxTotalBytes: 250 }, 5000).map((x) => x.id)).toEqual(['a', 'b']);
    expect(planRetention(shards, { maxTotalBytes: 400 }, 5000)).toEqual([]);
    expect(planRetention(shards, { maxTotalBytes: 350, maxAgeMs: 3500 }, 5000).map((x) => x.id)).toEqual(['a']);
    expect(planRetention(shards, { maxTotalBytes: 0 }, 5000).map((x) => x.id)).toEqual(['a', 'b', 'c', 'd']);
  });

  it('deletes the planned files and index rows, and nothing else', async () => {
    const dir = fs.mkdtempSync(path.join(tmpRoot, 'ret-'));
    const index = new FakeIndex();
    await makeShards(dir, index, [
      { tenant: 'a', at: 1000 },
      { tenant: 'b', at: 2000 },
      { tenant: 'a', at: 3000 },
      { tenant: null, at: 4000 },
      { tenant: 'b', at: 5000 },
    ]);
    const all = index.list();
    expect(all).toHaveLength(5);
    const byAge = [...all].sort((x, y) => x.createdAt - y.createdAt);
    const budget = byAge.slice(2).reduce((a, s) => a + s.bytes, 0); // room for the newest three
    const result = await applyRetention(all, { maxTotalBytes: budget, maxAgeMs: 10_000 }, index.remove, 6000);
    expect(result.deleted.map((s) => s.id)).toEqual(byAge.slice(0, 2).map((s) => s.id));
    expect(result.freedBytes).toBe(byAge[0].bytes + byAge[1].bytes);
    expect(result.failed).toEqual([]);
    for (const s of byAge.slice(0, 2)) expect(fs.existsSync(s.path)).toBe(false);
    for (const s of byAge.slice(2)) expect(fs.existsSync(s.path)).toBe(true);
    expect(index.list().map((s) => s.id).sort()).toEqual(byAge.slice(2).map((s) => s.id).sort());
    // Age alone, later: everything older than 2.5 s at t = 6000 goes.
    const r2 = await applyRetention(index.list(), { maxAgeMs: 2500 }, index.remove, 6000);
    expect(r2.deleted.map((s) => s.createdAt)).toEqual([3000]);
    expect(index.list().map((s) => s.createdAt).sort()).toEqual([4000, 5000]);
  });
});

describe('forget tenant', () => {
  it('deletes every file of the tenant (indexed, unindexed, journals) and only its index rows', async () => {
    const dir = fs.mkdtempSync(path.join(tmpRoot, 'forget-'));
    const index = new FakeIndex();
    await makeShards(dir, index, [
      { tenant: 'victim/1', at: 1000 },
      { tenant: 'keep', at: 1500 },
      { tenant: 'victim/1', at: 2000 },
      { tenant: null, at: 2500 },
    ]);
    const victimDir = path.join(dir, tenantDirName('victim/1'));
    expect(tenantDirName('victim/1')).toBe('victim_2f1');
    // An unindexed shard (crash before index) and an open journal of the tenant.
    const extra: ShardInfo[] = [];
    const w = new ShardWriter({
      dir,
      sigma: new Sigma('int8'),
      maxShardBytes: 1 << 20,
      maxShardAgeMs: 3_600_000,
      onShardFinished: (i) => {
        extra.push(i);
      },
    });
    w.append(syntheticSequence('unindexed', 4, 32, { tenantId: 'victim/1' }));
    await w.flush();
    w.append(syntheticSequence('open', 4, 32, { tenantId: 'victim/1' }));
    // Another base's states for the tenant: an open shard of its own, discarded too.
    w.append(syntheticSequence('open-other-base', 4, 32, { tenantId: 'victim/1', baseFingerprint: 'fp-other' }));
    expect(fs.readdirSync(victimDir).filter((f) => f.endsWith('.journal'))).toHaveLength(2);
    const keep = index.list().filter((s) => s.tenantId !== 'victim/1');

    const result = await forgetTenant({ dir, tenantId: 'victim/1', shards: index.list, deleteIndexed: index.remove, writer: w });
    expect(fs.existsSync(victimDir)).toBe(false);
    expect(result.discardedSequences).toBe(2);
    expect(result.shardIds).toHaveLength(3); // two indexed, one not
    expect(result.shardIds).toContain(extra[0].id);
    expect(result.indexed).toHaveLength(2);
    expect(index.list()).toEqual(keep);
    for (const s of keep) expect(fs.existsSync(s.path)).toBe(true);
    // The writer goes on for other tenants, and for the forgotten one if it comes back.
    w.append(syntheticSequence('later', 4, 32, { tenantId: 'victim/1' }));
    await w.close();
    expect(fs.readdirSync(victimDir).filter((f) => f.endsWith('.safetensors'))).toHaveLength(1);
  });

  it('through the Harvester: in-flight sequences of the tenant are discarded, not written after', async () => {
    const dir = fs.mkdtempSync(path.join(tmpRoot, 'forget-h-'));
    const index = new FakeIndex();
    const h = new Harvester({
      dir,
      maxQueueBytes: 1 << 24,
      maxShardBytes: 1 << 20,
      maxShardAgeMs: 3_600_000,
      onShardFinished: index.add,
    });
    for (let i = 0; i < 20; i++) h.offer(syntheticSequence(`x${i}`, 8, 32, { tenantId: i % 2 ? 'gone' : 'stays' }));
    await h.flush();
    for (let i = 20; i < 30; i++) h.offer(syntheticSequence(`x${i}`, 8, 32, { tenantId: i % 2 ? 'gone' : 'stays' }));
    const result = await forgetTenant({ dir, tenantId: 'gone', shards: index.list, deleteIndexed: index.remove, writer: h });
    expect(result.discardedSequences).toBe(5);
    await h.flush();
    expect(fs.existsSync(path.join(dir, 'gone'))).toBe(false);
    expect(index.list().every((s) => s.tenantId === 'stays')).toBe(true);
    expect(index.list()).toHaveLength(2);
    await h.close();
  });

  it('without a writer, removes the folder directly', async () => {
    const dir = fs.mkdtempSync(path.join(tmpRoot, 'forget-d-'));
    const index = new FakeIndex();
    await makeShards(dir, index, [
      { tenant: null, at: 1 },
      { tenant: 't', at: 2 },
    ]);
    const result = await forgetTenant({ dir, tenantId: null, shards: index.list(), deleteIndexed: index.remove });
    expect(result.indexed).toHaveLength(1);
    expect(fs.existsSync(path.join(dir, '_anonymous'))).toBe(false);
    expect(index.list().map((s) => s.tenantId)).toEqual(['t']);
  });
});
