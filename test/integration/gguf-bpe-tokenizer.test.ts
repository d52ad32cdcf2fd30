/**
 * The tokenizer of a GGUF with a byte-level BPE (`tokenizer.ggml.model` gpt2) as our import rebuilds
 * it into the package (tokenizer.json + tokenizer_config.json + generation_config.json, read by
 * ModelTokenizer) must tokenize exactly like
 * - Hugging Face's tokenizer (@huggingface/tokenizers) on the family's original tokenizer.json, and
 * - llama.cpp (node-llama-cpp) on the GGUF,
 * for the real Llama 3 and Qwen3 tokenizers, on TinyStories validation paragraphs and edge cases.
 *
 * Semantics compared: ModelTokenizer.encode, like Hugging Face's encode, always matches added tokens
 * (special-token text such as `<|eot_id|>` becomes that token), which is llama.cpp's
 * parse_special=true. llama.cpp's parse_special=false (special-token text tokenized as plain text,
 * user-defined tokens still matched) is compared with our tokenizer.json minus its special added
 * tokens. BOS: ours with add_special_tokens against llama.cpp's own add-BOS decision.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Llama, LlamaModel } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gguf as ggufValue, readGguf, writeGguf } from '../../src/formats/gguf-file.js';
import { ggufToCheckpoint } from '../../src/model/gguf.js';
import { packageTokenizerFiles } from '../../src/model/gguf-tokenizer.js';
import { importModel } from '../../src/model/import.js';
import { PACKAGE_FILES } from '../../src/model/package-files.js';
import { HfTokenizer, ModelTokenizer } from '../../src/model/tokenizer.js';
import { writeFamilyGguf } from '../helpers/family-gguf.js';
import { FAMILIES, type Family } from '../helpers/model-families.js';
import { llamaCppTokenize, loadLlamaCpp } from '../helpers/llama-cpp.js';
import { SHARED } from '../helpers/paths.js';
import { EDGE_CASES as TEXT_EDGE_CASES, mismatches, SPECIAL_TOKEN_TEXTS } from '../helpers/tokenizer-cases.js';

const PARAGRAPHS = 300;

const EDGE_CASES = [...TEXT_EDGE_CASES, ...SPECIAL_TOKEN_TEXTS];

interface Setup {
  ours: ModelTokenizer;
  /** Our package's tokenizer.json without its special added tokens: llama.cpp's parse_special=false. */
  oursPlain: HfTokenizer;
  hf: HfTokenizer;
  model: LlamaModel;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gguf-bpe-tok-'));
let llama: Llama;
let paragraphs: string[];

beforeAll(async () => {
  llama = await loadLlamaCpp();
  const text = fs.readFileSync(path.join(SHARED, 'data/tinystories/tinystories_val.txt'), 'utf8');
  const all = text.split('\n\n').filter((p) => p.length > 0);
  const step = all.length / PARAGRAPHS;
  paragraphs = Array.from({ length: PARAGRAPHS }, (_, i) => all[Math.floor(i * step)]);
});

