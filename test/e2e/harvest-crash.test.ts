/**
 * Crash safety: a child process writes harvest data continuously (through the ShardWriter directly,
 * or through the Harvester and its worker thread) and is killed with SIGKILL at a random moment,
 * several times into the same folder. After each kill, recover() + rescan() must leave: every listed
 * shard valid and readable, nothing listed twice, no sequence in two shards, no valid shard unlisted,
 * no journal or temp file behind, and (direct mode) every sequence the child had journaled present,
 * with recovered + lost adding up.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readShard, validateShardFile, type ShardInfo } from '../../src/harvest/shard-format.js';
import { ShardWriter } from '../../src/harvest/shard-writer.js';
import { Sigma } from '../../src/harvest/sigma.js';
import { REPO_ROOT } from '../helpers/paths.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'harvest-crash-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const src = (f: string) => JSON.stringify(path.join(REPO_ROOT, 'src/harvest', f));

/** The child: writes forever, printing each sequence id once it is journaled (A) or queued (O). */
const CHILD = `
import fs from 'node:fs';
import { ShardWriter } from ${src('shard-writer.ts')};
import { Harvester } from ${src('harvester.ts')};
import { Sigma } from ${src('sigma.ts')};

const [mode, dir, indexFile, start, codec] = process.argv.slice(2);
let seed = Number(start) + 1;
const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
// The "index": one fsynced line per shard id, as SQLite would commit it.
const index = async (info) => {
  await new Promise((r) => setTimeout(r, rand() * 15)); // widen the rename → index window
  const fd = fs.openSync(indexFile, 'a');
  fs.writeSync(fd, info.id + '\\n');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
};
const D = 32;
const seq = (i) => {
  const rows = 1 + Math.floor(rand() * 30);
  const hidden = new Float32Array(rows * D).map(() => rand() * 8 - 4);
  return {
    requestId: 's' + i, tenantId: ['a', 'b', null][i % 3], baseFingerprint: ['fp-a', 'fp-b'][i % 2], carryOnId: null, layers: ['final'], hidden: [hidden],
    hiddenSize: D, tokenIds: Int32Array.from({ length: rows }, () => i % 512), targetIds: new Int32Array(rows).fill(7),
    isCompletion: new Uint8Array(rows), finishedAt: Date.now(),
  };
};
const opts = { dir, maxShardBytes: 30000, maxShardAgeMs: 120, journalSyncMs: 20, onShardFinished: index };
let i = Number(start);
if (mode === 'writer') {
  const w = new ShardWriter({ ...opts, sigma: new Sigma(codec) });
  for (;;) {
    w.append(seq(i));
    process.stdout.write('A ' + i + '\\n');
    i++;
    if (i % 4 === 0) await new Promise((r) => setTimeout(r, 1));
  }
} else {
  const h = new Harvester({ ...opts, sigma: codec, maxQueueBytes: 100000 });
  await h.ready();
  for (;;) {
    if (h.offer(seq(i))) process.stdout.write('O ' + i + '\\n');
    i++;
    if (i % 4 === 0) await new Promise((r) => setTimeout(r, 1));
  }
}
`;

