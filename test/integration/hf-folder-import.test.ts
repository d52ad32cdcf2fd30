import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/formats/half.js';
import { readSafetensors, serializeSafetensors } from '../../src/formats/safetensors.js';
import { unpermuteRows } from '../../src/model/hf-folder.js';
import { importModel } from '../../src/model/import.js';
import { resolveModelPackage } from '../../src/model/model-source.js';
import { PACKAGE_FILES, readManifest, readModelConfig } from '../../src/model/package-files.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import type { LlamaWeights, Matrix } from '../../src/model/types.js';
import { freshDataDir, startTestGateway, USER_KEY } from '../helpers/gateway.js';
import { hfPermute, writeHfFolder, type HfFolderOptions } from '../helpers/hf-folder.js';
import { REPO_ROOT, STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { readLlama2cCheckpoint } from '../helpers/stories-bin.js';

/**
 * A Hugging Face folder made from the real stories260K llama2.c checkpoint exactly as transformers'
 * conversion makes one (HF names, q/k rows permuted for rotate-half RoPE, LlamaConfig), imported by
 * the real importer and run by the engine's runner, against the .bin imported directly.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-hf-'));
const pkgBin = path.join(tmp, 'pkg-bin');
const folder = (name: string) => path.join(tmp, name);
const pkgOf = (name: string) => path.join(tmp, `pkg-${name}`);
const JINJA = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}";

let weights: LlamaWeights;
const runners = new Map<string, ModelRunner>();
const init = { provider: 'cpu' as const, threads: 1, prefillChunk: 256 };
let tokenizer: ModelTokenizer;

const base = (): HfFolderOptions => ({ dtype: 'F32', shards: 1, tokenizerFrom: pkgBin });
const variants: Record<string, Partial<HfFolderOptions>> = {
  'stories-f32': {},
  'stories-f16-sharded': {
    dtype: 'F16',
    shards: 2,
    untie: true,
    chatTemplateJinja: JINJA,
    generationConfig: { bos_token_id: 1, eos_token_id: [2, 0], temperature: 0.7, transformers_version: '4.46.0' },
  },
  'stories-bf16': { dtype: 'BF16' },
  // MistralConfig: the Llama graph plus a sliding window, here shorter than the 512 positions.
  'stories-mistral': { config: { architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: 128 } },
};

/** The checkpoint with every weight rounded through f16 / bf16, kept f32: what the half folders must import to. */
function roundedWeights(w: LlamaWeights, round: (x: number) => number): LlamaWeights {
  const r = (a: Float32Array) => Float32Array.from(a, round);
  const m = (x: Matrix): Matrix => (x.kind === 'f32' ? { ...x, data: r(x.data) } : x);
  return {
    ...w,
    tokEmbeddings: r(w.tokEmbeddings),
    finalNorm: r(w.finalNorm),
    output: w.output && m(w.output),
    layers: w.layers.map((l) => ({
      attnNorm: r(l.attnNorm), ffnNorm: r(l.ffnNorm),
      wq: m(l.wq), wk: m(l.wk), wv: m(l.wv), wo: m(l.wo), gate: m(l.gate), down: m(l.down), up: m(l.up),
    })),
  };
}
const rounded: Record<string, [(x: number) => number, Partial<HfFolderOptions>]> = {
  'rounded-f16': [(x) => f16ToF32(f32ToF16(x)), { untie: true }],
  'rounded-bf16': [(x) => bf16ToF32(f32ToBf16(x)), {}],
};

beforeAll(async () => {
  await importModel(STORIES_BIN, pkgBin, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  weights = readLlama2cCheckpoint(STORIES_BIN);
  for (const [name, o] of Object.entries(variants)) {
    writeHfFolder(folder(name), weights, { ...base(), ...o });
    await importModel(folder(name), pkgOf(name));
  }
  for (const [name, [round, o]] of Object.entries(rounded)) {
    writeHfFolder(folder(name), roundedWeights(weights, round), { ...base(), ...o });
    await importModel(folder(name), pkgOf(name));
  }
  runners.set('bin', await ModelRunner.create({ ...init, modelDir: pkgBin }));
  for (const name of [...Object.keys(variants), ...Object.keys(rounded)]) {
    runners.set(name, await ModelRunner.create({ ...init, modelDir: pkgOf(name) }));
  }
  tokenizer = ModelTokenizer.load(pkgBin, 512);
});
afterAll(async () => {
  for (const r of runners.values()) await r.release();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function fullLogits(r: ModelRunner, tokens: number[]): Promise<Float32Array> {
  const { hidden } = await r.forwardBody(tokens, r.newCache());
  return r.forwardHead(hidden, tokens.length);
}

async function greedy(r: ModelRunner, prompt: number[], steps: number): Promise<number[]> {
  const cache = r.newCache();
  const vocab = r.config.vocab_size;
  const out: number[] = [];
  let feed = prompt;
  for (let s = 0; s < steps; s++) {
    const { hidden } = await r.forwardBody(feed, cache);
    const logits = await r.forwardHead(hidden.subarray(hidden.length - r.config.hidden_size), 1);
    let best = 0;
    for (let v = 1; v < vocab; v++) if (logits[v] > logits[best]) best = v;
    out.push(best);
    feed = [best];
  }
  return out;
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const PROMPTS = ['Once upon a time', 'Lily and Tom went to the park. They saw a big dog', 'The sun was hot. "Mom, can I have some water?" asked'];
const runner = (name: string) => runners.get(name)!;

describe('Hugging Face folder import (Llama)', () => {
  it('undoes exactly the permutation transformers applies to q_proj / k_proj', () => {
    const w = Float32Array.from({ length: 4 * 8 * 3 }, (_, i) => i);
    const hf = hfPermute(w, 4, 8, 3);
    expect(Array.from(hf)).not.toEqual(Array.from(w));
    expect(Array.from(unpermuteRows(hf, 4, 8, 3))).toEqual(Array.from(w));
  });

  it('F32: the same package as the .bin import (same fingerprint), identical logits and greedy tokens', async () => {
    const m = readManifest(pkgOf('stories-f32'));
    expect(m.source).toMatchObject({ format: 'hf', file: 'stories-f32' });
    expect(m.name).toBe('stories-f32');
    expect(m.fingerprint).toBe(readManifest(pkgBin).fingerprint);
    expect(readModelConfig(pkgOf('stories-f32'))).toEqual(readModelConfig(pkgBin));
    const ids = tokenizer.encode(PROMPTS[1], true);
    const a = await fullLogits(runner('bin'), ids);
    const b = await fullLogits(runner('stories-f32'), ids);
    expect(a.length).toBe(ids.length * 512);
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-5);
    for (const p of PROMPTS) {
      const prompt = tokenizer.encode(p, true);
      expect(await greedy(runner('stories-f32'), prompt, 24)).toEqual(await greedy(runner('bin'), prompt, 24));
    }
  });

  it('F16 in two shards with an untied head, and BF16: close logits, same greedy tokens', async () => {
    const ids = tokenizer.encode(`${PROMPTS[0]}, ${PROMPTS[1]}`, true);
    const ref = await fullLogits(runner('bin'), ids);
    const f16 = maxAbsDiff(ref, await fullLogits(runner('stories-f16-sharded'), ids));
    const bf16 = maxAbsDiff(ref, await fullLogits(runner('stories-bf16'), ids));
    console.log(`max |logit - f32 logit| over ${ids.length} positions: f16 ${f16.toExponential(3)}, bf16 ${bf16.toExponential(3)}`);
    // Measured on this prompt: f16 1.66e-2, bf16 1.25e-1 (the rounding of the weights, not the import).
    expect(f16).toBeGreaterThan(0); // the weights really went through f16
    expect(f16).toBeLessThan(3e-2);
    expect(bf16).toBeLessThan(2.5e-1);
    // The decode itself is exact: the same as an F32 folder of the already-rounded weights.
    expect(maxAbsDiff(await fullLogits(runner('rounded-f16'), ids), await fullLogits(runner('stories-f16-sharded'), ids))).toBeLessThan(1e-5);
    expect(maxAbsDiff(await fullLogits(runner('rounded-bf16'), ids), await fullLogits(runner('stories-bf16'), ids))).toBeLessThan(1e-5);
    for (const p of PROMPTS) {
      const prompt = tokenizer.encode(p, true);
      const want = await greedy(runner('bin'), prompt, 24);
      expect(await greedy(runner('stories-f16-sharded'), prompt, 24)).toEqual(want);
      expect(await greedy(runner('stories-bf16'), prompt, 24)).toEqual(want);
    }
  });

  it('MistralForCausalLM: the Llama graph, with the served context capped at sliding_window (so attention stays exact)', async () => {
    expect(readModelConfig(pkgOf('stories-mistral'))).toEqual({ ...readModelConfig(pkgBin), max_position_embeddings: 128 });
    const ids = tokenizer.encode(PROMPTS[1], true);
    expect(maxAbsDiff(await fullLogits(runner('bin'), ids), await fullLogits(runner('stories-mistral'), ids))).toBeLessThan(1e-5);
    await expect(runner('stories-mistral').forwardBody(new Array<number>(129).fill(5), runner('stories-mistral').newCache())).rejects.toThrow(/exceed the model's context of 128/);
  });

  it('copies the tokenizer, takes chat_template.jinja, keeps generation_config.json with its eos_token_id list', () => {
    const pkg = pkgOf('stories-f16-sharded');
    const read = (dir: string, f: string) => fs.readFileSync(path.join(dir, f), 'utf8');
    expect(read(pkg, PACKAGE_FILES.tokenizer)).toBe(read(pkgBin, PACKAGE_FILES.tokenizer));
    const tokConfig = JSON.parse(read(pkg, PACKAGE_FILES.tokenizerConfig)) as Record<string, unknown>;
    expect(tokConfig.chat_template).toBe(JINJA);
    expect(tokConfig.bos_token).toBe('<s>');
    expect(JSON.parse(read(pkg, PACKAGE_FILES.generationConfig))).toMatchObject({ eos_token_id: [2, 0], bos_token_id: 1, temperature: 0.7 });
    expect(readModelConfig(pkg)).toMatchObject({ tie_word_embeddings: false, eos_token_id: 2 });
    expect(ModelTokenizer.load(pkg, 512).encode(PROMPTS[2], true)).toEqual(tokenizer.encode(PROMPTS[2], true));
  });
});

describe('Hugging Face folder refusals', () => {
  const attempt = async (name: string, o: Partial<HfFolderOptions>, edit?: (dir: string) => void) => {
    const dir = folder(name);
    writeHfFolder(dir, weights, { ...base(), ...o });
    edit?.(dir);
    return importModel(dir, pkgOf(name));
  };

  it('names an unsupported architecture', async () => {
    await expect(attempt('gemma', { config: { architectures: ['GemmaForCausalLM'], model_type: 'gemma' } })).rejects.toThrow(
      /architectures is \["GemmaForCausalLM"\]; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM/,
    );
  });

  it('names the RoPE scaling type it does not support', async () => {
    const rope = { rope_type: 'dynamic', factor: 2 };
    await expect(attempt('dynamic-rope', { config: { rope_scaling: rope } })).rejects.toThrow(/rope_scaling "dynamic" is not supported/);
    await expect(attempt('longrope', { config: { rope_parameters: { rope_type: 'longrope', rope_theta: 10000 } } })).rejects.toThrow(
      /rope_parameters\.rope_type "longrope" is not supported/,
    );
  });

  it('names attention_bias', async () => {
    await expect(attempt('bias', { config: { attention_bias: true } })).rejects.toThrow(/attention_bias: true is not supported/);
  });

  it('names a missing tensor', async () => {
    await expect(attempt('no-up', { omit: ['model.layers.3.mlp.up_proj.weight'] })).rejects.toThrow(/missing tensor model\.layers\.3\.mlp\.up_proj\.weight/);
  });

  it('names a missing shard, a missing tokenizer.json and a missing config.json', async () => {
    await expect(attempt('no-shard', { shards: 2 }, (d) => fs.rmSync(path.join(d, 'model-00002-of-00002.safetensors')))).rejects.toThrow(
      /missing weight shard model-00002-of-00002\.safetensors/,
    );
    await expect(attempt('no-tok', {}, (d) => fs.rmSync(path.join(d, 'tokenizer.json')))).rejects.toThrow(/missing tokenizer\.json/);
    await expect(attempt('no-config', {}, (d) => fs.rmSync(path.join(d, 'config.json')))).rejects.toThrow(/missing config\.json/);
    // As CARRYON_MODEL, a folder that is neither a package nor an HF folder says so.
    const log = () => {};
    await expect(resolveModelPackage({ model: folder('no-config'), dataDir: tmp, downloadBaseUrl: 'http://127.0.0.1:9', log })).rejects.toThrow(
      /neither a model package \(no carryon-package\.json\) nor a Hugging Face model folder \(no config\.json\)/,
    );
  });

  it('refuses tensors a Llama model does not have', async () => {
    await expect(
      attempt('extra', {}, (d) => {
        // Rewrite with a q_proj bias added, as a Qwen2 folder relabelled Llama would have.
        const file = path.join(d, 'model.safetensors');
        const { tensors } = readSafetensors(file);
        const all = Object.fromEntries([...tensors].map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape, data: t.data }]));
        all['model.layers.0.self_attn.q_proj.bias'] = { dtype: 'F32', shape: [64], data: new Float32Array(64) };
        fs.writeFileSync(file, serializeSafetensors(all));
      }),
    ).rejects.toThrow(/tensors a Llama model does not have: model\.layers\.0\.self_attn\.q_proj\.bias/);
  });
});

describe('Hugging Face folder through the CLI and the gateway', () => {
  it('`carryon import DIR OUT` builds the package', async () => {
    const out = path.join(tmp, 'cli-pkg');
    const { stdout } = await promisify(execFile)(process.execPath, ['bin/carryon.js', 'import', folder('stories-f16-sharded'), out], { cwd: REPO_ROOT });
    expect(stdout).toMatch(/imported .*stories-f16-sharded/);
    expect(readManifest(out).fingerprint).toBe(readManifest(pkgOf('stories-f16-sharded')).fingerprint);
  });

  it('CARRYON_MODEL=<folder> serves a chat completion equal to the .bin package', async () => {
    const chat = async (model: string) => {
      const gw = await startTestGateway({ CARRYON_MODEL: model, CARRYON_DATA_DIR: freshDataDir() });
      try {
        const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
        const models = await sdk.models.list();
        const res = await sdk.chat.completions.create({
          model: models.data[0].id,
          messages: [{ role: 'user', content: 'Once upon a time' }],
          max_tokens: 30,
          temperature: 0,
        });
        return { id: models.data[0].id, text: res.choices[0].message.content, dataDir: gw.dataDir };
      } finally {
        await gw.close();
      }
    };
    const fromFolder = await chat(folder('stories-f32'));
    const fromBin = await chat(pkgBin);
    expect(fromFolder.id).toBe('stories-f32');
    expect(fromFolder.text?.length).toBeGreaterThan(20);
    expect(fromFolder.text).toBe(fromBin.text);
    // Imported once into the data folder, with the folder's hash as its source.
    expect(readManifest(path.join(fromFolder.dataDir, 'models', 'stories-f32')).source.format).toBe('hf');
  });

  it("uses the model's own sampling defaults (generation_config.json with do_sample) where the request sets none", async () => {
    const name = 'stories-top-k-1';
    writeHfFolder(folder(name), weights, { ...base(), generationConfig: { bos_token_id: 1, eos_token_id: 2, do_sample: true, top_k: 1, temperature: 1 } });
    const gw = await startTestGateway({ CARRYON_MODEL: folder(name), CARRYON_DATA_DIR: freshDataDir() });
    try {
      const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
      const ask = (extra: object) => sdk.completions.create({ model: name, prompt: 'Once upon a time', max_tokens: 24, ...extra }).then((r) => r.choices[0].text);
      const greedy = await ask({ temperature: 0 });
      // top_k 1 from the model: every unseeded sample is the greedy text.
      expect(await ask({})).toBe(greedy);
      expect(await ask({})).toBe(greedy);
      // A request's own value wins: top_k 0 (off) at temperature 1, seeded, samples other text.
      const sampled = await Promise.all([1, 2, 3].map((seed) => ask({ top_k: 0, seed })));
      expect(sampled.some((t) => t !== greedy)).toBe(true);
    } finally {
      await gw.close();
    }
  });

  it("stops on every end token generation_config.json lists, with finish_reason stop and the token's text left out", async () => {
    const serve = async (model: string) => {
      const gw = await startTestGateway({ CARRYON_MODEL: model, CARRYON_DATA_DIR: freshDataDir() });
      const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
      return { gw, sdk, id: (await sdk.models.list()).data[0].id };
    };
    // The base's greedy continuation, token by token.
    const plain = await serve(pkgBin);
    let ids: number[];
    let fullText: string;
    try {
      const res = await plain.sdk.completions.create({ model: plain.id, prompt: 'Once upon a time', max_tokens: 12, temperature: 0, logprobs: 0 });
      fullText = res.choices[0].text;
      ids = res.choices[0].logprobs!.tokens!.map((t) => tokenizer.encode(t, false).at(-1)!);
    } finally {
      await plain.gw.close();
    }
    // A folder whose generation_config.json also ends generation at the 6th token the base writes.
    const stopAt = 5;
    const stopId = ids[stopAt];
    const name = 'stories-eos-list';
    writeHfFolder(folder(name), weights, { ...base(), generationConfig: { bos_token_id: 1, eos_token_id: [2, stopId] } });
    const listed = await serve(folder(name));
    try {
      const res = await listed.sdk.completions.create({ model: listed.id, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 });
      expect(res.choices[0].finish_reason).toBe('stop');
      expect(res.usage?.completion_tokens).toBe(stopAt + 1);
      expect(fullText.startsWith(res.choices[0].text)).toBe(true);
      expect(res.choices[0].text.length).toBeLessThan(fullText.length);
    } finally {
      await listed.gw.close();
    }
  });
});