afterAll(async () => {
  await llama?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function setUp(family: Family): Promise<Setup> {
  const gguf = path.join(tmp, `${family}.gguf`);
  await writeFamilyGguf(family, gguf);
  const pkg = path.join(tmp, `${family}-pkg`);
  await importModel(gguf, pkg);
  const vocabSize = FAMILIES[family].config.vocab_size;
  const ours = ModelTokenizer.load(pkg, vocabSize);
  const read = (dir: string, file: string) => JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as Record<string, unknown>;
  const json = read(pkg, PACKAGE_FILES.tokenizer) as { added_tokens: { special: boolean }[] };
  const oursPlain = new HfTokenizer({ ...json, added_tokens: json.added_tokens.filter((t) => !t.special) }, read(pkg, PACKAGE_FILES.tokenizerConfig));
  const dir = FAMILIES[family].tokenizerDir;
  const hf = new HfTokenizer(read(dir, 'tokenizer.json'), read(dir, 'tokenizer_config.json'));
  const model = await llama.loadModel({ modelPath: gguf, vocabOnly: true });
  return { ours, oursPlain, hf, model };
}

describe.each([
  // Llama 3: GGUF `llama-bpe`; llama.cpp adds BOS (<|begin_of_text|>) for it. The original
  // tokenizer.json (Meta's first release) does not, so BOS is compared with llama.cpp only.
  { family: 'llama3' as const, bos: [128000], stop: [128001, 128009], eos: '<|end_of_text|>' },
  // Qwen3 (and Qwen2/2.5, the same tokenizer): GGUF `qwen2`, no BOS; chats end with <|im_end|>.
  { family: 'qwen3' as const, bos: [], stop: [151645, 151643], eos: '<|im_end|>' },
])('$family tokenizer from GGUF', ({ family, bos, stop, eos }) => {
  let s: Setup;
  beforeAll(async () => {
    s = await setUp(family);
  });
  afterAll(async () => {
    await s?.model.dispose();
  });

  it(`encodes ${PARAGRAPHS} TinyStories paragraphs and ${EDGE_CASES.length} edge cases as Hugging Face does on the original tokenizer.json`, () => {
    const texts = [...paragraphs, ...EDGE_CASES];
    expect(mismatches(texts, (t) => s.ours.encode(t, false), (t) => s.hf.encode(t, { add_special_tokens: false }).ids)).toEqual([]);
    expect(texts.some((t) => s.ours.encode(t, false).length > 100)).toBe(true); // real paragraphs, not trivia
  });

  it('encodes them as llama.cpp does on the GGUF (special-token text parsed, BOS as llama.cpp adds it)', () => {
    const texts = [...paragraphs, ...EDGE_CASES];
    expect(mismatches(texts, (t) => s.ours.encode(t, false), (t) => llamaCppTokenize(s.model, t, true))).toEqual([]);
    expect(s.model.tokens.shouldPrependBosToken).toBe(bos.length > 0);
    expect(mismatches(texts, (t) => s.ours.encode(t, true), (t) => [...bos, ...llamaCppTokenize(s.model, t, true)])).toEqual([]);
  });

  it('without special parsing, special-token text is plain text on both sides (user-defined tokens still whole)', () => {
    const specials = EDGE_CASES.filter((t) => t.includes('<'));
    expect(mismatches(specials, (t) => s.oursPlain.encode(t, { add_special_tokens: false }).ids, (t) => llamaCppTokenize(s.model, t, false))).toEqual([]);
    // The two semantics really differ on these texts.
    expect(specials.filter((t) => JSON.stringify(llamaCppTokenize(s.model, t, false)) !== JSON.stringify(llamaCppTokenize(s.model, t, true))).length).toBeGreaterThan(1);
  });

  it('decodes back to the text, as Hugging Face decodes', () => {
    const texts = [...paragraphs.slice(0, 50), ...EDGE_CASES.filter((t) => !t.includes('<|'))];
    expect(mismatches(texts, (t) => s.ours.decode(s.ours.encode(t, false)), (t) => t)).toEqual([]);
    // (@huggingface/tokenizers refuses to decode an empty list.)
    const hfDecode = (ids: number[]) => (ids.length === 0 ? '' : s.hf.decode(ids, { skip_special_tokens: true }));
    expect(mismatches(EDGE_CASES, (t) => s.ours.decode(s.ours.encode(t, true)), (t) => hfDecode(s.hf.encode(t).ids))).toEqual([]);
  });

  it('stops on EOS and every end-of-turn token, as llama.cpp does', () => {
    expect(s.ours.eosToken).toBe(eos);
    expect([...s.ours.stopTokenIds].sort()).toEqual([...stop].sort());
    for (const id of stop) expect(s.model.isEogToken(id as never), `llama.cpp EOG ${id}`).toBe(true);
  });
});

/**
 * The other pre-tokenizer names the importer accepts (SmolLM2's `smollm`, GPT-2's `gpt-2`; no real
 * file of theirs is here): the Qwen vocabulary written under each name, tokenized by our rebuilt
 * tokenizer.json and by llama.cpp, which applies its own regexes for the name. Equal ids mean the
 * Hugging Face pre-tokenizer we write for a name splits text as llama.cpp's does.
 */
describe.each(['smollm', 'gpt-2'])('pre-tokenizer %s', (pre) => {
  it('splits as llama.cpp does for that name', async () => {
    const qwen = path.join(tmp, 'qwen3.gguf');
    if (!fs.existsSync(qwen)) await writeFamilyGguf('qwen3', qwen);
    const source = await readGguf(qwen);
    const metadata = new Map(source.typedMetadata).set('tokenizer.ggml.pre', ggufValue.str(pre));
    const file = path.join(tmp, `qwen3-${pre}.gguf`);
    const tensors = source.tensors.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: source.tensorBytes(t) }));
    await writeGguf(file, { metadata, tensors });
    const { vocab } = await ggufToCheckpoint(file);
    const files = packageTokenizerFiles(vocab, { modelMaxLength: 2048 });
    const ours = new HfTokenizer(JSON.parse(JSON.stringify(files.tokenizerJson)) as object, JSON.parse(JSON.stringify(files.tokenizerConfig)) as object);
    const model = await llama.loadModel({ modelPath: file, vocabOnly: true });
    try {
      const texts = [...paragraphs.slice(0, 100), ...EDGE_CASES];
      expect(mismatches(texts, (t) => ours.encode(t, { add_special_tokens: false }).ids, (t) => llamaCppTokenize(model, t, true))).toEqual([]);
      // Digits: smollm splits every digit, gpt-2 keeps runs: the names really tokenize differently.
      expect(ours.encode('12345', { add_special_tokens: false }).ids.length).toBe(pre === 'smollm' ? 5 : llamaCppTokenize(model, '12345', true).length);
    } finally {
      await model.dispose();
    }
  });
});
