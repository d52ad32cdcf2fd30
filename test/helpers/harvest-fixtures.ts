/**
 * Shared fixtures of the harvest tests: the real stories260K base (imported once per machine into the
 * temp folder, with block 2's residual stream exported too), real hidden states on TinyStories text,
 * synthetic sequences, and an independent Python/NumPy safetensors reader.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { importModel } from '../../src/model/import.js';
import { readManifest } from '../../src/model/package-files.js';
import { hiddenStates, openBase, type HarvestBase } from '../../src/harvest/offline.js';
import type { HarvestedSequence } from '../../src/harvest/types.js';
import { SHARED, STORIES_BIN, STORIES_TOK } from './paths.js';

export const TINYSTORIES_VAL = path.join(SHARED, 'data/tinystories/tinystories_val.txt');
const FIXTURE_DIR = path.join(os.tmpdir(), 'carryon-harvest-fixture');

/** The stories260K package, exporting `final` and block 2's residual (layer 2). */
export async function storiesPackage(): Promise<string> {
  const dir = path.join(FIXTURE_DIR, 'stories260K-l2');
  try {
    readManifest(dir);
  } catch {
    await importModel(STORIES_BIN, dir, { tokenizerPath: STORIES_TOK, name: 'stories260K', extraLayerOutputs: [2] });
  }
  return dir;
}

export interface RealSequence {
  ids: number[];
  /** [ids.length × D] per requested layer. */
  hidden: Float32Array[];
}

/** Runs the base over the first `count` TinyStories paragraphs (at most `maxTokens` tokens each). */
export async function realSequences(
  base: HarvestBase,
  count: number,
  layers: Array<'final' | number> = ['final'],
  maxTokens = 256,
): Promise<RealSequence[]> {
  const paragraphs = fs
    .readFileSync(TINYSTORIES_VAL, 'utf8')
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter((p) => p.length > 0)
    .slice(0, count);
  const out: RealSequence[] = [];
  for (const p of paragraphs) {
    const ids = base.tokenizer.encode(p, true).slice(0, maxTokens);
    if (ids.length < 2) continue;
    out.push({ ids, hidden: await hiddenStates(base, ids, layers) });
  }
  return out;
}

export { openBase };

/** A HarvestedSequence from real hidden states: rows are positions 0..n-2, targets the next token. */
export function toHarvested(
  s: RealSequence,
  opts: { requestId: string; tenantId: string | null; layers?: Array<'final' | number>; hiddenSize: number; completionFrom?: number; baseFingerprint?: string },
): HarvestedSequence {
  const rows = s.ids.length - 1;
  const D = opts.hiddenSize;
  return {
    requestId: opts.requestId,
    tenantId: opts.tenantId,
    baseFingerprint: opts.baseFingerprint ?? 'fp',
    carryOnId: null,
    layers: opts.layers ?? ['final'],
    hidden: s.hidden.map((h) => h.slice(0, rows * D)),
    hiddenSize: D,
    tokenIds: Int32Array.from(s.ids.slice(0, rows)),
    targetIds: Int32Array.from(s.ids.slice(1)),
    isCompletion: Uint8Array.from({ length: rows }, (_, p) => (p >= (opts.completionFrom ?? rows) ? 1 : 0)),
    finishedAt: Date.now(),
  };
}

