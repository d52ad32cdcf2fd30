/**
 * Harvest building blocks: the safetensors codec, σ (bit-exactness of f16, int8 error bound,
 * projection), and journal recovery with exact accounting of torn and corrupt records.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { f32ToF16 } from '../../src/formats/half.js';
import { readJournal } from '../../src/harvest/journal.js';
import {
  SafetensorsError,
  decodeSafetensors,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  serializeSafetensors,
} from '../../src/formats/safetensors.js';
import { decodeShardLayer, readShard, validateShardFile, type ShardInfo } from '../../src/harvest/shard-format.js';
import { ShardWriter, tenantDirName } from '../../src/harvest/shard-writer.js';
import { Sigma, decodeRows, encodeF16, f32BitsToF16, reconstructionError } from '../../src/harvest/sigma.js';
import { rng, syntheticSequence } from '../helpers/harvest-fixtures.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'harvest-format-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let n = 0;
const freshDir = () => fs.mkdtempSync(path.join(tmpRoot, `d${n++}-`));

describe('safetensors', () => {
  it('round-trips every dtype with an aligned, space-padded header and sorted, gapless offsets', () => {
    const buf = serializeSafetensors(
      {
        b_u8: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 255]) },
        a_f32: { dtype: 'F32', shape: [2, 2], data: new Float32Array([1.5, -2, 3, 4]) },
        c_i64: { dtype: 'I64', shape: [2], data: new BigInt64Array([-1n, 1n << 40n]) },
        d_f16: { dtype: 'F16', shape: [1], data: new Uint16Array([0x3c00]) },
        e_i8: { dtype: 'I8', shape: [2], data: new Int8Array([-127, 127]) },
        f_i32: { dtype: 'I32', shape: [1, 1], data: new Int32Array([-7]) },
        empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
      },
      { note: 'hello' },
    );
    const n = Number(buf.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    expect(buf.subarray(8, 8 + n).toString().endsWith(' ') || buf[8 + n - 1] === 0x7d).toBe(true);
    const { metadata, tensors } = decodeSafetensors(buf);
    expect(metadata).toEqual({ note: 'hello' });
    expect([...tensors.get('a_f32')!.data]).toEqual([1.5, -2, 3, 4]);
    expect([...tensors.get('c_i64')!.data]).toEqual([-1n, 1n << 40n]);
    expect([...tensors.get('b_u8')!.data]).toEqual([1, 2, 255]);
    expect([...tensors.get('e_i8')!.data]).toEqual([-127, 127]);
    expect(tensors.get('f_i32')!.shape).toEqual([1, 1]);
    expect(tensors.get('empty')!.shape).toEqual([0, 4]);
    // Every tensor is naturally aligned in the file (widest dtypes first).
    const header = parseSafetensorsHeader(buf, buf.length);
    for (const e of header.tensors.values()) {
      const size = { I64: 8, F32: 4, I32: 4, F16: 2, BF16: 2, I8: 1, U8: 1 }[e.dtype];
      expect((header.dataStart + e.data_offsets[0]) % size).toBe(0);
    }
  });

  it('rejects truncated files, gaps and wrong sizes', () => {
    const buf = serializeSafetensors({ x: { dtype: 'F32', shape: [4], data: new Float32Array(4) } });
    expect(() => decodeSafetensors(buf.subarray(0, buf.length - 1))).toThrow(SafetensorsError);
    const gap = (json: string) => {
      const padded = json.padEnd(Math.ceil(json.length / 8) * 8, ' ');
      const b = Buffer.alloc(8 + padded.length + 16);
      b.writeBigUInt64LE(BigInt(padded.length));
      b.write(padded, 8);
      return b;
    };
    expect(() => decodeSafetensors(gap('{"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'))).toThrow(/gap/);
    expect(() => decodeSafetensors(gap('{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}'))).toThrow(/bytes/);
    expect(() => decodeSafetensors(gap('{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}'))).toThrow(/dtype/);
    const file = path.join(freshDir(), 't.safetensors');
    fs.writeFileSync(file, buf.subarray(0, buf.length - 3));
    expect(() => readSafetensorsHeader(file)).toThrow(/promises/);
  });
});

describe('sigma', () => {
  it('f16 encoding is bit-identical to the reference converter, including edge cases', () => {
    const rand = rng(3);
    const specials = [0, -0, 1, -1, 65504, 65520, 1e-8, 5.96e-8, 2.98e-8, 6.1e-5, 1e6, -1e6, Infinity, -Infinity, NaN, 0.1, 1 / 3];
    const values = new Float32Array([...specials, ...Array.from({ length: 20000 }, () => (rand() - 0.5) * 2 ** Math.floor(rand() * 40 - 20))]);
    const bits = new Uint32Array(values.buffer);
    const fast = encodeF16(values);
    for (let i = 0; i < values.length; i++) {
      expect(fast[i]).toBe(f32ToF16(values[i]));
      expect(f32BitsToF16(bits[i])).toBe(fast[i]);
    }
  });

  it('int8 stays within half a quantisation step of each row, and handles zero and non-finite rows', () => {
    const seq = syntheticSequence('q', 50, 96, { seed: 9 });
    const x = seq.hidden[0];
    const enc = new Sigma('int8').encode(x, 50, 96);
    expect(enc.dtype).toBe('I8');
    const y = decodeRows(enc);
    for (let r = 0; r < 50; r++) {
      const s = enc.scale![r];
      for (let j = 0; j < 96; j++) expect(Math.abs(x[r * 96 + j] - y[r * 96 + j])).toBeLessThanOrEqual((s / 254) * (1 + 1e-6));
    }
    const odd = new Float32Array([0, 0, 0, 0, 1, NaN, Infinity, -2]);
    const e2 = new Sigma('int8').encode(odd, 2, 4);
    expect([...decodeRows(e2).slice(0, 4)]).toEqual([0, 0, 0, 0]);
    expect([...e2.data.slice(4)]).toEqual([64, 0, 127, -127]);
    expect(e2.scale![1]).toBe(2);
  });

  it('none is exact; f16 relative error is below 2^-11', () => {
    const x = syntheticSequence('e', 40, 64, { seed: 2 }).hidden[0];
    expect(reconstructionError(x, decodeRows(new Sigma('none').encode(x, 40, 64)), 64).maxAbs).toBe(0);
    const e = reconstructionError(x, decodeRows(new Sigma('f16').encode(x, 40, 64)), 64);
    expect(e.worstRowRel).toBeLessThan(2 ** -11);
  });

  it('applies a [d, D] projection from safetensors or raw f32, recording its sha256', () => {
    const dir = freshDir();
    const D = 8;
    const d = 3;
    const p = new Float32Array(d * D).map((_, i) => ((i * 7) % 5) - 2);
    const stFile = path.join(dir, 'proj.safetensors');
    fs.writeFileSync(stFile, serializeSafetensors({ projection: { dtype: 'F32', shape: [d, D], data: p } }));
    const rawFile = path.join(dir, 'proj.f32');
    fs.writeFileSync(rawFile, Buffer.from(p.buffer));
    const x = new Float32Array(2 * D).map((_, i) => i / 4);
    for (const file of [stFile, rawFile]) {
      const sigma = Sigma.load({ codec: 'none', projectionPath: file });
      expect(sigma.outputSize(D)).toBe(d);
      const y = decodeRows(sigma.encode(x, 2, D));
      for (let r = 0; r < 2; r++) {
        for (let i = 0; i < d; i++) {
          let acc = 0;
          for (let j = 0; j < D; j++) acc += p[i * D + j] * x[r * D + j];
          expect(y[r * d + i]).toBeCloseTo(acc, 5);
        }
      }
      expect(sigma.describe(D).projection).toMatchObject({ rows: d, cols: D });
      expect(sigma.describe(D).projection!.sha256).toMatch(/^[0-9a-f]{64}$/);
    }
    expect(() => Sigma.load({ codec: 'f16', projectionPath: stFile }).encode(new Float32Array(9), 1, 9)).toThrow(/D=9/);
  });
});

describe('shards of several bases', () => {
  it('keeps one open shard per tenant and base, each naming its base, and recovers each from its journal', async () => {
    const dir = freshDir();
    const writer = new ShardWriter({ dir, sigma: new Sigma('f16'), maxShardBytes: 1 << 30, maxShardAgeMs: 3_600_000, onShardFinished: () => {} });
    // Interleaved, as live traffic and replays arrive: a base change must not close the other's shard.
    for (const [id, fp] of [['r0', 'fp-a'], ['r0', 'fp-b'], ['r1', 'fp-a'], ['r1', 'fp-b'], ['r2', 'fp-b']]) {
      writer.append(syntheticSequence(id, 6, 16, { tenantId: 'acme', baseFingerprint: fp }));
    }
    const journals = fs.readdirSync(path.join(dir, tenantDirName('acme'))).filter((f) => f.endsWith('.journal'));
    expect(journals).toHaveLength(2);
    // The process dies here; the next start rebuilds both shards from their journals.
    const infos: ShardInfo[] = [];
    const next = new ShardWriter({ dir, sigma: new Sigma('int8'), maxShardBytes: 1 << 30, maxShardAgeMs: 3_600_000, onShardFinished: (i) => void infos.push(i) });
    expect((await next.recover()).recoveredSequences).toBe(5);
    const byBase = new Map(infos.map((i) => [readShard(i.path).metadata.baseFingerprint, readShard(i.path).metadata.requestIds]));
    expect(byBase).toEqual(new Map([['fp-a', ['r0', 'r1']], ['fp-b', ['r0', 'r1', 'r2']]]));
    await next.close();
  });

  it('refuses a sequence that names no base', () => {
    const writer = new ShardWriter({ dir: freshDir(), sigma: new Sigma('f16'), maxShardBytes: 1 << 30, maxShardAgeMs: 3_600_000, onShardFinished: () => {} });
    expect(() => writer.append({ ...syntheticSequence('x', 3, 8), baseFingerprint: '' })).toThrow(/no base fingerprint/);
  });
});

describe('journal recovery', () => {
  /** Appends `count` sequences without closing the shard, then returns the journal (the "crash"). */
  function journalWith(count: number): { dir: string; journal: string; seqIds: string[] } {
    const dir = freshDir();
    const writer = new ShardWriter({
      dir,
      sigma: new Sigma('f16'),
      maxShardBytes: 1 << 30,
      maxShardAgeMs: 3_600_000,
      onShardFinished: () => {},
    });
    const seqIds = Array.from({ length: count }, (_, i) => `r${i}`);
    seqIds.forEach((id, i) => writer.append(syntheticSequence(id, 5 + i, 16, { tenantId: 'acme' })));
    const tdir = path.join(dir, tenantDirName('acme'));
    const journal = fs.readdirSync(tdir).find((f) => f.endsWith('.journal'))!;
    return { dir, journal: path.join(tdir, journal), seqIds };
  }

  async function recoverInto(dir: string): Promise<{ writer: ShardWriter; infos: ShardInfo[]; report: Awaited<ReturnType<ShardWriter['recover']>> }> {
    const infos: ShardInfo[] = [];
    const writer = new ShardWriter({
      dir,
      sigma: new Sigma('int8'), // a different σ now: recovery must use the journal's own schema
      maxShardBytes: 1 << 30,
      maxShardAgeMs: 3_600_000,
      onShardFinished: (i) => {
        infos.push(i);
      },
    });
    const report = await writer.recover();
    return { writer, infos, report };
  }

  /** Byte offsets where each record starts (header record first). */
  function recordStarts(file: string): number[] {
    const buf = fs.readFileSync(file);
    const starts: number[] = [];
    for (let pos = 0; pos < buf.length; pos += 16 + buf.readUInt32LE(pos + 8)) starts.push(pos);
    return starts;
  }

  it('rebuilds every complete record into a shard and deletes the journal', async () => {
    const { dir, journal, seqIds } = journalWith(6);
    const { infos, report } = await recoverInto(dir);
    expect(report).toMatchObject({ recoveredSequences: 6, lostSequences: 0, lostBytes: 0 });
    expect(infos).toHaveLength(1);
    expect(fs.existsSync(journal)).toBe(false);
    const shard = readShard(infos[0].path);
    expect(shard.metadata.requestIds).toEqual(seqIds);
    expect(shard.metadata.recovered).toBe(true);
    expect(shard.metadata.dtype).toBe('F16');
    expect(shard.metadata.baseFingerprint).toBe('fp');
  });

  it('counts a torn tail as lost and keeps every record before it', async () => {
    const { dir, journal } = journalWith(8);
    const starts = recordStarts(journal);
    // Cut record 5 (records 1..8 are the sequences) in its middle.
    const cut = starts[6] + 37;
    fs.truncateSync(journal, cut);
    const before = readJournal(journal);
    const { infos, report } = await recoverInto(dir);
    expect(report.recoveredSequences).toBe(5);
    expect(report.lostSequences).toBe(1);
    expect(report.lostBytes).toBe(cut - starts[6]);
    expect(report.recoveredSequences + report.lostSequences).toBe(6); // the 6 records begun in the file
    expect(before.validBytes + before.lostBytes).toBe(cut);
    expect(readShard(infos[0].path).metadata.requestIds).toEqual(['r0', 'r1', 'r2', 'r3', 'r4']);
  });

  it('skips a corrupt record in the middle and resynchronises on the next', async () => {
    const { dir, journal } = journalWith(7);
    const starts = recordStarts(journal);
    const buf = fs.readFileSync(journal);
    buf[starts[3] + 40] ^= 0xff; // sequence r2's payload
    fs.writeFileSync(journal, buf);
    const { infos, report } = await recoverInto(dir);
    expect(report).toMatchObject({ recoveredSequences: 6, lostSequences: 1, lostBytes: starts[4] - starts[3] });
    expect(readShard(infos[0].path).metadata.requestIds).toEqual(['r0', 'r1', 'r3', 'r4', 'r5', 'r6']);
  });

  it('deletes temp files, drops a journal whose shard exists, and never lists a torn shard', async () => {
    const dir = freshDir();
    const infos: ShardInfo[] = [];
    const w = new ShardWriter({
      dir,
      sigma: new Sigma('f16'),
      maxShardBytes: 1 << 30,
      maxShardAgeMs: 3_600_000,
      onShardFinished: (i) => {
        infos.push(i);
      },
    });
    w.append(syntheticSequence('a', 10, 16, { tenantId: 't1' }));
    w.append(syntheticSequence('b', 10, 16, { tenantId: 't2' }));
    await w.flush();
    const [good, other] = infos;
    // Crash between rename and index: journal put back beside its complete shard.
    const journal = good.path.replace(/\.safetensors$/, '.journal');
    fs.writeFileSync(journal, 'stale');
    // A torn copy of a shard under a new id, and an interrupted temp file.
    const tornId = '0000000000001-00000000000000ff';
    const bytes = fs.readFileSync(other.path);
    fs.writeFileSync(path.join(path.dirname(other.path), `${tornId}.safetensors`), bytes.subarray(0, bytes.length - 10));
    fs.writeFileSync(path.join(path.dirname(other.path), `.${tornId}.safetensors.tmp`), bytes.subarray(0, 100));

    const { writer, report } = await recoverInto(dir);
    expect(report).toMatchObject({ tempFilesDeleted: 1, staleJournalsDeleted: 1, recoveredSequences: 0 });
    expect(fs.existsSync(journal)).toBe(false);
    const rescanned: string[] = [];
    const r2 = new ShardWriter({
      dir,
      sigma: new Sigma('f16'),
      maxShardBytes: 1 << 30,
      maxShardAgeMs: 3_600_000,
      onShardFinished: (i) => {
        rescanned.push(i.id);
      },
    });
    const scan = await r2.rescan([other.id]);
    expect(scan.reported.map((i) => i.id)).toEqual([good.id]);
    expect(rescanned).toEqual([good.id]);
    expect(scan.invalid).toHaveLength(1);
    expect(scan.invalid[0].path).toContain(tornId);
    // Reported once per process: a second rescan with a stale known list does not list it again.
    expect((await r2.rescan([other.id])).reported).toHaveLength(0);
    expect(() => validateShardFile(scan.invalid[0].path)).toThrow();
    expect(decodeShardLayer(readShard(good.path)).length).toBe(10 * 16);
    await writer.close();
  });

  it('an index callback that fails keeps the journal; the next start reports the shard exactly once', async () => {
    const dir = freshDir();
    let fail = true;
    const errors: string[] = [];
    const w = new ShardWriter({
      dir,
      sigma: new Sigma('f16'),
      maxShardBytes: 1 << 30,
      maxShardAgeMs: 3_600_000,
      onShardFinished: async () => {
        if (fail) throw new Error('db locked');
      },
      onError: (e) => errors.push(e.message),
    });
    w.append(syntheticSequence('a', 10, 16, { tenantId: 't1' }));
    await w.flush();
    expect(errors).toEqual(['db locked']);
    expect(w.stats().errors).toBe(1);
    const tdir = path.join(dir, 't1');
    expect(fs.readdirSync(tdir).filter((f) => f.endsWith('.journal'))).toHaveLength(1);
    fail = false;
    const { writer, infos, report } = await recoverInto(dir);
    expect(report.staleJournalsDeleted).toBe(1);
    expect(infos).toHaveLength(0);
    const scan = await writer.rescan([]);
    expect(scan.reported).toHaveLength(1);
    expect(fs.readdirSync(tdir).filter((f) => f.endsWith('.journal'))).toHaveLength(0);
  });
});
