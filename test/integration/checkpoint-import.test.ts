/**
 * Checkpoint import: stories260K as llama2.c .bin (+ tok512.bin) and as GGUF must describe the
 * same model bit for bit; our GGUF writer must round-trip and produce files llama.cpp runs.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { getLlama, LlamaLogLevel, type Llama, type Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dequantize, dequantizeQ4_0, GgmlType, quantizeQ4_0 } from '../../src/formats/ggml-quants.js';
import { gguf, GgufValueType, parseGguf, readGguf, shortestF32Decimal, writeGguf, type GgufTypedValue } from '../../src/formats/gguf-file.js';
import { ggufToCheckpoint, writeLlamaGguf } from '../../src/model/gguf.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/formats/half.js';
import { llama2cToCheckpoint } from '../../src/model/llama2c.js';
import type { ImportedCheckpoint, LlamaWeights, Matrix } from '../../src/model/types.js';
import { STORIES_BIN as BIN, STORIES_GGUF as GGUF, STORIES_TOK as TOK } from '../helpers/paths.js';


// From the model README: prompt "Once upon a time" and llama2.c's greedy 60-token continuation.
const PROMPT = [1, 403, 407, 261, 378];
const EXPECTED = [
  432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265,
  282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335,
  312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13, 438, 310,
];

let bin: Awaited<ReturnType<typeof llama2cToCheckpoint>>;
let fromGguf: ImportedCheckpoint;
let tmp: string;

beforeAll(async () => {
  [bin, fromGguf] = await Promise.all([llama2cToCheckpoint(BIN, TOK), ggufToCheckpoint(GGUF)]);
  tmp = mkdtempSync(path.join(tmpdir(), 'ckpt-import-'));
});

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// helpers

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Bitwise equality (distinguishes -0 and NaN payloads), with a readable failure. */
function expectSameBits(actual: Float32Array | Uint8Array, expected: Float32Array | Uint8Array, what: string): void {
  expect(actual.constructor, what).toBe(expected.constructor);
  expect(actual.length, what).toBe(expected.length);
  expect(Buffer.compare(bytesOf(actual), bytesOf(expected)), `${what} differs bitwise`).toBe(0);
}

function expectSameMatrix(actual: Matrix, expected: Matrix, what: string): void {
  expect({ kind: actual.kind, rows: actual.rows, cols: actual.cols }, what).toEqual({
    kind: expected.kind,
    rows: expected.rows,
    cols: expected.cols,
  });
  expectSameBits(actual.data, expected.data, what);
}

/** Every tensor of two checkpoints, including the untied output, compared bitwise. */
function expectSameWeights(actual: LlamaWeights, expected: LlamaWeights): void {
  expectSameBits(actual.tokEmbeddings, expected.tokEmbeddings, 'tokEmbeddings');
  expectSameBits(actual.finalNorm, expected.finalNorm, 'finalNorm');
  expect(actual.layers.length).toBe(expected.layers.length);
  actual.layers.forEach((layer, i) => {
    expectSameBits(layer.attnNorm, expected.layers[i].attnNorm, `layer ${i} attnNorm`);
    expectSameBits(layer.ffnNorm, expected.layers[i].ffnNorm, `layer ${i} ffnNorm`);
    for (const key of ['wq', 'wk', 'wv', 'wo', 'gate', 'down', 'up'] as const) {
      expectSameMatrix(layer[key], expected.layers[i][key], `layer ${i} ${key}`);
    }
  });
  if (expected.output === null) expect(actual.output).toBeNull();
  else expectSameMatrix(actual.output!, expected.output, 'output');
}

function expectSameVocab(actual: ImportedCheckpoint['vocab'], expected: ImportedCheckpoint['vocab']): void {
  if ('model' in actual || 'model' in expected) throw new Error('stories260K has a SentencePiece vocabulary');
  expect(actual.tokens).toEqual(expected.tokens);
  expect(actual.types).toEqual(expected.types);
  expectSameBits(new Float32Array(actual.scores), new Float32Array(expected.scores), 'scores');
  expect({ ...actual, tokens: [], scores: [], types: [] }).toEqual({ ...expected, tokens: [], scores: [], types: [] });
}

// ---------------------------------------------------------------------------------------------

