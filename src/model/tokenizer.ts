import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { z } from 'zod';
import { PACKAGE_FILES } from './package-files.js';

/**
 * The part of @huggingface/tokenizers' Tokenizer the gateway uses. The package's own declarations
 * (0.2.0) re-export the class from './core/Tokenizer' without a file extension, which NodeNext
 * resolution does not follow, so TypeScript sees the class as `any`; these are its signatures from
 * types/core/Tokenizer.d.ts.
 */
export interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
}
export const HfTokenizer = Tokenizer as new (tokenizerJson: object, tokenizerConfig: object) => HfTokenizer;

const JsonObject = z.record(z.string(), z.unknown());
/** generation_config.json's `eos_token_id`: one id or a list. */
const GenerationEos = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).optional();

export interface TokenPiece {
  /** The token's text as OpenAI reports it in logprobs; `bytes:\xNN` for a lone non-UTF-8 byte. */
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
    const raw = Array.from({ length: vocabSize }, (_, id) => tok.id_to_token(id) ?? '');
    this.pieces = raw.map(pieceOf);
    this.maxPieceBytes = Math.max(1, ...raw.map((r) => Buffer.byteLength(r, 'utf8')));
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

  decode(ids: number[]): string {
    return this.tok.decode(ids, { skip_special_tokens: true });
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  piece(id: number): TokenPiece {
    return this.pieces[id] ?? { text: '', bytes: [] };
  }
}

function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

/** SentencePiece pieces: U+2581 is a space, `<0xNN>` a raw byte. */
function pieceOf(raw: string): TokenPiece {
  const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(raw);
  if (byte) {
    const b = parseInt(byte[1], 16);
    return { text: b < 0x80 ? String.fromCharCode(b) : `bytes:\\x${byte[1].toLowerCase()}`, bytes: [b] };
  }
  const text = raw.replace(/\u2581/g, ' ');
  return { text, bytes: [...Buffer.from(text, 'utf8')] };
}
