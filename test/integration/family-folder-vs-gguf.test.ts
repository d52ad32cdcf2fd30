/**
 * The two ways one model reaches the gateway agree: the same weights written as a Hugging Face folder
 * (save_pretrained's layout: rotate-half q/k rows, HF config and tensor names, the real tokenizer.json)
 * and as a GGUF (convert_hf_to_gguf.py's layout: llama3 scaling as rope_freqs factors, Qwen's rows
 * rotate-half, the vocabulary rebuilt from GGUF metadata) import to packages whose logits agree at
 * every position, and whose tokenizers give the same ids. Each format is checked on its own against
 * an independent engine elsewhere (model-families-hf: PyTorch; gguf-family-parity: llama.cpp).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { importModel } from '../../src/model/import.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { writeHfFolder } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights, type Family } from '../helpers/model-families.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'family-folder-vs-gguf-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TEXT = 'Once upon a time, 小さな robot said "héllo" 👋 to 42 friends.\n  def f(x): return x**2';

describe.each(['llama3', 'qwen2', 'qwen3'] as const)('%s: folder and GGUF imports', (family: Family) => {
  it('give the same token ids and logits within 1e-4 at every position', async () => {
    const weights = randomFamilyWeights(family, 7);
    const folder = path.join(tmp, `${family}-hf`);
    writeHfFolder(folder, weights, { dtype: 'F32', shards: 1, tokenizerFrom: FAMILIES[family].tokenizerDir });
    const gguf = path.join(tmp, `${family}.gguf`);
    await writeFamilyGguf(family, gguf, { weights });
    const pkgs = { hf: path.join(tmp, `${family}-pkg-hf`), gguf: path.join(tmp, `${family}-pkg-gguf`) };
    await importModel(folder, pkgs.hf);
    await importModel(gguf, pkgs.gguf);

    // Without special tokens: whether BOS is added is each format's own rule, and they differ for the
    // real Llama 3 files (Meta's first tokenizer.json adds none, as transformers runs it; llama.cpp's
    // llama-bpe adds <|begin_of_text|>), so each package follows its own reference engine there.
    const vocab = weights.config.vocab_size;
    const ids = ModelTokenizer.load(pkgs.hf, vocab).encode(TEXT, false);
    expect(ModelTokenizer.load(pkgs.gguf, vocab).encode(TEXT, false)).toEqual(ids);

    const init = { provider: 'cpu' as const, threads: 1, prefillChunk: 256 };
    const logits: Float32Array[] = [];
    for (const dir of [pkgs.hf, pkgs.gguf]) {
      const runner = await ModelRunner.create({ ...init, modelDir: dir });
      try {
        const { hidden } = await runner.forwardBody(ids, runner.newCache());
        logits.push(await runner.forwardHead(hidden, ids.length));
      } finally {
        await runner.release();
      }
    }
    expect(logits[0].length).toBe(ids.length * vocab);
    let worst = 0;
    logits[0].forEach((v, i) => (worst = Math.max(worst, Math.abs(v - logits[1][i]))));
    console.log(`${family}: ${ids.length} positions, max |Δlogit| folder vs GGUF ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-4);
  }, 300_000);
});
