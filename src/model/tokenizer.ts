import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { z } from 'zod';
import { PACKAGE_FILES } from './package-files.js';
import type { SpecialTokens } from './chat-template.js';

/**
 * The part of @huggingface/tokenizers' Tokenizer the gateway uses. The package's own declarations
 * (0.2.0) re-export the class from './core/Tokenizer' without a file extension, which NodeNext
 * resolution does not follow, so TypeScript sees the class as `any`; these are its signatures from
 * types/core/Tokenizer.d.ts.
 */
export interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  /** Added tokens by id (tokenizer.json's `added_tokens`): their text is their content, whatever the vocabulary's spelling. */
  get_added_tokens_decoder(): Map<number, { content: string; special: boolean }>;
  /** The decoder built from tokenizer.json's `decoder`, which keeps that JSON as `config`. */
  readonly decoder: { config: unknown } | null;
}
export const HfTokenizer = Tokenizer as new (tokenizerJson: object, tokenizerConfig: object) => HfTokenizer;

const JsonObject = z.record(z.string(), z.unknown());
/** generation_config.json's `eos_token_id`: one id or a list. */
const GenerationEos = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).optional();

export interface TokenPiece {
  /** The token's text as OpenAI reports it in logprobs; `bytes:\xNN…` for bytes that are not whole UTF-8 (see piece()). */
  text: string;
  bytes: number[];
}

/**
 * The model's tokenizer, from the package's Hugging Face tokenizer.json, plus what the gateway needs
 * around it: special-token ids, per-token text for logprobs, and the chat template string.
 */
export class ModelTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly bosToken: string;
  readonly eosToken: string;
  readonly chatTemplate: string | null;
  /** The special tokens a chat template sees, as transformers passes them (see SpecialTokens). */
  readonly specialTokens: SpecialTokens;
  /** How the vocabulary spells bytes, which decides each token's text and bytes in logprobs. */
  readonly vocabKind: VocabKind;
  /**
   * The most input bytes one token can stand for (its vocabulary string's UTF-8 length bounds it):
   * a text of B bytes is at least B / maxPieceBytes tokens, so a prompt too long for the context is
   * known from its length alone, before tokenizing it.
   */
  readonly maxPieceBytes: number;
  /**
   * Every token that ends a generation: the tokenizer's EOS and each `eos_token_id` the package's
   * generation_config.json lists (Llama 3 ends turns with `<|eot_id|>`, Qwen with `<|im_end|>`).
   */
  readonly stopTokenIds: number[];
  private readonly pieces: TokenPiece[];
  /** Special added tokens: decode drops them, so they add nothing to a reply's text. */
  private readonly specialIds: Set<number>;

  constructor(
    private readonly tok: HfTokenizer,
    config: Record<string, unknown>,
    vocabSize: number,
    generationEos: number[] = [],
  ) {
    this.bosToken = tokenName(config.bos_token) ?? '<s>';
    this.eosToken = tokenName(config.eos_token) ?? '</s>';
    this.bosId = tok.token_to_id(this.bosToken) ?? -1;
    this.eosId = tok.token_to_id(this.eosToken) ?? -1;
    this.chatTemplate = typeof config.chat_template === 'string' ? config.chat_template : null;
    this.specialTokens = specialTokensOf(config);
    this.vocabKind = vocabKindOf(tok.decoder?.config);
    const raw = Array.from({ length: vocabSize }, (_, id) => tok.id_to_token(id) ?? '');
    // Byte-level vocabularies spell added tokens as plain text, not in the byte alphabet (Qwen's
    // `<think>` would survive the byte mapping, a non-ASCII one would not). SentencePiece ones are
    // read as before: their byte pieces (`<0x0A>`) may be listed as added tokens.
    const added = this.vocabKind === 'byte-level' ? tok.get_added_tokens_decoder() : new Map<number, { content: string }>();
    const pieceOf = this.vocabKind === 'byte-level' ? byteLevelPiece : sentencePiecePiece;
    this.specialIds = new Set([...tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.pieces = raw.map((r, id) => {
      const a = added.get(id);
      return a ? textPiece(a.content) : pieceOf(r);
    });
    // A loop, not Math.max(...spread): 128k+ arguments overflow the call stack. A byte-level vocabulary
    // string is at least as long in UTF-8 as the bytes it stands for, so the bound stays safe there.
    this.maxPieceBytes = raw.reduce((most, r) => Math.max(most, Buffer.byteLength(r, 'utf8')), 1);
    this.stopTokenIds = [...new Set([this.eosId, ...generationEos])].filter((id) => id >= 0 && id < vocabSize);
  }

  static load(modelDir: string, vocabSize: number): ModelTokenizer {
    const read = (file: string) => JsonObject.parse(JSON.parse(fs.readFileSync(path.join(modelDir, file), 'utf8')));
    const config = read(PACKAGE_FILES.tokenizerConfig);
    const generation = fs.existsSync(path.join(modelDir, PACKAGE_FILES.generationConfig)) ? read(PACKAGE_FILES.generationConfig) : {};
    const eos = GenerationEos.safeParse(generation.eos_token_id);
    const eosIds = eos.success && eos.data !== undefined ? [eos.data].flat() : [];
    return new ModelTokenizer(new HfTokenizer(read(PACKAGE_FILES.tokenizer), config), config, vocabSize, eosIds);
  }

  /** `addSpecial`: add BOS as the model expects for raw text; chat templates write it themselves. */
  encode(text: string, addSpecial: boolean): number[] {
    return this.tok.encode(text, { add_special_tokens: addSpecial }).ids;
  }

  /**
   * Text of generated ids: special tokens (`<|eot_id|>`, `<|im_end|>`, `<|endoftext|>`...) are dropped,
   * never printed. No clean-up of tokenization spaces, whatever tokenizer_config says (Meta's first
   * Llama 3 file says true): it would turn a generated " ," or " 's" into "," and "'s", so the text
   * would no longer be the concatenation of its tokens, as streaming and logprobs need it to be.
   */
  decode(ids: number[]): string {
    // The library refuses an empty list.
    if (ids.length === 0) return '';
    return this.tok.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  piece(id: number): TokenPiece {
    return this.pieces[id] ?? { text: '', bytes: [] };
  }

  /** Whether `id` is a special token, which a reply's text never shows (decode skips it). */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }
}

function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

/**
 * The special tokens transformers passes to a chat template (`special_tokens_map`): each of these
 * tokenizer_config.json entries that is set (a string, or an AddedToken object's content), and
 * additional_special_tokens when not empty. A null entry (Qwen's `bos_token: null`) is left out.
 */
export function specialTokensOf(config: Record<string, unknown>): SpecialTokens {
  const out: SpecialTokens = {};
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    const name = tokenName(config[key]);
    if (name) out[key] = name;
  }
  const extra = Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens.map(tokenName).filter((t): t is string => !!t) : [];
  if (extra.length > 0) out.additional_special_tokens = extra;
  return out;
}

