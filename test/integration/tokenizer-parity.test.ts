/**
 * The tokenizer.json we generate must tokenize exactly like the model's own tokenizer:
 * - llama.cpp (via node-llama-cpp) on the stories260K GGUF, and
 * - llama2.c's `encode` (re-implemented below from run.c, reading tok512.bin directly).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Llama, LlamaModel, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ggufToCheckpoint } from '../../src/model/gguf.js';
import { llama2cToCheckpoint } from '../../src/model/llama2c.js';
import { buildTokenizerFiles, sentencePieceMerges, type TokenizerFiles } from '../../src/model/tokenizer-json.js';
import { HfTokenizer } from '../../src/model/tokenizer.js';
import type { SentencePieceVocab } from '../../src/model/types.js';
import { llamaCppTokenize, loadLlamaCpp } from '../helpers/llama-cpp.js';
import { SHARED, STORIES_BIN, STORIES_GGUF as GGUF, STORIES_TOK as TOK_BIN } from '../helpers/paths.js';
import { EDGE_CASES as TEXT_EDGE_CASES, mismatches, NOT_NFC_TEXT } from '../helpers/tokenizer-cases.js';

const VAL_TEXT = path.join(SHARED, 'data/tinystories/tinystories_val.txt');

const BOS = 1;

const EDGE_CASES = [...TEXT_EDGE_CASES, NOT_NFC_TEXT];

let vocab: SentencePieceVocab;
let files: TokenizerFiles;
let tokenizer: HfTokenizer;
let llama: Llama;
let model: LlamaModel;
let paragraphs: string[];

beforeAll(async () => {
  const fromGguf = (await ggufToCheckpoint(GGUF)).vocab;
  if ('model' in fromGguf) throw new Error('stories260K.gguf has a SentencePiece vocabulary');
  vocab = fromGguf;
  files = buildTokenizerFiles(vocab, { modelMaxLength: 2048 });
  // Through JSON, as the package files are read back from disk.
  tokenizer = new HfTokenizer(JSON.parse(JSON.stringify(files.tokenizerJson)) as object, JSON.parse(JSON.stringify(files.tokenizerConfig)) as object);
  llama = await loadLlamaCpp();
  model = await llama.loadModel({ modelPath: GGUF });
  paragraphs = readFileSync(VAL_TEXT, 'utf8')
    .split('\n\n')
    .filter((p) => p.length > 0);
});

afterAll(async () => {
  await model?.dispose();
  await llama?.dispose();
});

// ---------------------------------------------------------------------------------------------
// helpers

const hfIds = (text: string): number[] => tokenizer.encode(text).ids;
const hfIdsNoBos = (text: string): number[] => tokenizer.encode(text, { add_special_tokens: false }).ids;
/** node-llama-cpp's tokenize never adds BOS; specialTokens=false is llama.cpp parse_special=false. */
const llamaCppIds = (text: string, parseSpecial = false): number[] => llamaCppTokenize(model, text, parseSpecial);
const hfDecode = (ids: number[]): string => (ids.length === 0 ? '' : tokenizer.decode(ids, { skip_special_tokens: true }));

/** Evenly spaced sample, deterministic. */
function sample<T>(items: T[], n: number): T[] {
  const step = items.length / n;
  return Array.from({ length: n }, (_, i) => items[Math.floor(i * step)]);
}

/**
 * llama2.c run.c `encode`, transcribed: BOS, a dummy-prefix " " token for non-empty text, then
 * one token per UTF-8 code point (byte ids + 3 when the code point is not a piece), then merge the
 * adjacent pair whose concatenation is the best-scoring piece (first such pair on ties) until none
 * is left. Works on tok512.bin's raw pieces, where the word boundary is a plain space.
 */