/** Runs the child until a random moment after it started producing, then SIGKILLs it. */
async function runAndKill(args: string[]): Promise<number[]> {
  const script = path.join(tmpRoot, 'child.mts');
  fs.writeFileSync(script, CHILD);
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const started = Date.now();
  while (out.length === 0) {
    if (Date.now() - started > 30_000 || child.exitCode !== null) throw new Error(`child produced nothing: ${err}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 150 + Math.random() * 900));
  child.kill('SIGKILL');
  await exited;
  expect(err).not.toMatch(/Error/);
  // Only whole lines: a line cut by the kill was not reported.
  return out
    .split('\n')
    .slice(0, -1)
    .map((l) => Number(l.split(' ')[1]));
}

function readIndex(file: string): string[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

function allFiles(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((f) => path.join(dir, f)).filter((f) => fs.statSync(f).isFile());
}

describe('kill -9 while writing', () => {
  it('recover + rescan never lists a corrupt or duplicate shard and loses nothing journaled', async () => {
    const dir = path.join(tmpRoot, 'shards');
    const indexFile = path.join(tmpRoot, 'index.txt');
    const seenSeqs = new Map<string, string>(); // request id → shard id, across all rounds
    const rounds = 6;
    const totals = { recovered: 0, lost: 0, rescanned: 0, staleJournals: 0, tempFiles: 0 };
    for (let round = 0; round < rounds; round++) {
      const mode = round % 2 === 0 ? 'writer' : 'harvester';
      const codec = (['f16', 'int8', 'none'] as const)[round % 3];
      const start = (round + 1) * 1_000_000;
      const printed = await runAndKill([mode, dir, indexFile, String(start), codec]);
      const indexedByChild = new Set(readIndex(indexFile));

      const recoveredNow: ShardInfo[] = [];
      const writer = new ShardWriter({
        dir,
        sigma: new Sigma('f16'),
        maxShardBytes: 1 << 20,
        maxShardAgeMs: 60_000,
        onShardFinished: (info) => {
          fs.appendFileSync(indexFile, `${info.id}\n`);
          recoveredNow.push(info);
        },
      });
      const rep = await writer.recover();
      const scan = await writer.rescan(readIndex(indexFile));
      await writer.close();
      const ctx = `round ${round} (${mode}, ${codec}, ${printed.length} printed)`;

      // Listed exactly once each, and only valid, readable shards.
      const listed = readIndex(indexFile);
      expect(new Set(listed).size, ctx).toBe(listed.length);
      expect(scan.invalid, ctx).toEqual([]);
      const files = allFiles(dir);
      expect(files.filter((f) => f.endsWith('.journal') || f.endsWith('.tmp')), ctx).toEqual([]);
      const shardFiles = files.filter((f) => f.endsWith('.safetensors'));
      expect(shardFiles.map((f) => path.basename(f, '.safetensors')).sort(), ctx).toEqual([...listed].sort());
      let presentThisRound = 0;
      let inChildShards = 0;
      for (const f of shardFiles) {
        const info = validateShardFile(f);
        const shard = readShard(f);
        expect(shard.seqOffsets.at(-1), ctx).toBe(info.rows);
        for (const id of shard.metadata.requestIds) {
          const owner = seenSeqs.get(id);
          expect(owner === undefined || owner === info.id, `${ctx}: ${id} in ${owner} and ${info.id}`).toBe(true);
          seenSeqs.set(id, info.id);
          if (Number(id.slice(1)) >= start && Number(id.slice(1)) < start + 1_000_000) {
            presentThisRound++;
            if (!rep.recovered.some((r) => r.id === info.id)) inChildShards++;
          }
        }
      }
      // Recovered shards were indexed through the callback, exactly those.
      expect(recoveredNow.map((r) => r.id).sort(), ctx).toEqual([...rep.recovered, ...scan.reported].map((r) => r.id).sort());
      // Shards the child finished are listed by it or by rescan; everything else came from journals.
      for (const info of scan.reported) expect(indexedByChild.has(info.id), ctx).toBe(false);
      expect(presentThisRound, ctx).toBe(inChildShards + rep.recoveredSequences);
      totals.recovered += rep.recoveredSequences;
      totals.lost += rep.lostSequences;
      totals.rescanned += scan.reported.length;
      totals.staleJournals += rep.staleJournalsDeleted;
      totals.tempFiles += rep.tempFilesDeleted;

      const ids = new Set([...seenSeqs.keys()].map((s) => Number(s.slice(1))).filter((n) => n >= start && n < start + 1_000_000));
      const last = printed.length > 0 ? printed[printed.length - 1] : start - 1;
      if (mode === 'writer') {
        // Every sequence the child had journaled is present (kill -9 loses no written bytes);
        // at most the one being appended at the kill is also there.
        for (let i = start; i <= last; i++) expect(ids.has(i) || rep.lostSequences > 0, `${ctx}: s${i} missing`).toBe(true);
        expect(presentThisRound + rep.lostSequences, ctx).toBeGreaterThanOrEqual(last - start + 1);
        for (const i of ids) expect(i, ctx).toBeLessThanOrEqual(last + 1);
      } else {
        // Through the queue: whatever is present was accepted (queued but unjournaled work dies with
        // the process); only the offer in flight at the kill may be present without being printed.
        const offered = new Set(printed);
        const unprinted = [...ids].filter((i) => !offered.has(i));
        expect(unprinted.length, ctx).toBeLessThanOrEqual(1);
        for (const i of unprinted) expect(i, ctx).toBeGreaterThan(last);
      }
    }
    expect(seenSeqs.size).toBeGreaterThan(0);
    console.log(`crash test: ${rounds} kills, ${seenSeqs.size} sequences in shards; ${JSON.stringify(totals)}`);
  }, 180_000);
});
