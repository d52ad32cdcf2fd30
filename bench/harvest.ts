/**
 * Harvest benchmark: σ reconstruction error and bytes per token on real stories260K hidden states
 * (D=64, final layer and block 2's residual stream) and synthetic D=576 rows (SmolLM2-135M's width,
 * Gaussian with a few 20× outlier channels, as real residual streams have), then write throughput of
 * the shard writer alone and of the whole Harvester (worker thread, σ, journal, shard files).
 *
 *   node --import tsx bench/harvest.ts [--paragraphs 200] [--tokens 200000]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Harvester } from '../src/harvest/harvester.js';
import { hiddenStates, openBase } from '../src/harvest/offline.js';
import { ShardWriter } from '../src/harvest/shard-writer.js';
import { Sigma, decodeRows, reconstructionError, SIGMA_CODECS } from '../src/harvest/sigma.js';
import type { HarvestedSequence } from '../src/harvest/types.js';
import { importModel } from '../src/model/import.js';
import { concatFloat32 } from '../src/core/float-arrays.js';
import { readManifest } from '../src/model/package-files.js';
import { mulberry32 } from './lib/rng.js';

const { values } = parseArgs({
  options: { paragraphs: { type: 'string', default: '200' }, tokens: { type: 'string', default: '200000' } },
});
const SHARED = path.resolve(import.meta.dirname, '../../shared');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-harvest-'));

async function storiesPackage(): Promise<string> {
  const dir = path.join(os.tmpdir(), 'carryon-harvest-fixture', 'stories260K-l2');
  try {
    readManifest(dir);
  } catch {
    const src = path.join(SHARED, 'models/stories260K');
    await importModel(path.join(src, 'stories260K.bin'), dir, { tokenizerPath: path.join(src, 'tok512.bin'), extraLayerOutputs: [2] });
  }
  return dir;
}

interface Rows {
  label: string;
  D: number;
  /** Sequences of [rows × D] f32 hidden states. */
  seqs: Float32Array[];
  ids: Int32Array[];
}

async function realRows(paragraphs: number): Promise<Rows[]> {
  const base = await openBase(await storiesPackage());
  const text = fs.readFileSync(path.join(SHARED, 'data/tinystories/tinystories_val.txt'), 'utf8');
  const paras = text.split(/\n\s*\n/).map((p) => p.trim()).filter(Boolean).slice(0, paragraphs);
  const final: Rows = { label: 'stories260K final (D=64)', D: 64, seqs: [], ids: [] };
  const layer2: Rows = { label: 'stories260K layer 2 residual (D=64)', D: 64, seqs: [], ids: [] };
  for (const p of paras) {
    const ids = base.tokenizer.encode(p, true).slice(0, 512);
    const [h, l2] = await hiddenStates(base, ids, ['final', 2]);
    final.seqs.push(h);
    layer2.seqs.push(l2);
    final.ids.push(Int32Array.from(ids));
    layer2.ids.push(Int32Array.from(ids));
  }
  await base.runner.release();
  return [final, layer2];
}

function syntheticRows(D: number, tokens: number, seqLen = 256): Rows {
  const rand = mulberry32(42);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const out: Rows = { label: `synthetic, 3 outlier channels (D=${D})`, D, seqs: [], ids: [] };
  for (let done = 0; done < tokens; done += seqLen) {
    const h = new Float32Array(seqLen * D);
    for (let i = 0; i < h.length; i++) h[i] = gauss() * (i % D < 3 ? 20 : 1);
    out.seqs.push(h);
    out.ids.push(Int32Array.from({ length: seqLen }, () => Math.floor(rand() * 50000)));
  }
  return out;
}

/** A random [d, D] matrix with orthonormal rows (Gram–Schmidt), written as raw f32. */
function orthonormalProjection(d: number, D: number): string {
  const rand = mulberry32(7);
  const p = new Float64Array(d * D).map(() => rand() - 0.5);
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < i; k++) {
      let dot = 0;
      for (let j = 0; j < D; j++) dot += p[i * D + j] * p[k * D + j];
      for (let j = 0; j < D; j++) p[i * D + j] -= dot * p[k * D + j];
    }
    let norm = 0;
    for (let j = 0; j < D; j++) norm += p[i * D + j] ** 2;
    for (let j = 0; j < D; j++) p[i * D + j] /= Math.sqrt(norm);
  }
  const file = path.join(work, `proj-${d}x${D}.f32`);
  fs.writeFileSync(file, Buffer.from(Float32Array.from(p).buffer));
  return file;
}