function loadLlama2cTokenizer(file: string): { pieces: string[]; scores: number[] } {
  const buf = readFileSync(file);
  const pieces: string[] = [];
  const scores: number[] = [];
  let at = 4;
  while (at < buf.length) {
    scores.push(buf.readFloatLE(at));
    const len = buf.readInt32LE(at + 4);
    pieces.push(buf.toString('utf8', at + 8, at + 8 + len));
    at += 8 + len;
  }
  return { pieces, scores };
}

function llama2cEncode(text: string, tok: { pieces: string[]; scores: number[] }): number[] {
  const ids = new Map(tok.pieces.map((p, i) => [p, i]));
  const tokens: number[] = [BOS];
  if (text.length > 0) tokens.push(ids.get(' ')!);
  for (const ch of text) {
    const id = ids.get(ch);
    if (id !== undefined) tokens.push(id);
    else for (const byte of Buffer.from(ch, 'utf8')) tokens.push(byte + 3);
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = ids.get(tok.pieces[tokens[i]] + tok.pieces[tokens[i + 1]]);
      if (id !== undefined && tok.scores[id] > best) {
        best = tok.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) return tokens;
    tokens.splice(bestIdx, 2, bestId);
  }
}

// ---------------------------------------------------------------------------------------------

describe('generated tokenizer.json', () => {
  it('is the same whichever stories260K file the vocab came from', async () => {
    const fromBin = (await llama2cToCheckpoint(STORIES_BIN, TOK_BIN)).vocab;
    expect(buildTokenizerFiles(fromBin, { modelMaxLength: 2048 })).toEqual(files);
  });

  it('has the LlamaConverter (legacy) structure', () => {
    const json = files.tokenizerJson;
    expect(json.model).toMatchObject({ type: 'BPE', byte_fallback: true, fuse_unk: true, unk_token: '<unk>', ignore_merges: false });
    expect(Object.keys(json.model.vocab)).toHaveLength(512);
    expect(json.model.merges.slice(0, 3)).toEqual([['▁', 't'], ['h', 'e'], ['▁', 'a']]);
    expect(json.normalizer).toEqual({
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    });
    expect(json.pre_tokenizer).toBeNull();
    expect(json.decoder.decoders).toContainEqual({ type: 'Strip', content: ' ', start: 1, stop: 0 });
    expect(json.added_tokens.map((t) => [t.id, t.content, t.special])).toEqual([
      [0, '<unk>', true],
      [1, '<s>', true],
      [2, '</s>', true],
    ]);
    expect(files.tokenizerConfig).toEqual({
      add_bos_token: true,
      add_eos_token: false,
      bos_token: '<s>',
      eos_token: '</s>',
      unk_token: '<unk>',
      model_max_length: 2048,
      clean_up_tokenization_spaces: false,
      legacy: true,
      tokenizer_class: 'LlamaTokenizer',
    });
  });

  it('follows addSpacePrefix and chatTemplate', () => {
    const other = buildTokenizerFiles({ ...vocab, addSpacePrefix: false, chatTemplate: '{{ x }}' }, { modelMaxLength: 8 });
    expect(other.tokenizerJson.normalizer.normalizers).toEqual([{ type: 'Replace', pattern: { String: ' ' }, content: '▁' }]);
    expect(other.tokenizerJson.decoder.decoders.map((d) => (d as { type: string }).type)).toEqual(['Replace', 'ByteFallback', 'Fuse']);
    expect(other.tokenizerConfig.chat_template).toBe('{{ x }}');
  });

  it('orders merges by merged-piece score, then piece id, then left-piece id', () => {
    const toy: SentencePieceVocab = {
      tokens: ['<unk>', '<s>', '</s>', 'a', 'b', 'c', 'ab', 'bc', 'abc', 'ca'],
      scores: [0, 0, 0, -10, -10, -10, -1, -2, -2, -3],
      types: [2, 3, 3, 1, 1, 1, 1, 1, 1, 1],
      bos: 1,
      eos: 2,
      unk: 0,
      addSpacePrefix: true,
    };
    // 'bc' and 'abc' tie at -2: 'bc' (id 7) first; abc's splits by left id: a|bc (3) before ab|c (6).
    expect(sentencePieceMerges(toy)).toEqual([['a', 'b'], ['b', 'c'], ['a', 'bc'], ['ab', 'c'], ['c', 'a']]);
  });
});