describe('stories260K: llama2.c .bin vs GGUF', () => {
  it('records provenance (sha256 as in the model README)', () => {
    expect(bin.source).toEqual({
      format: 'llama2c',
      path: BIN,
      sha256: 'b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696',
    });
    expect(fromGguf.source).toEqual({
      format: 'gguf',
      path: GGUF,
      sha256: '270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d',
    });
  });

  it('gives the documented config', () => {
    expect(bin.weights.config).toEqual({
      architecture: 'llama',
      hidden_size: 64,
      intermediate_size: 172,
      num_hidden_layers: 5,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 8,
      vocab_size: 512,
      max_position_embeddings: 512,
      rope_theta: 10000,
      rope_style: 'interleaved',
      rope_scaling: null,
      rms_norm_eps: 1e-5,
      attention_bias: false,
      qk_norm: false,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
    });
  });

  it('agrees between formats except context length and the explicit output copy', () => {
    // max_position_embeddings: llama2.c seq_len is 512 (what the model was trained with); the
    // GGUF's llama.context_length is the converter default 2048. Each importer reports its file.
    // tie_word_embeddings: the GGUF stores output.weight explicitly, so it imports untied.
    expect(fromGguf.weights.config.max_position_embeddings).toBe(2048);
    expect(fromGguf.weights.config.tie_word_embeddings).toBe(false);
    expect({ ...fromGguf.weights.config, max_position_embeddings: 512, tie_word_embeddings: true }).toEqual(
      bin.weights.config,
    );
  });

  it('has bit-identical weights for every tensor', () => {
    // The GGUF's output.weight is a copy of the embedding, which the tied .bin shares.
    expect(bin.weights.output).toBeNull();
    const output = fromGguf.weights.output!;
    expect(output.kind).toBe('f32');
    expectSameBits(output.data, bin.weights.tokEmbeddings, 'GGUF output.weight vs .bin embedding');
    expectSameWeights({ ...fromGguf.weights, output: null }, bin.weights);
  });

  it('has identical vocab pieces, scores and types', () => {
    expectSameVocab(bin.vocab, fromGguf.vocab);
    expect(bin.vocab.tokens.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>']);
    expect(bin.vocab.tokens.slice(258, 262)).toEqual(['<0xFF>', '\u2581t', 'he', '\u2581a']);
    expect(bin.vocab.types.slice(0, 4)).toEqual([2, 3, 3, 6]);
    expect(bin.vocab.types.filter((t) => t === 6)).toHaveLength(256);
    expect({ bos: bin.vocab.bos, eos: bin.vocab.eos, unk: bin.vocab.unk, addSpacePrefix: bin.vocab.addSpacePrefix }).toEqual({
      bos: 1,
      eos: 2,
      unk: 0,
      addSpacePrefix: true,
    });
  });
});

describe('llama2.c layouts', () => {
  /** Re-serializes a checkpoint in llama2.c's layouts to exercise the other code paths. */
  function floatsOf(parts: Float32Array[]): Uint8Array {
    return Buffer.concat(parts.map((p) => Buffer.from(bytesOf(p))));
  }
  const f32 = (m: Matrix): Float32Array => m.data as Float32Array;

  function header(w: LlamaWeights, vocabSize: number): Int32Array {
    const c = w.config;
    return Int32Array.of(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, vocabSize, c.max_position_embeddings);
  }

  function untiedStories(): LlamaWeights {
    const output = new Float32Array(bin.weights.tokEmbeddings.map((v, i) => v * 0.5 + (i % 7)));
    return {
      ...bin.weights,
      config: { ...bin.weights.config, tie_word_embeddings: false },
      output: { kind: 'f32', rows: 512, cols: 64, data: output },
    };
  }

  it('reads a legacy v0 file with an untied classifier (negative vocab_size)', async () => {
    const w = untiedStories();
    const L = w.layers;
    const c = w.config;
    const freqCis = new Float32Array(c.max_position_embeddings * c.head_dim); // real + imag halves
    const body = floatsOf([
      w.tokEmbeddings,
      ...L.map((l) => l.attnNorm),
      ...L.map((l) => f32(l.wq)),
      ...L.map((l) => f32(l.wk)),
      ...L.map((l) => f32(l.wv)),
      ...L.map((l) => f32(l.wo)),
      ...L.map((l) => l.ffnNorm),
      ...L.map((l) => f32(l.gate)),
      ...L.map((l) => f32(l.down)),
      ...L.map((l) => f32(l.up)),
      w.finalNorm,
      freqCis,
      f32(w.output!),
    ]);
    const file = path.join(tmp, 'untied-v0.bin');
    writeFileSync(file, Buffer.concat([bytesOf(header(w, -512)), body]));
    const ckpt = await llama2cToCheckpoint(file, TOK);
    expect(ckpt.weights.config).toEqual(w.config);
    expectSameWeights(ckpt.weights, w);
  });

  it('reads an "ak42" version-1 file (norms first, 256-byte header)', async () => {
    const w = untiedStories();
    const L = w.layers;
    const head = new Uint8Array(256);
    const view = new DataView(head.buffer);
    view.setUint32(0, 0x616b3432, true);
    view.setInt32(4, 1, true);
    header(w, 512).forEach((v, i) => view.setInt32(8 + i * 4, v, true));
    head[36] = 0; // shared_classifier = false
    const body = floatsOf([
      ...L.map((l) => l.attnNorm),
      ...L.map((l) => l.ffnNorm),
      w.finalNorm,
      w.tokEmbeddings,
      ...L.map((l) => f32(l.wq)),
      ...L.map((l) => f32(l.wk)),
      ...L.map((l) => f32(l.wv)),
      ...L.map((l) => f32(l.wo)),
      ...L.map((l) => f32(l.gate)),
      ...L.map((l) => f32(l.down)),
      ...L.map((l) => f32(l.up)),
      f32(w.output!),
    ]);
    const file = path.join(tmp, 'untied-v1.bin');
    writeFileSync(file, Buffer.concat([head, body]));
    const ckpt = await llama2cToCheckpoint(file, TOK);
    expect(ckpt.weights.config).toEqual(w.config);
    expectSameWeights(ckpt.weights, w);
  });

  it('rejects version-2 (int8) files and truncated files with clear errors', async () => {
    const v2 = path.join(tmp, 'v2.bin');
    const head = new Uint8Array(256);
    new DataView(head.buffer).setUint32(0, 0x616b3432, true);
    new DataView(head.buffer).setInt32(4, 2, true);
    writeFileSync(v2, head);
    await expect(llama2cToCheckpoint(v2, TOK)).rejects.toThrow(/version-2/);

    const truncated = path.join(tmp, 'truncated.bin');
    writeFileSync(truncated, readFileSync(BIN).subarray(0, 50_000));
    await expect(llama2cToCheckpoint(truncated, TOK)).rejects.toThrow(/50000 bytes, but the llama2.c v0 header describes 1056540/);
  });
});

describe('GGUF writer', () => {
  it('round-trips a checkpoint through writeLlamaGguf f32 bit for bit', async () => {
    for (const [name, ckpt] of [['tied (.bin)', bin], ['untied (.gguf)', fromGguf]] as const) {
      const file = path.join(tmp, `roundtrip-${name.split(' ')[0]}.gguf`);
      await writeLlamaGguf(file, ckpt, { quant: 'f32' });
      const back = await ggufToCheckpoint(file);
      expect(back.weights.config, name).toEqual(ckpt.weights.config);
      expectSameWeights(back.weights, ckpt.weights);
      expectSameVocab(back.vocab, ckpt.vocab);
    }
  });

  it('writes Q4_0 matrices where rows hold whole blocks, F32 elsewhere', async () => {
    const file = path.join(tmp, 'stories-q4_0.gguf');
    await writeLlamaGguf(file, fromGguf, { quant: 'q4_0' });
    const parsed = await readGguf(file);
    const typeOf = (name: string) => parsed.requireTensor(name).type;
    expect(parsed.metadata.get('general.file_type')).toBe(2);
    expect(typeOf('blk.0.attn_q.weight')).toBe(GgmlType.Q4_0);
    expect(typeOf('output.weight')).toBe(GgmlType.Q4_0);
    expect(typeOf('blk.0.ffn_down.weight')).toBe(GgmlType.F32); // 172 columns: not a multiple of 32
    expect(typeOf('token_embd.weight')).toBe(GgmlType.F32);

    const back = await ggufToCheckpoint(file);
    const original = fromGguf.weights.layers[2];
    const layer = back.weights.layers[2];
    expect(layer.wq.kind).toBe('q4_0');
    expectSameBits(layer.wq.data, quantizeQ4_0(original.wq.data as Float32Array), 'q4_0 wq');
    expectSameMatrix(layer.down, original.down, 'f32 fallback down');
    expectSameBits(back.weights.tokEmbeddings, fromGguf.weights.tokEmbeddings, 'embedding');

    // Re-exporting the Q4_0 checkpoint keeps the blocks as they are.
    const again = path.join(tmp, 'stories-q4_0-again.gguf');
    await writeLlamaGguf(again, back, { quant: 'q4_0' });
    expectSameWeights((await ggufToCheckpoint(again)).weights, back.weights);
  });

  it('round-trips every metadata type, alignment and tensor storage type', async () => {
    const metadata = new Map<string, GgufTypedValue>([
      ['general.architecture', gguf.str('test')],
      ['general.alignment', gguf.u32(64)],
      ['t.u8', gguf.u8(255)],
      ['t.i8', gguf.i8(-128)],
      ['t.u16', gguf.u16(65535)],
      ['t.i16', gguf.i16(-32768)],
      ['t.u32', gguf.u32(4294967295)],
      ['t.i32', gguf.i32(-2147483648)],
      ['t.f32', gguf.f32(0.1)],
      ['t.f64', gguf.f64(0.1)],
      ['t.u64', gguf.u64(18446744073709551615n)],
      ['t.i64', gguf.i64(-5)],
      ['t.bool', gguf.bool(true)],
      ['t.str', gguf.str('héllo ▁ 😀')],
      ['t.strs', gguf.array(GgufValueType.STRING, ['a', '', 'ü'])],
      ['t.f32s', gguf.array(GgufValueType.FLOAT32, [1.5, -0, 3])],
      // Big enough (> 64 KiB) to make the header buffer grow mid-write.
      ['t.many', gguf.array(GgufValueType.STRING, Array.from({ length: 20000 }, (_, i) => `piece ▁${i}`))],
      ['t.u64s', gguf.array(GgufValueType.UINT64, Array.from({ length: 20000 }, (_, i) => BigInt(i) * 3n ** 30n))],
      ['t.f32many', gguf.array(GgufValueType.FLOAT32, Array.from({ length: 200000 }, (_, i) => i / 4))],
      ['t.nested', { type: GgufValueType.ARRAY, elementType: GgufValueType.ARRAY, value: [gguf.array(GgufValueType.INT32, [1, -2]), gguf.array(GgufValueType.STRING, ['x'])] }],
    ]);
    const values = Float32Array.from({ length: 96 }, (_, i) => Math.sin(i) * 3);
    const file = path.join(tmp, 'all-types.gguf');
    await writeGguf(file, {
      metadata,
      tensors: [
        { name: 'a.f32', dims: [32, 3], type: GgmlType.F32, data: values },
        { name: 'b.f16', dims: [96], type: GgmlType.F16, data: values },
        { name: 'c.bf16', dims: [96], type: GgmlType.BF16, data: values },
        { name: 'd.q4_0', dims: [32, 3], type: GgmlType.Q4_0, data: values },
        { name: 'e.raw', dims: [5], type: GgmlType.I8, data: Uint8Array.of(1, 2, 3, 4, 5) },
      ],
    });
    const f = await readGguf(file);
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(64);
    expect(f.dataOffset % 64).toBe(0);
    expect(f.tensors.every((t) => t.offset % 64 === 0)).toBe(true);
    expect(f.typedMetadata.get('t.f32')).toEqual({ type: GgufValueType.FLOAT32, value: Math.fround(0.1) });
    const expectedPlain = { ...Object.fromEntries([...metadata].map(([k, v]) => [k, v.value])) };
    expect(f.metadata.get('t.u64')).toBe(18446744073709551615n); // not a safe integer: stays bigint
    expect(f.metadata.get('t.i64')).toBe(-5);
    expect(f.typedMetadata.get('t.u64s')).toEqual(metadata.get('t.u64s'));
    expect(f.metadata.get('t.nested')).toEqual([[1, -2], ['x']]);
    for (const key of ['t.u8', 't.i8', 't.u16', 't.i16', 't.u32', 't.i32', 't.f64', 't.bool', 't.str', 't.strs', 't.many', 't.f32many']) {
      expect(f.metadata.get(key), key).toEqual(expectedPlain[key]);
    }
    expect(Object.is((f.metadata.get('t.f32s') as number[])[1], -0)).toBe(true);

    expectSameBits(f.tensorF32('a.f32'), values, 'f32');
    expect(Array.from(f.tensorF32('b.f16'))).toEqual(Array.from(values, (v) => f16ToF32(f32ToF16(v))));
    expect(Array.from(f.tensorF32('c.bf16'))).toEqual(Array.from(values, (v) => bf16ToF32(f32ToBf16(v))));
    expectSameBits(f.tensorBytes('d.q4_0'), quantizeQ4_0(values), 'q4_0');
    expect(Array.from(f.tensorBytes('e.raw'))).toEqual([1, 2, 3, 4, 5]);
    expect(() => f.tensorF32('e.raw')).toThrow(/e\.raw.*I8/);
  });

  it('reads v2 files (same layout as v3 for little endian) and rejects others', async () => {
    const image = new Uint8Array(readFileSync(GGUF));
    new DataView(image.buffer).setUint32(4, 2, true);
    const v2 = parseGguf(image, 'v2 copy');
    expect(v2.version).toBe(2);
    expectSameBits(v2.tensorF32('output_norm.weight'), fromGguf.weights.finalNorm, 'v2 tensor');
    new DataView(image.buffer).setUint32(4, 1, true);
    expect(() => parseGguf(image, 'v1 copy')).toThrow(/version 1/);
    new DataView(image.buffer).setUint32(0, 0x12345678, true);
    expect(() => parseGguf(image, 'junk')).toThrow(/not a GGUF file/);
  });

  it('refuses values that do not fit their declared type', async () => {
    const bad = new Map([['x', gguf.u8(256)]]);
    await expect(writeGguf(path.join(tmp, 'bad.gguf'), { metadata: bad, tensors: [] })).rejects.toThrow(/x/);

    // A tensor that fails mid-write leaves neither the target nor a partial file behind.
    const target = path.join(tmp, 'failed', 'bad-tensor.gguf');
    mkdirSync(path.dirname(target));
    const tensors = [{ name: 'w', dims: [32], type: GgmlType.F32, data: new Float32Array(31) }];
    await expect(writeGguf(target, { metadata: new Map(), tensors })).rejects.toThrow(/w: 31 values/);
    expect(readdirSync(path.dirname(target))).toEqual([]);
  });

  it('refuses GGUF files of other architectures clearly', async () => {
    const file = path.join(tmp, 'other-arch.gguf');
    await writeGguf(file, { metadata: new Map([['general.architecture', gguf.str('gemma2')]]), tensors: [] });
    await expect(ggufToCheckpoint(file)).rejects.toThrow(/general.architecture is "gemma2"; supported GGUF architectures: llama, qwen2, qwen3/);
  });
});

describe('Q4_0 quantization (ggml quantize_row_q4_0_ref)', () => {
  it('packs a hand-computed block: f16 scale, low nibbles = elements 0..15, high = 16..31', () => {
    // max-|x| element is -16, so d = -16 / -8 = 2 and q = trunc(x / 2 + 8.5), capped at 15.
    const x = Float32Array.from({ length: 32 }, (_, j) => j - 16);
    const q = quantizeQ4_0(x);
    expect(q.length).toBe(18);
    expect(q[0] | (q[1] << 8)).toBe(0x4000); // f16(2.0)
    const nibbles = Array.from({ length: 32 }, (_, j) => Math.min(15, Math.trunc((j - 16) / 2 + 8.5)));
    for (let j = 0; j < 16; j++) expect(q[2 + j], `byte ${j}`).toBe(nibbles[j] | (nibbles[j + 16] << 4));
    expect(q[2]).toBe(0x80); // x[0] = -16 -> 0, x[16] = 0 -> 8

    // All zeros: d = 0 / -8 is -0 in C too, stored as f16 0x8000; every level is 8.
    const zeros = quantizeQ4_0(new Float32Array(32));
    expect(Array.from(zeros)).toEqual([0x00, 0x80, ...new Array<number>(16).fill(0x88)]);
  });

  it('stays within the ggml error bound', () => {
    let seed = 12345;
    const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    const x = Float32Array.from({ length: 32 * 500 }, (_, i) => random() * 10 ** ((i >> 5) % 7 - 3));
    const q = quantizeQ4_0(x);
    const y = dequantizeQ4_0(q, x.length);
    expectSameBits(dequantize(GgmlType.Q4_0, q, x.length), y, 'generic dequantize');
    for (let block = 0; block < 500; block++) {
      let max = 0;
      for (let j = 0; j < 32; j++) if (Math.abs(x[block * 32 + j]) > Math.abs(max)) max = x[block * 32 + j];
      const d = Math.fround(max / -8);
      const d16 = f16ToF32(q[block * 18] | (q[block * 18 + 1] << 8));
      // Rounding to the nearest level costs |d|/2; using the f16 scale adds at most 8 |d - d16|.
      // The one exception is the level-16 clamp (values of the opposite sign to max, near |max|),
      // which can cost a full step |d|.
      const scaleError = 8 * Math.abs(d - d16);
      const tiny = 1e-6 * Math.abs(d);
      for (let j = 0; j < 32; j++) {
        const i = block * 32 + j;
        const err = Math.abs(x[i] - y[i]);
        const clamped = x[i] / d > 7.5;
        expect(err, `block ${block} elem ${j}`).toBeLessThanOrEqual((clamped ? Math.abs(d) : Math.abs(d) / 2) + scaleError + tiny);
      }
    }
  });
});

describe('K-quant dequantization', () => {
  /** Deterministic blocks: bytes (i*37+11) & 255, with the f16 scale fields overwritten. */
  function blocks(count: number, size: number, f16Fields: number[], f16Bits: number[]): Uint8Array {
    const out = Uint8Array.from({ length: count * size }, (_, i) => (i * 37 + 11) & 255);
    let next = 0;
    for (let b = 0; b < count; b++) {
      for (const at of f16Fields) {
        out[b * size + at] = f16Bits[next] & 0xff;
        out[b * size + at + 1] = f16Bits[next++] >> 8;
      }
    }
    return out;
  }
  const sha256 = (a: Float32Array) => createHash('sha256').update(bytesOf(a)).digest('hex');

  // Expected values computed with llama.cpp's gguf-py (gguf/quants.py) on the same bytes.
  it('Q4_K matches the reference', () => {
    const q = blocks(3, 144, [0, 2], [8780, 7756, 42572, 41548, 10425, 9401]);
    const y = dequantize(GgmlType.Q4_K, q, 3 * 256);
    expect([0, 1, 100, 255, 256, 700].map((i) => y[i])).toEqual([
      3.8802032470703125, -0.3136138916015625, 1.168365478515625, 0.5964813232421875, -12.679840087890625, 3.0992431640625,
    ]);
    expect(sha256(y)).toBe('9338f7cb38a0965023f2f79b2d5ab3a9b6cb75ec3a215cf764499f4abf425ea1');
  });

  it('Q6_K matches the reference', () => {
    const q = blocks(3, 210, [208], [8780, 42572, 10425]);
    const y = dequantize(GgmlType.Q6_K, q, 3 * 256);
    expect([0, 1, 100, 255, 256, 700].map((i) => y[i])).toEqual([
      -17.599273681640625, 20.8583984375, 31.029327392578125, -0.7379150390625, 10.01104736328125, 8.92877197265625,
    ]);
    expect(sha256(y)).toBe('82bece46076be3cf4be885ed49927ef5480c73fcb8eb7c9bebebdd9785859afa');
  });

  it('names the tensor and type it cannot dequantize', () => {
    expect(() => dequantize(GgmlType.Q5_K, new Uint8Array(176), 256, 'blk.0.attn_q.weight')).toThrow(
      /blk\.0\.attn_q\.weight.*Q5_K/,
    );
  });
});

describe('f16 / bf16 helpers', () => {
  it('converts the edge cases exactly', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // largest finite
      [65519.99, 0x7bff],
      [65520, 0x7c00], // halfway to 2^16 rounds (to even) to infinity
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [1023 * 2 ** -24, 0x03ff], // largest subnormal
      [2 ** -25, 0x0000], // halfway to the smallest subnormal: ties to even (zero)
      [Math.fround(2 ** -25 * 1.0000001), 0x0001],
      [3 * 2 ** -25, 0x0002], // halfway between subnormals 1 and 2: ties to even
      [1 + 2 ** -11, 0x3c00], // halfway between 1 and next: ties to even
      [1 + 3 * 2 ** -11, 0x3c02],
      [1 / 3, 0x3555],
      [1e-10, 0x0000],
      [1e10, 0x7c00],
    ];
    for (const [value, bits] of cases) {
      expect(f32ToF16(value), `f32ToF16(${value})`).toBe(bits);
    }
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
    expect(f16ToF32(0x0001)).toBe(2 ** -24);
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0xfc00)).toBe(-Infinity);
    expect(f16ToF32(0x7e00)).toBeNaN();
    expect(f16ToF32(f32ToF16(NaN))).toBeNaN();
  });

  it('round-trips all f16 values and rounds every midpoint to even', () => {
    for (let h = 0; h < 0x10000; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (!isNaN && f32ToF16(f16ToF32(h)) !== h) throw new Error(`round trip of 0x${h.toString(16)}`);
    }
    // Midpoints between neighbouring positive finite f16 values are exact f32 numbers.
    const bits = new Uint32Array(1);
    const asF32 = new Float32Array(bits.buffer);
    const below = (x: number): number => {
      asF32[0] = x;
      bits[0] -= 1; // the next f32 toward zero (x > 0)
      return asF32[0];
    };
    for (let h = 0; h < 0x7bff; h++) {
      const mid = (f16ToF32(h) + f16ToF32(h + 1)) / 2;
      const even = h % 2 === 0 ? h : h + 1;
      if (f32ToF16(mid) !== even) throw new Error(`midpoint after 0x${h.toString(16)}`);
      if (h > 0 && f32ToF16(below(mid)) !== h) throw new Error(`just below midpoint after 0x${h.toString(16)}`);
    }
  });

  it('converts bf16 with round-to-nearest-even', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(bf16ToF32(f32ToBf16(NaN))).toBeNaN();
  });

  it('recovers the decimal an f32 metadata value was written from', () => {
    expect(shortestF32Decimal(Math.fround(1e-5))).toBe(1e-5);
    expect(shortestF32Decimal(Math.fround(1e-6))).toBe(1e-6);
    expect(shortestF32Decimal(Math.fround(500000))).toBe(500000);
    expect(shortestF32Decimal(Math.fround(0.1))).toBe(0.1);
  });
});