/** Seeded LCG so synthetic data is the same on every run. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Gaussian-ish rows with a few large-magnitude channels, as real LLM residual streams have. */
export function syntheticSequence(
  requestId: string,
  rows: number,
  hiddenSize: number,
  opts: { tenantId?: string | null; seed?: number; layers?: Array<'final' | number>; carryOnId?: string | null; baseFingerprint?: string } = {},
): HarvestedSequence {
  const rand = rng(opts.seed ?? requestId.length * 7919 + rows);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const layers = opts.layers ?? ['final'];
  const hidden = layers.map(() => {
    const h = new Float32Array(rows * hiddenSize);
    for (let i = 0; i < h.length; i++) h[i] = gauss() * (i % hiddenSize < 3 ? 20 : 1);
    return h;
  });
  return {
    requestId,
    tenantId: opts.tenantId ?? null,
    baseFingerprint: opts.baseFingerprint ?? 'fp',
    carryOnId: opts.carryOnId ?? null,
    layers,
    hidden,
    hiddenSize,
    tokenIds: Int32Array.from({ length: rows }, () => Math.floor(rand() * 512)),
    targetIds: Int32Array.from({ length: rows }, () => Math.floor(rand() * 512)),
    isCompletion: Uint8Array.from({ length: rows }, (_, i) => (i >= rows / 2 ? 1 : 0)),
    finishedAt: Date.now(),
  };
}

/** A python3 that has NumPy, or null. */
export function pythonWithNumpy(): string | null {
  for (const py of ['python3', '/usr/bin/python3', 'python']) {
    const r = spawnSync(py, ['-c', 'import numpy'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  return null;
}

/**
 * An independent safetensors reader: only `json`, `struct` and `numpy.frombuffer`, following the
 * format spec (and the reference library's layout checks), not our TypeScript. For each shard it
 * writes the decoded final layer (f32, little-endian) beside `outPrefix` and prints ids and metadata.
 */
const PY_READER = String.raw`
import json, struct, sys
import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64, "U8": np.uint8}
out = []
for i, path in enumerate(sys.argv[2:]):
    buf = open(path, "rb").read()
    (n,) = struct.unpack("<Q", buf[:8])
    assert (8 + n) % 8 == 0, "data must start 8-byte aligned"
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    start = 8 + n
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    pos = 0
    for b, e, k in spans:
        assert b == pos, f"gap or overlap before {k}"
        pos = e
    assert start + pos == len(buf), "file size must match the header"
    t = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        dt = np.dtype(DT[v["dtype"]]).newbyteorder("<")
        count = int(np.prod(v["shape"])) if v["shape"] else 1
        assert (e - b) == count * dt.itemsize
        assert (start + b) % dt.itemsize == 0, f"{k} is not aligned"
        t[k] = np.frombuffer(buf, dtype=dt, count=count, offset=start + b).reshape(v["shape"])
    h = t["hidden.final"]
    if h.dtype == np.int8:
        s = t["hidden.final.scale"].astype(np.float64)
        x = (h.astype(np.float64) * (s / 127.0)[:, None]).astype(np.float32)
    else:
        x = h.astype(np.float32)
    x.astype("<f4").tofile(f"{sys.argv[1]}{i}.f32")
    out.append({
        "metadata": meta,
        "shape": list(x.shape),
        "token_ids": t["token_ids"].tolist(),
        "target_ids": t["target_ids"].tolist(),
        "is_completion": t["is_completion"].tolist(),
        "seq_offsets": t["seq_offsets"].tolist(),
    })
print(json.dumps(out))
`;

export interface PyShard {
  metadata: Record<string, string>;
  shape: [number, number];
  token_ids: number[];
  target_ids: number[];
  is_completion: number[];
  seq_offsets: number[];
  /** Decoded final layer. */
  hidden: Float32Array;
}

export function readShardsWithPython(python: string, files: string[]): PyShard[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'harvest-py-'));
  try {
    const prefix = path.join(dir, 'shard');
    const stdout = execFileSync(python, ['-c', PY_READER, prefix, ...files], { encoding: 'utf8', maxBuffer: 256 << 20 });
    const parsed = JSON.parse(stdout) as Omit<PyShard, 'hidden'>[];
    return parsed.map((p, i) => {
      const bytes = fs.readFileSync(`${prefix}${i}.f32`);
      const hidden = new Float32Array(bytes.length / 4);
      new Uint8Array(hidden.buffer).set(bytes);
      return { ...p, hidden };
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
