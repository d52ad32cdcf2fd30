import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { HfTokenizer, ModelTokenizer, vocabKindOf } from '../../src/model/tokenizer.js';
import { TextAssembler } from '../../src/serving/text-assembler.js';
import { SHARED } from '../helpers/paths.js';

/**
 * Byte-level BPE vocabularies (Llama 3, Qwen) through ModelTokenizer, on the real tokenizer files of
 * ../shared/tokenizers: each token's logprob text and bytes, and the streamed text of generated ids
 * (special tokens never printed, characters split over tokens never half-printed).
 */
const FAMILIES = {
  // The model's vocabulary may be larger than the tokenizer's (Qwen pads to 151,936): ids past it are empty.
  llama3: { vocabSize: 128_256, specials: ['<|eot_id|>', '<|start_header_id|>', '<|end_of_text|>', '<|begin_of_text|>'], addedText: null },
  qwen3: { vocabSize: 151_936, specials: ['<|im_end|>', '<|endoftext|>', '<|im_start|>'], addedText: '<think>' },
} as const;
type Family = keyof typeof FAMILIES;

const loaded = new Map<Family, { tok: ModelTokenizer; hf: HfTokenizer }>();
beforeAll(() => {
  for (const family of Object.keys(FAMILIES) as Family[]) {
    const dir = path.join(SHARED, 'tokenizers', family);
    const read = (file: string) => JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as Record<string, unknown>;
    const config = read('tokenizer_config.json');
    const hf = new HfTokenizer(read('tokenizer.json'), config);
    loaded.set(family, { hf, tok: new ModelTokenizer(hf, config, FAMILIES[family].vocabSize) });
  }
});
const get = (family: Family) => loaded.get(family)!;

/** Rare characters that byte-level vocabularies split into several tokens, each part of one character. */
const TEXT =
  'Hello, world! It \'s "quoted" , spaced ; text\n\n\tTabbed line\r\n' +
  'Café naïve façade — 中文字符 日本語のテキスト 한국어 Ελληνικά العربية\n' +
  'Emoji: 😀👍🏽🦙🧑‍🚀 🇫🇷 and rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 𓀀 ☃︎\n' +
  'Code: `const x = {a: 1};` // done  \n   indented\n';