describe('llama.cpp runs our GGUF files', () => {
  let llama: Llama;

  beforeAll(async () => {
    llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  });

  afterAll(async () => {
    await llama?.dispose();
  });

  async function greedy(modelPath: string, prompt: number[], n: number): Promise<number[]> {
    const model = await llama.loadModel({ modelPath });
    try {
      const context = await model.createContext({ contextSize: 128, batchSize: 32, threads: 1 });
      try {
        const out: number[] = [];
        for await (const token of context.getSequence().evaluate(prompt as Token[], { temperature: 0 })) {
          out.push(token);
          if (out.length >= n) break;
        }
        return out;
      } finally {
        await context.dispose();
      }
    } finally {
      await model.dispose();
    }
  }

  it('reproduces the README greedy continuation from the upstream GGUF (harness check)', async () => {
    expect(await greedy(GGUF, PROMPT, EXPECTED.length)).toEqual(EXPECTED);
  });

  it('reproduces it from the .bin checkpoint exported by writeLlamaGguf (f32)', async () => {
    const file = path.join(tmp, 'from-bin-f32.gguf');
    await writeLlamaGguf(file, bin, { quant: 'f32' });
    expect(await greedy(file, PROMPT, EXPECTED.length)).toEqual(EXPECTED);
  });

  it('loads and runs the Q4_0 export', async () => {
    const file = path.join(tmp, 'from-bin-q4_0.gguf');
    await writeLlamaGguf(file, bin, { quant: 'q4_0' });
    const tokens = await greedy(file, PROMPT, 20);
    expect(tokens).toHaveLength(20);
    expect(tokens.every((t) => Number.isInteger(t) && t >= 0 && t < 512)).toBe(true);
  });
});