function errorTable(sets: Rows[]): void {
  console.log('\nσ reconstruction error (relative RMS ‖x−x̂‖/‖x‖ over all values; worst single row; max |x−x̂|; max |x|)');
  console.log('| data | σ | rel RMS | worst row rel | max abs err | max abs x |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const set of sets) {
    const x = concatFloat32(set.seqs);
    const rows = x.length / set.D;
    const variants: Array<[string, Sigma, Float32Array]> = SIGMA_CODECS.map((c) => [c, new Sigma(c), x]);
    // With a projection the error is measured in the projected space (σ does not invert it).
    const d = set.D / 2;
    const proj = Sigma.load({ codec: 'none', projectionPath: orthonormalProjection(d, set.D) });
    const y = decodeRows(proj.encode(x, rows, set.D));
    for (const c of ['f16', 'int8'] as const) {
      variants.push([`${c} + projection ${set.D}→${d}`, Sigma.load({ codec: c, projectionPath: orthonormalProjection(d, set.D) }), y]);
    }
    for (const [name, sigma, ref] of variants) {
      const xHat = decodeRows(sigma.encode(x, rows, set.D));
      const e = reconstructionError(ref, xHat, ref.length / rows);
      const maxX = ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      console.log(`| ${set.label} | ${name} | ${e.relRms.toExponential(2)} | ${e.worstRowRel.toExponential(2)} | ${e.maxAbs.toExponential(2)} | ${maxX.toFixed(2)} |`);
    }
  }
}

function sequencesOf(set: Rows): HarvestedSequence[] {
  return set.seqs.map((h, i) => {
    const rows = h.length / set.D;
    return {
      requestId: `bench-${i}`,
      tenantId: 'bench',
      baseFingerprint: 'bench',
      carryOnId: null,
      layers: ['final'],
      hidden: [h],
      hiddenSize: set.D,
      tokenIds: set.ids[i].subarray(0, rows),
      targetIds: set.ids[i].subarray(0, rows),
      isCompletion: new Uint8Array(rows),
      finishedAt: Date.now(),
    };
  });
}

const clone = (s: HarvestedSequence): HarvestedSequence => ({
  ...s,
  hidden: s.hidden.map((h) => h.slice()),
  tokenIds: s.tokenIds.slice(),
  targetIds: s.targetIds.slice(),
  isCompletion: s.isCompletion.slice(),
});

async function throughput(sets: Rows[]): Promise<void> {
  console.log('\nbytes per token on disk (shard bytes / rows, headers included) and write throughput');
  console.log('(input MB/s counts the f32 hidden states handed in; "writer" is ShardWriter in-thread: σ + journal + shard file;');
  console.log(' "harvester" is offer() → worker → flush(), end to end)');
  console.log('| data | σ | bytes/token | writer tokens/s | writer input MB/s | harvester tokens/s | harvester input MB/s |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const set of sets) {
    const seqs = sequencesOf(set);
    const tokens = seqs.reduce((a, s) => a + s.tokenIds.length, 0);
    const inputMB = (tokens * set.D * 4) / 1e6;
    for (const codec of SIGMA_CODECS) {
      const dir1 = fs.mkdtempSync(path.join(work, 'w-'));
      let bytes = 0;
      let rows = 0;
      const writer = new ShardWriter({
        dir: dir1,
        sigma: new Sigma(codec),
        maxShardBytes: 64 << 20,
        maxShardAgeMs: 3_600_000,
        onShardFinished: (info) => {
          bytes += info.bytes;
          rows += info.rows;
        },
      });
      const copies = seqs.map(clone);
      let t = performance.now();
      for (const s of copies) writer.append(s);
      await writer.close();
      const writerS = (performance.now() - t) / 1000;

      const dir2 = fs.mkdtempSync(path.join(work, 'h-'));
      const h = new Harvester({
        dir: dir2,
        sigma: codec,
        maxQueueBytes: 4 * 2 ** 30,
        maxShardBytes: 64 << 20,
        maxShardAgeMs: 3_600_000,
        onShardFinished: () => {},
      });
      await h.ready();
      const copies2 = seqs.map(clone);
      t = performance.now();
      for (const s of copies2) if (!h.offer(s)) throw new Error('queue full in benchmark');
      await h.flush();
      const harvS = (performance.now() - t) / 1000;
      await h.close();
      fs.rmSync(dir1, { recursive: true, force: true });
      fs.rmSync(dir2, { recursive: true, force: true });
      console.log(
        `| ${set.label} | ${codec} | ${(bytes / rows).toFixed(1)} | ${fmt(tokens / writerS)} | ${(inputMB / writerS).toFixed(0)} | ` +
          `${fmt(tokens / harvS)} | ${(inputMB / harvS).toFixed(0)} |`,
      );
    }
  }
}


function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(0)}k`;
}

try {
  const real = await realRows(Number(values.paragraphs));
  console.log(`real hidden states: ${real[0].seqs.length} TinyStories paragraphs, ${real[0].seqs.reduce((a, s) => a + s.length / 64, 0)} tokens`);
  const synthetic = syntheticRows(576, Number(values.tokens) / 4);
  errorTable([...real, synthetic]);
  await throughput([{ ...real[0] }, syntheticRows(64, Number(values.tokens)), syntheticRows(576, Number(values.tokens) / 4)]);
  console.log(`\nnode ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, shards in ${os.tmpdir()}`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