describe.each(Object.keys(FAMILIES) as Family[])('%s byte-level vocabulary', (family) => {
  it('is recognised as byte-level from tokenizer.json', () => {
    expect(get(family).tok.vocabKind).toBe('byte-level');
  });

  it('gives every token the bytes the library decoder gives it, over the whole vocabulary', () => {
    const { tok, hf } = get(family);
    // As the library decodes: a byte-order mark is text (Qwen has a token for it), not stripped.
    const lenient = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    let checked = 0;
    let partial = 0;
    for (let id = 0; id < tok.vocabSize; id++) {
      const raw = hf.id_to_token(id);
      const p = tok.piece(id);
      if (raw === undefined) {
        expect(p).toEqual({ text: '', bytes: [] });
        continue;
      }
      const libraryText = hf.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
      if (lenient.decode(Uint8Array.from(p.bytes)) !== libraryText) throw new Error(`token ${id} (${JSON.stringify(raw)}): bytes ${JSON.stringify(p.bytes)} decode to something else than ${JSON.stringify(libraryText)}`);
      if (p.text.startsWith('bytes:')) partial++;
      else if (p.text !== libraryText) throw new Error(`token ${id}: text ${JSON.stringify(p.text)} is not ${JSON.stringify(libraryText)}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(128_000);
    // Tokens that are part of a multi-byte character exist in both vocabularies and take the bytes: form.
    expect(partial).toBeGreaterThan(100);
  });

  it('spells spaces, newlines, partial characters and special tokens as OpenAI does', () => {
    const { tok, hf } = get(family);
    const ids = tok.encode(TEXT, false);
    const pieces = ids.map((id) => tok.piece(id));
    // The tokens' bytes are the text's bytes, in order.
    expect(Buffer.from(pieces.flatMap((p) => p.bytes)).toString('utf8')).toBe(TEXT);
    expect(pieces.map((p) => p.text)).toContain(' world');
    expect(pieces.some((p) => p.text.includes('\n'))).toBe(true);
    const split = pieces.filter((p) => p.text.startsWith('bytes:'));
    expect(split.length).toBeGreaterThan(0);
    for (const p of split) {
      expect(() => new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(p.bytes))).toThrow();
      const escaped = p.bytes.map((b) => (b === 0x5c ? '\\\\' : b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
      expect(p.text).toBe(`bytes:${escaped}`);
    }
    for (const special of FAMILIES[family].specials) {
      const id = hf.token_to_id(special)!;
      expect(tok.piece(id)).toEqual({ text: special, bytes: [...Buffer.from(special)] });
    }
    const added = FAMILIES[family].addedText;
    if (added) expect(tok.piece(hf.token_to_id(added)!).text).toBe(added);
  });

  it('decodes text exactly, with no clean-up of tokenization spaces, and never prints special tokens', () => {
    const { tok, hf } = get(family);
    expect(tok.decode(tok.encode(TEXT, false))).toBe(TEXT);
    const specialIds = FAMILIES[family].specials.map((s) => hf.token_to_id(s)!);
    expect(tok.decode([...specialIds, ...tok.encode('a , b', false), ...specialIds])).toBe('a , b');
    expect(tok.decode([])).toBe('');
  });

  it('streams text split over tokens whole, without special tokens, through the text assembler', () => {
    const { tok, hf } = get(family);
    const context = tok.encode('Prompt: say something.\n', false);
    const specialIds = FAMILIES[family].specials.map((s) => hf.token_to_id(s)!);
    const textIds = tok.encode(TEXT, false);
    // Special tokens in the middle of the stream (a model may emit one that does not end the generation).
    const ids = [...textIds.slice(0, 7), specialIds[1], ...textIds.slice(7), specialIds[0]];
    const assembler = new TextAssembler(tok, context, []);
    const deltas = ids.map((id) => assembler.push(id).delta);
    const out = deltas.join('') + assembler.flush();
    expect(out).toBe(TEXT);
    expect(deltas.some((d) => d.includes('\uFFFD'))).toBe(false);
    for (const s of FAMILIES[family].specials) expect(out).not.toContain(s);
    // Some tokens were held back (part of a character), and came out with the token that completed it.
    const heldBack = ids.filter((id, i) => deltas[i] === '' && tok.piece(id).text.startsWith('bytes:'));
    expect(heldBack.length).toBeGreaterThan(0);
  });

  it('stops at a stop string that spans a split character', () => {
    const { tok } = get(family);
    const context = tok.encode('Q: ', false);
    const assembler = new TextAssembler(tok, context, ['🦙🧑']);
    let out = '';
    let stopped = false;
    for (const id of tok.encode(TEXT, false)) {
      const r = assembler.push(id);
      out += r.delta;
      if (r.stop) {
        stopped = true;
        break;
      }
    }
    expect(stopped).toBe(true);
    expect(out).toBe(TEXT.slice(0, TEXT.indexOf('🦙🧑')));
  });
});

describe('vocabulary kinds', () => {
  it('tells SentencePiece decoders (Llama 2, stories260K) from byte-level ones', () => {
    const sentencePiece = { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] };
    expect(vocabKindOf(sentencePiece)).toBe('sentencepiece');
    expect(vocabKindOf({ type: 'Metaspace', replacement: '▁' })).toBe('sentencepiece');
    expect(vocabKindOf(null)).toBe('sentencepiece');
    expect(vocabKindOf({ type: 'ByteLevel', add_prefix_space: false })).toBe('byte-level');
    expect(vocabKindOf({ type: 'Sequence', decoders: [{ type: 'ByteLevel' }] })).toBe('byte-level');
  });
});
