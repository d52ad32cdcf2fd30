/**
 * GGUF import of each family, without an engine: the file holds exactly the weights written (q/k
 * rows, biases and norms of qwen2/qwen3 go through rotate-half order in the file and come back in
 * our interleaved order, Q4_0 rows move as whole blocks), llama3 RoPE scaling comes back as the
 * rope_freqs factors, and files the graph cannot serve are refused naming what is wrong.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gguf, readGguf, writeGguf, type GgufTypedValue } from '../../src/formats/gguf-file.js';
import { llama3RopeFactors } from '../../src/model/gguf-architectures.js';
import { ggufToCheckpoint } from '../../src/model/gguf.js';
import { quantizeWeights } from '../../src/model/import.js';
import type { LlamaWeights } from '../../src/model/types.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { randomFamilyWeights, type Family } from '../helpers/model-families.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gguf-families-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * The written weights as a GGUF carries them: llama3 scaling as the factors the converter computes,
 * and Llama 3's EOS as its tokenizer_config.json names it (<|end_of_text|>, 128001), which is what
 * convert_hf_to_gguf.py writes; <|eot_id|> (128009) is an end token besides (gguf-bpe-tokenizer.test.ts).
 */
function expectedAfterImport(w: LlamaWeights): LlamaWeights {
  const c = w.config;
  if (c.rope_scaling?.rope_type !== 'llama3') return w;
  return { ...w, config: { ...c, eos_token_id: 128001, rope_scaling: { rope_type: 'factors', factors: Array.from(llama3RopeFactors(c)) } } };
}

/**
 * Bitwise equality tensor by tensor, naming the first tensor that differs (a deep toEqual over
 * millions of elements is slow, and its diff unreadable).
 */
function expectSameWeights(actual: LlamaWeights, expected: LlamaWeights): void {
  expect(actual.config).toEqual(expected.config);
  const tensors = (w: LlamaWeights): [string, ArrayBufferView | null | undefined][] => [
    ['tokEmbeddings', w.tokEmbeddings],
    ['finalNorm', w.finalNorm],
    ['output', w.output?.data],
    ...w.layers.flatMap((l, i) =>
      Object.entries(l).map(([k, v]): [string, ArrayBufferView] => [`layers.${i}.${k}`, 'kind' in v ? (v as { data: ArrayBufferView }).data : (v as ArrayBufferView)]),
    ),
  ];
  const bytes = (v: ArrayBufferView) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  const want = new Map(tensors(expected));
  const got = tensors(actual);
  expect(got.map(([k]) => k).sort()).toEqual([...want.keys()].sort());
  for (const [name, value] of got) {
    const other = want.get(name);
    if (!value || !other) expect(value ?? null, name).toBe(other ?? null);
    else expect(bytes(value).equals(bytes(other)), name).toBe(true);
  }
  actual.layers.forEach((l, i) => expect(l.wq.kind, `layers.${i}.wq kind`).toBe(expected.layers[i].wq.kind));
}

describe.each(['llama3', 'qwen2', 'qwen3', 'llama2'] as const)('%s GGUF', (family: Family) => {
  it('imports to exactly the weights written, f32', async () => {
    const file = path.join(tmp, `${family}-f32.gguf`);
    const written = await writeFamilyGguf(family, file);
    const { weights } = await ggufToCheckpoint(file);
    expectSameWeights(weights, expectedAfterImport(written));
  });

  it('imports to exactly the Q4_0 blocks written', async () => {
    const file = path.join(tmp, `${family}-q4_0.gguf`);
    // Quantized before writing, so the file's blocks are known; the writer stores them as they are.
    const q4 = quantizeWeights(randomFamilyWeights(family));
    const written = family === 'qwen2' || family === 'qwen3' ? { ...q4, output: null } : q4; // tied heads stay tied
    await writeFamilyGguf(family, file, { quant: 'q4_0', weights: written });
    const { weights } = await ggufToCheckpoint(file);
    expect(weights.layers[0].wq.kind).toBe('q4_0');
    expectSameWeights(weights, expectedAfterImport(written));
  });
});

describe('the q/k layout in qwen GGUF files', () => {
  it('is rotate-half (as Hugging Face and llama.cpp NEOX RoPE): the interleaved rows are permuted per head', async () => {
    const file = path.join(tmp, 'qwen3-layout.gguf');
    const w = await writeFamilyGguf('qwen3', file);
    const raw = await readGguf(file);
    const hd = w.config.head_dim;
    const qNorm = raw.tensorF32('blk.0.attn_q_norm.weight');
    // Rotate-half position j*hd/2 + i holds interleaved element 2i + j.
    for (let i = 0; i < hd / 2; i++) {
      expect(qNorm[i]).toBe(w.layers[0].qNorm![2 * i]);
      expect(qNorm[hd / 2 + i]).toBe(w.layers[0].qNorm![2 * i + 1]);
    }
  });
});

describe('refusals', () => {
  async function withMetadata(name: string, change: (m: Map<string, GgufTypedValue>) => void): Promise<string> {
    const source = await readGguf(path.join(tmp, 'qwen3-f32.gguf'));
    const metadata = new Map(source.typedMetadata);
    change(metadata);
    const file = path.join(tmp, name);
    const tensors = source.tensors.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: source.tensorBytes(t) }));
    await writeGguf(file, { metadata, tensors });
    return file;
  }

  it('an unknown architecture, naming it and the supported ones', async () => {
    const file = await withMetadata('phi3.gguf', (m) => m.set('general.architecture', gguf.str('phi3')));
    await expect(ggufToCheckpoint(file)).rejects.toThrow('general.architecture is "phi3"; supported GGUF architectures: llama, qwen2, qwen3');
  });

  it('an unknown tokenizer model', async () => {
    const file = await withMetadata('t5-tokenizer.gguf', (m) => m.set('tokenizer.ggml.model', gguf.str('t5')));
    await expect(ggufToCheckpoint(file)).rejects.toThrow(`tokenizer.ggml.model is "t5"; supported: 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)`);
  });

  it('an unknown or missing pre-tokenizer', async () => {
    const unknown = await withMetadata('deepseek-pre.gguf', (m) => m.set('tokenizer.ggml.pre', gguf.str('deepseek-llm')));
    await expect(ggufToCheckpoint(unknown)).rejects.toThrow(
      'tokenizer.ggml.pre is "deepseek-llm"; supported byte-level BPE pre-tokenizers: llama-bpe, llama3, llama-v3, qwen2, smollm, gpt-2',
    );
    const missing = await withMetadata('no-pre.gguf', (m) => m.delete('tokenizer.ggml.pre'));
    await expect(ggufToCheckpoint(missing)).rejects.toThrow('tokenizer.ggml.pre is undefined');
  });

  it('RoPE scaling other than linear or rope_freqs factors', async () => {
    const file = await withMetadata('yarn.gguf', (m) => m.set('qwen3.rope.scaling.type', gguf.str('yarn')));
    await expect(ggufToCheckpoint(file)).rejects.toThrow('RoPE scaling "yarn" is not supported');
  });

  it('reads linear RoPE scaling', async () => {
    const file = await withMetadata('linear.gguf', (m) => {
      m.set('qwen3.rope.scaling.type', gguf.str('linear'));
      m.set('qwen3.rope.scaling.factor', gguf.f32(4));
    });
    expect((await ggufToCheckpoint(file)).weights.config.rope_scaling).toEqual({ rope_type: 'linear', factor: 4 });
  });
});
