import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { hfFolderToCheckpoint } from '../../src/model/hf-folder.js';
import { importModel } from '../../src/model/import.js';
import { readManifest, readModelConfig } from '../../src/model/package-files.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import type { LlamaWeights } from '../../src/model/types.js';
import { writeHfFolder, type HfDtype, type HfFolderOptions } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights, type Family } from '../helpers/model-families.js';
import { freshDataDir, startTestGateway, USER_KEY } from '../helpers/gateway.js';
import { REPO_ROOT } from '../helpers/paths.js';

/**
 * Llama 3.1+ (llama3 RoPE scaling, untied head), Qwen2 (q/k/v biases, tied head) and Qwen3 (per-head
 * q/k RMSNorm, head_dim 32 with hidden 64 over 4 heads) as Hugging Face folders written the way
 * save_pretrained writes them, imported by the real importer, run by the engine's runner, and
 * compared logit by logit with an independent PyTorch forward of the same folder
 * (test/reference/hf_forward.py, transformers' modeling code re-derived: rotate-half RoPE on the
 * file's own layout). Needs python3 with torch (trainer/python finds one); skipped, loudly,
 * without, unless CARRYON_TRAINER_REQUIRED=1 (CI), where a missing torch fails.
 */
const which = spawnSync(path.join(REPO_ROOT, 'trainer', 'python'), ['--which'], { encoding: 'utf8' });
const python = which.status === 0 ? which.stdout.trim() : null;
if (!python) {
  const why = which.stderr.trim() || 'no python3 with torch';
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`model-families-hf: ${why}`);
  console.warn(`model-families-hf reference comparisons SKIPPED: ${why}`);
}
const REFERENCE = path.join(REPO_ROOT, 'test', 'reference', 'hf_forward.py');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-families-'));
const folderOf = (name: string) => path.join(tmp, name);
const pkgOf = (name: string) => path.join(tmp, `pkg-${name}`);
const init = { provider: 'cpu' as const, threads: 1, prefillChunk: 256 };
const runners = new Map<string, ModelRunner>();
const ids = new Map<Family, number[]>();

const TESTED: Family[] = ['llama3', 'qwen2', 'qwen3'];
const DTYPES: HfDtype[] = ['F32', 'BF16'];
const QUANTIZED: Family[] = ['qwen2', 'qwen3'];
const name = (f: Family, dtype: HfDtype) => `${f}-${dtype.toLowerCase()}`;
const options = (f: Family, dtype: HfDtype): HfFolderOptions => ({ dtype, shards: 1, tokenizerFrom: FAMILIES[f].tokenizerDir });

const TEXT =
  'The old lighthouse keeper climbed the spiral stairs every evening, counting the steps aloud: ' +
  'one hundred and twelve, never more and never fewer. From the lamp room he could see the harbour, ';

/**
 * Token ids from the family's real tokenizer (as copied into the package). Llama 3's prompt runs past
 * original_max_position_embeddings (256 in FAMILIES), so its positions reach the low-frequency band
 * that llama3 scaling divides by `factor`; a scaling bug shows there and not before.
 */
function promptIds(f: Family, pkg: string): number[] {
  const tok = ModelTokenizer.load(pkg, FAMILIES[f].config.vocab_size);
  const want = f === 'llama3' ? 300 : 48;
  let all = tok.encode(TEXT, true);
  while (all.length < want) all = all.concat(tok.encode(TEXT, false));
  return all.slice(0, want);
}

const weightsCache = new Map<Family, LlamaWeights>();
function weightsOf(f: Family): LlamaWeights {
  if (!weightsCache.has(f)) weightsCache.set(f, randomFamilyWeights(f));
  return weightsCache.get(f)!;
}

/**
 * One family's F32 and BF16 folders, their packages and runners, and (for the Qwens, whose bias and
 * norm are what q4_0 could get wrong) a q4_0 package: built once, on first need, so each describe's
 * hook only waits for what it uses.
 */
