import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { heldOutLoss } from '../../src/eval/held-out-loss.js';
import { importModel } from '../../src/model/import.js';
import { summarizeModel } from '../../src/formats/onnx-builder.js';
import { PACKAGE_FILES, readManifest } from '../../src/model/package-files.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * `carryon import --quantize q4_0`: 4-bit projections through MatMulNBits, priced by held-out loss
 * on real TinyStories validation text against the f32 import of the same checkpoint.
 */
const VAL_TEXT = path.resolve(path.dirname(STORIES_BIN), '../../data/tinystories/tinystories_val.txt');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-q4-'));
const f32Dir = path.join(tmp, 'f32');
const q4Dir = path.join(tmp, 'q4');

beforeAll(async () => {
  await importModel(STORIES_BIN, f32Dir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  await importModel(STORIES_BIN, q4Dir, { tokenizerPath: STORIES_TOK, name: 'stories260K', quantize: 'q4_0' });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('quantized import', () => {
  it('stores the projections and the LM head as MatMulNBits, keeping widths that do not split into 32-blocks f32', () => {
    const body = summarizeModel(fs.readFileSync(path.join(q4Dir, PACKAGE_FILES.body))).opCounts;
    // stories260K: q, k, v, o, gate, up have 64 inputs (quantized); down has 172 (stays f32).
    expect(body['com.microsoft:MatMulNBits']).toBe(6 * 5);
    expect(body['ai.onnx:MatMul']).toBe(3 * 5); // down, and attention's two context products
    expect(summarizeModel(fs.readFileSync(path.join(q4Dir, PACKAGE_FILES.head))).opCounts).toEqual({ 'com.microsoft:MatMulNBits': 1 });
    expect(readManifest(q4Dir).quantization).toBe('mixed');
  });

  it('costs little held-out loss on TinyStories validation text', async () => {
    const f32 = await ModelRunner.create({ modelDir: f32Dir, provider: 'cpu', threads: 1 });
    const q4 = await ModelRunner.create({ modelDir: q4Dir, provider: 'cpu', threads: 1 });
    const tok = ModelTokenizer.load(f32Dir, f32.config.vocab_size);
    const paragraphs = fs.readFileSync(VAL_TEXT, 'utf8').split(/\n\s*\n/).filter((p) => p.trim().length > 0).slice(0, 60);
    const seqs = paragraphs.map((p) => tok.encode(p.trim(), true));
    const a = await heldOutLoss(f32, seqs);
    const b = await heldOutLoss(q4, seqs);
    console.log(`held-out loss on ${a.tokens} TinyStories tokens: f32 ${a.loss.toFixed(4)}, q4_0 ${b.loss.toFixed(4)} (+${(((b.loss - a.loss) / a.loss) * 100).toFixed(2)}%)`);
    expect(a.tokens).toBeGreaterThan(5000);
    expect(a.loss).toBeLessThan(2.5); // a real language model on its own domain
    expect(b.loss).toBeGreaterThan(a.loss); // 4-bit rounding costs something...
    expect(b.loss).toBeLessThan(a.loss * 1.1); // ...but not much
    await f32.release();
    await q4.release();
  });
});