/**
 * `byte-level`: GPT-2-style byte-level BPE (Llama 3, Qwen, SmolLM2), each vocabulary character
 * standing for one byte; `sentencepiece`: SentencePiece-style (Llama 2, Mistral, stories260K), `▁`
 * for a space and `<0xNN>` byte-fallback pieces. Told apart by tokenizer.json's decoder, which is
 * ByteLevel (alone or in a Sequence) exactly for the former.
 */
export type VocabKind = 'byte-level' | 'sentencepiece';

export function vocabKindOf(decoder: unknown): VocabKind {
  const d = decoder as { type?: unknown; decoders?: unknown } | null | undefined;
  if (d?.type === 'ByteLevel') return 'byte-level';
  if (d?.type === 'Sequence' && Array.isArray(d.decoders) && d.decoders.some((x) => vocabKindOf(x) === 'byte-level')) return 'byte-level';
  return 'sentencepiece';
}

/** A token whose text is its own content (an added or special token). */
function textPiece(text: string): TokenPiece {
  return { text, bytes: [...Buffer.from(text, 'utf8')] };
}

/** SentencePiece pieces: U+2581 is a space, `<0xNN>` a raw byte. */
function sentencePiecePiece(raw: string): TokenPiece {
  const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(raw);
  if (byte) return piece([parseInt(byte[1], 16)]);
  return textPiece(raw.replace(/\u2581/g, ' '));
}

/**
 * GPT-2's bytes_to_unicode, reversed: byte-level vocabularies spell byte b as the character b itself
 * when b is printable (33–126, 161–172, 174–255) and as 256 + n for the n-th other byte in order, so
 * `Ġ` (U+0120) is a space and `Ċ` (U+010A) a newline.
 */
const BYTE_OF_CHAR: ReadonlyMap<number, number> = (() => {
  const map = new Map<number, number>();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    map.set(printable ? b : 256 + n++, b);
  }
  return map;
})();

/** A byte-level vocabulary string → its real bytes; a string outside the byte alphabet is taken as text. */
function byteLevelPiece(raw: string): TokenPiece {
  const bytes: number[] = [];
  for (const ch of raw) {
    const b = BYTE_OF_CHAR.get(ch.codePointAt(0) ?? -1);
    if (b === undefined) return textPiece(raw);
    bytes.push(b);
  }
  return piece(bytes);
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Bytes → OpenAI's logprob token: the text when the bytes are whole UTF-8, otherwise (a token that is
 * part of a multi-byte character, which byte-level vocabularies and byte fallback both have) OpenAI's
 * `bytes:` form: printable ASCII as itself, a backslash doubled, every other byte as `\xNN`, so
 * `[0x20, 0xe2, 0x80]` is `bytes: \xe2\x80`. `bytes` always holds the real bytes.
 */
function piece(bytes: number[]): TokenPiece {
  try {
    return { text: STRICT_UTF8.decode(Uint8Array.from(bytes)), bytes };
  } catch {
    const escaped = bytes.map((b) => (b === 0x5c ? '\\\\' : b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`));
    return { text: `bytes:${escaped.join('')}`, bytes };
  }
}