const built = new Map<Family, Promise<void>>();
function ensureFamily(f: Family): Promise<void> {
  if (!built.has(f)) {
    built.set(f, (async () => {
      for (const dtype of DTYPES) {
        writeHfFolder(folderOf(name(f, dtype)), weightsOf(f), options(f, dtype));
        await importModel(folderOf(name(f, dtype)), pkgOf(name(f, dtype)));
        runners.set(name(f, dtype), await ModelRunner.create({ ...init, modelDir: pkgOf(name(f, dtype)) }));
      }
      if (QUANTIZED.includes(f)) {
        await importModel(folderOf(name(f, 'F32')), pkgOf(`${f}-q4_0`), { quantize: 'q4_0' });
        runners.set(`${f}-q4_0`, await ModelRunner.create({ ...init, modelDir: pkgOf(`${f}-q4_0`) }));
      }
      ids.set(f, promptIds(f, pkgOf(name(f, 'F32'))));
    })());
  }
  return built.get(f)!;
}
// Importing a 128k-152k vocabulary three times takes a while on a busy 2-core machine.
const BUILD_TIMEOUT = 600_000;

afterAll(async () => {
  for (const r of runners.values()) await r.release();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Logits of every position: the prefix in one pass, then `stepped` tokens one at a time through the KV pool. */
async function engineLogits(r: ModelRunner, tokens: number[], stepped: number): Promise<Float32Array> {
  const cache = r.newCache();
  const vocab = r.config.vocab_size;
  const out = new Float32Array(tokens.length * vocab);
  const prefix = tokens.slice(0, tokens.length - stepped);
  out.set(await r.forwardHead((await r.forwardBody(prefix, cache)).hidden, prefix.length));
  for (let i = prefix.length; i < tokens.length; i++) {
    out.set(await r.forwardHead((await r.forwardBody([tokens[i]], cache)).hidden, 1), i * vocab);
  }
  return out;
}

function referenceLogits(folder: string, tokens: number[]): Float32Array {
  const out = path.join(tmp, 'reference.f32');
  const run = spawnSync(python!, [REFERENCE, folder, out], { input: JSON.stringify(tokens), encoding: 'utf8', maxBuffer: 1 << 20 });
  if (run.status !== 0) throw new Error(`hf_forward.py ${folder}: ${run.stderr}`);
  const bytes = fs.readFileSync(out);
  fs.rmSync(out);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** Largest |a - b| over each position's vocabulary row. */
function perPositionMaxDiff(a: Float32Array, b: Float32Array, vocab: number): number[] {
  expect(a.length).toBe(b.length);
  const out: number[] = [];
  for (let at = 0; at < a.length; at += vocab) {
    let m = 0;
    for (let v = at; v < at + vocab; v++) m = Math.max(m, Math.abs(a[v] - b[v]));
    out.push(m);
  }
  return out;
}

/** The smallest, over positions, cosine between the two mean-centred logit rows. */
function rowCosine(a: Float32Array, b: Float32Array, vocab: number): number {
  let worst = 1;
  for (let at = 0; at < a.length; at += vocab) {
    const ra = a.subarray(at, at + vocab);
    const rb = b.subarray(at, at + vocab);
    const ma = ra.reduce((s, v) => s + v, 0) / vocab;
    const mb = rb.reduce((s, v) => s + v, 0) / vocab;
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let v = 0; v < vocab; v++) {
      dot += (ra[v] - ma) * (rb[v] - mb);
      na += (ra[v] - ma) ** 2;
      nb += (rb[v] - mb) ** 2;
    }
    worst = Math.min(worst, dot / Math.sqrt(na * nb));
  }
  return worst;
}

function argmaxRows(logits: Float32Array, vocab: number): number[] {
  const out: number[] = [];
  for (let at = 0; at < logits.length; at += vocab) {
    let best = at;
    for (let v = at + 1; v < at + vocab; v++) if (logits[v] > logits[best]) best = v;
    out.push(best - at);
  }
  return out;
}

describe.skipIf(!python)('Hugging Face folders of each family against a PyTorch reference forward', () => {
  describe.each(TESTED)('%s', (f) => {
    beforeAll(() => ensureFamily(f), BUILD_TIMEOUT);

    it.each(DTYPES)('%s folder: logits within 1e-4 of the reference at every position, prefill and KV-cached steps', async (dtype) => {
      const tokens = ids.get(f)!;
      const vocab = FAMILIES[f].config.vocab_size;
      const ours = await engineLogits(runners.get(name(f, dtype))!, tokens, 4);
      const ref = referenceLogits(folderOf(name(f, dtype)), tokens);
      const diffs = perPositionMaxDiff(ours, ref, vocab);
      const worst = Math.max(...diffs);
      const spread = ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      console.log(`${name(f, dtype)}: ${tokens.length} positions, max |logit - reference| ${worst.toExponential(3)} (max |logit| ${spread.toFixed(2)})`);
      expect(spread).toBeGreaterThan(1); // the logits are not all near zero, so 1e-4 is a real bound
      expect(diffs).toHaveLength(tokens.length);
      for (const [pos, d] of diffs.entries()) expect(d, `position ${pos}`).toBeLessThan(1e-4);
    });

    if (QUANTIZED.includes(f)) {
      it('q4_0 import runs: logits near the f32 reference, same greedy choice at most positions', async () => {
        const tokens = ids.get(f)!.slice(0, 32);
        const vocab = FAMILIES[f].config.vocab_size;
        const q4 = await engineLogits(runners.get(`${f}-q4_0`)!, tokens, 2);
        const ref = referenceLogits(folderOf(name(f, 'F32')), tokens);
        const worst = Math.max(...perPositionMaxDiff(q4, ref, vocab));
        const spread = ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        const refIds = argmaxRows(ref, vocab);
        const agree = argmaxRows(q4, vocab).filter((id, i) => id === refIds[i]).length;
        const cos = rowCosine(q4, ref, vocab);
        console.log(
          `${f}-q4_0: max |logit - f32 reference| ${worst.toExponential(3)} (max |logit| ${spread.toFixed(2)}), ` +
            `worst row cosine ${cos.toFixed(5)}, greedy agrees at ${agree}/${tokens.length}`,
        );
        expect(readManifest(pkgOf(`${f}-q4_0`)).quantization).toBe('q4_0');
        // 4-bit weights move logits, but each position's logit vector keeps its direction.
        expect(cos).toBeGreaterThan(0.97);
        expect(worst).toBeLessThan(0.2 * spread);
        expect(agree).toBeGreaterThanOrEqual(0.6 * tokens.length);
      });
    }
  });
});

describe('Hugging Face folders of each family: the package config', () => {
  beforeAll(async () => {
    for (const f of TESTED) await ensureFamily(f);
  }, BUILD_TIMEOUT);

  it('records the architecture, RoPE scaling, biases and norms', () => {
    expect(readModelConfig(pkgOf('llama3-f32'))).toMatchObject({
      architecture: 'llama',
      rope_scaling: FAMILIES.llama3.config.rope_scaling,
      tie_word_embeddings: false,
      attention_bias: false,
      qk_norm: false,
    });
    expect(readModelConfig(pkgOf('qwen2-f32'))).toMatchObject({ architecture: 'qwen2', attention_bias: true, qk_norm: false, tie_word_embeddings: true });
    expect(readModelConfig(pkgOf('qwen3-f32'))).toMatchObject({ architecture: 'qwen3', attention_bias: false, qk_norm: true, head_dim: 32, hidden_size: 64 });
  });
});

describe('Hugging Face folders of each family: config handling and refusals', () => {
  // The importer's reading of the folder is what these are about; building the graphs adds nothing.
  const attempt = async (label: string, f: Family, o: Partial<HfFolderOptions>) => {
    writeHfFolder(folderOf(label), weightsOf(f), { ...options(f, 'F32'), ...o });
    return (await hfFolderToCheckpoint(folderOf(label))).weights.config;
  };

  it("caps the context at Qwen2's sliding_window only when use_sliding_window is true", async () => {
    // Qwen2.5's configs carry a sliding_window with use_sliding_window false: full attention.
    expect((await attempt('qwen2-window-off', 'qwen2', { config: { sliding_window: 512 } })).max_position_embeddings).toBe(2048);
    const on = { sliding_window: 512, use_sliding_window: true, max_window_layers: 1 };
    expect((await attempt('qwen2-window-on', 'qwen2', { config: on })).max_position_embeddings).toBe(512);
    // Layers below max_window_layers attend fully; with none above it nothing slides.
    expect((await attempt('qwen2-window-none', 'qwen2', { config: { ...on, max_window_layers: 2 } })).max_position_embeddings).toBe(2048);
  });

  it('reads rope_parameters (transformers 5) and a linear rope_scaling', async () => {
    const llama3 = { rope_type: 'llama3', rope_theta: 500000, factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 256 };
    const v5 = await attempt('llama3-v5', 'llama3', { config: { rope_scaling: null, rope_theta: null, rope_parameters: llama3 } });
    expect(v5).toMatchObject({ rope_theta: 500000, rope_scaling: FAMILIES.llama3.config.rope_scaling });
    expect((await attempt('llama3-linear', 'llama3', { config: { rope_scaling: { type: 'linear', factor: 4 } } })).rope_scaling).toEqual({ rope_type: 'linear', factor: 4 });
  });

  it('names an unsupported rope_scaling type and a missing llama3 parameter', async () => {
    const yarn = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 256 };
    await expect(attempt('qwen2-yarn', 'qwen2', { config: { rope_scaling: yarn } })).rejects.toThrow(
      /rope_scaling "yarn" is not supported \(supported: default, linear, llama3\)/,
    );
    const partial = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 };
    await expect(attempt('llama3-partial', 'llama3', { config: { rope_scaling: partial } })).rejects.toThrow(
      /rope_scaling\.original_max_position_embeddings must be a positive number for llama3 RoPE/,
    );
  });

  it('names a missing q_norm in a Qwen3 folder and a missing q_proj bias in a Qwen2 folder', async () => {
    await expect(attempt('qwen3-no-qnorm', 'qwen3', { omit: ['model.layers.1.self_attn.q_norm.weight'] })).rejects.toThrow(
      /missing tensor model\.layers\.1\.self_attn\.q_norm\.weight/,
    );
    await expect(attempt('qwen2-no-bias', 'qwen2', { omit: ['model.layers.0.self_attn.q_proj.bias'] })).rejects.toThrow(
      /missing tensor model\.layers\.0\.self_attn\.q_proj\.bias/,
    );
  });

  it("refuses Qwen3's attention_bias true (it would put a bias on o_proj too)", async () => {
    await expect(attempt('qwen3-bias', 'qwen3', { config: { attention_bias: true } })).rejects.toThrow(/attention_bias: true is not supported/);
  });
});