describe('encoding parity', () => {
  it('encodes the README prompt', () => {
    expect(hfIds('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(llamaCppIds('Once upon a time')).toEqual([403, 407, 261, 378]);
  });

  it('matches llama.cpp on every TinyStories validation paragraph and the edge cases', () => {
    expect(paragraphs.length).toBe(4300);
    const texts = [...paragraphs, ...EDGE_CASES, '\u0000 NUL', sample(paragraphs, 20).join('\n\n') + '\n'];
    expect(mismatches(texts, hfIdsNoBos, (t) => llamaCppIds(t))).toEqual([]);
    // With special tokens on, the only difference is the BOS the post-processor prepends.
    expect(mismatches(texts, hfIds, (t) => [BOS, ...llamaCppIds(t)])).toEqual([]);
  });

  it('matches llama2.c encode on 200 paragraphs and the edge cases', () => {
    const tok = loadLlama2cTokenizer(TOK_BIN);
    const texts = [...sample(paragraphs, 200), ...EDGE_CASES];
    expect(mismatches(texts, hfIds, (t) => llama2cEncode(t, tok))).toEqual([]);
  });

  it('decodes back to the original text', () => {
    const texts = [...paragraphs, ...EDGE_CASES];
    expect(mismatches(texts, (t) => hfDecode(hfIds(t)), (t) => t)).toEqual([]);
    // llama.cpp's detokenizer (which also drops the prefix space) agrees.
    expect(mismatches(sample(texts, 300), (t) => hfDecode(hfIds(t)), (t) => model.detokenize(llamaCppIds(t) as Token[]))).toEqual([]);
  });
});

describe('documented divergences', () => {
  // Text that spells a special token. HF tokenizers always match added tokens in the input (as
  // transformers' LlamaTokenizerFast does); llama.cpp does so only with parse_special=true, and
  // llama2.c never does (it has no notion of special tokens in text).
  const SPECIAL_TEXT = ['<s>', '</s>', '<unk>', 'x<s>y</s>z', 'Hi <s> there', '<s>Once upon'];

  it('special-token text: HF == llama.cpp parse_special=true; llama2.c == llama.cpp parse_special=false', () => {
    const tok = loadLlama2cTokenizer(TOK_BIN);
    expect(mismatches(SPECIAL_TEXT, hfIdsNoBos, (t) => llamaCppIds(t, true))).toEqual([]);
    expect(mismatches(SPECIAL_TEXT, (t) => llama2cEncode(t, tok), (t) => [BOS, ...llamaCppIds(t, false)])).toEqual([]);
    expect(hfIdsNoBos('x<s>y')).toEqual([410, 444, 1, 348]); // '▁x' <s> '▁y': the legacy prefix after a special
    expect(llamaCppIds('x<s>y', false)).not.toContain(BOS);
  });

  it('U+2581 in the input: HF and llama.cpp read it as a space (SentencePiece), llama2.c byte-encodes it', () => {
    const tok = loadLlama2cTokenizer(TOK_BIN);
    expect(hfIdsNoBos('a\u2581b')).toEqual(hfIdsNoBos('a b'));
    expect(llamaCppIds('a\u2581b')).toEqual(hfIdsNoBos('a b'));
    expect(hfDecode(hfIds('a\u2581b'))).toBe('a b'); // lossy, by design of the ▁ convention
    expect(llama2cEncode('a\u2581b', tok)).toEqual([BOS, 261, 0xe2 + 3, 0x96 + 3, 0x81 + 3, 430]);
  });
});