describe('a Qwen3 folder through the gateway', () => {
  beforeAll(() => ensureFamily('qwen3'), BUILD_TIMEOUT);

  it('CARRYON_MODEL=<folder> serves greedy completions equal to the runner on the imported package', async () => {
    const f: Family = 'qwen3';
    const pkg = pkgOf(name(f, 'F32'));
    const tok = ModelTokenizer.load(pkg, FAMILIES[f].config.vocab_size);
    const prompt = 'The old lighthouse keeper climbed';
    // The runner's greedy continuation (its logits are the reference's, above).
    const r = runners.get(name(f, 'F32'))!;
    const cache = r.newCache();
    const vocab = r.config.vocab_size;
    const want: number[] = [];
    let feed = tok.encode(prompt, true);
    for (let step = 0; step < 8; step++) {
      const { hidden } = await r.forwardBody(feed, cache);
      const row = await r.forwardHead(hidden.subarray(hidden.length - r.config.hidden_size), 1);
      const next = argmaxRows(row, vocab)[0];
      if (tok.stopTokenIds.includes(next)) break;
      want.push(next);
      feed = [next];
    }
    const gw = await startTestGateway({ CARRYON_MODEL: folderOf(name(f, 'F32')), CARRYON_DATA_DIR: freshDataDir() });
    try {
      const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
      const res = await sdk.completions.create({ model: name(f, 'F32'), prompt, max_tokens: 8, temperature: 0 });
      expect(want.length).toBeGreaterThan(0);
      expect(res.usage?.completion_tokens).toBe(want.length);
      expect(res.choices[0].text).toBe(tok.decode(want));
    } finally {
      await gw.close();
    }
  });
});
