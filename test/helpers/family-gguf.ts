/**
 * Writes a GGUF of each model family (test/helpers/model-families.ts) the way llama.cpp's
 * convert_hf_to_gguf.py writes a real checkpoint of that family: the architecture's keys and tensor
 * names (q/k in rotate-half order for qwen2/qwen3, llama3 RoPE scaling as `rope_freqs.weight`), and
 * the family's real tokenizer as the converter turns it into metadata:
 * - Llama 3 / Qwen (tokenizer.json): `gpt2` model, tokens in id order with token types (added
 *   tokens CONTROL when special or looking special (`<|...|>`), else USER_DEFINED; ids past the
 *   tokenizer up to vocab_size become `[PADn]` UNUSED), merges as "left right", the pre-tokenizer
 *   name convert_hf_to_gguf.py's hash check gives these files, BOS/EOS/PAD from tokenizer_config.json
 *   then config.json (gguf-py SpecialVocab), add_bos_token only where tokenizer_config.json says,
 *   and the chat template.
 * - Llama 2 (tokenizer.bin, the SentencePiece vocabulary in llama2.c's export): `llama` model with
 *   scores and types, BOS 1, EOS 2, UNK 0.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { GgufValueType, gguf, writeGguf, type GgufTypedValue } from '../../src/formats/gguf-file.js';
import { architectureMetadata, architectureTensors } from '../../src/model/gguf-architectures.js';
import { vocabMetadata } from '../../src/model/gguf-tokenizer.js';
import { parseLlama2cTokenizer } from '../../src/model/llama2c.js';
import type { LlamaWeights } from '../../src/model/types.js';
import { FAMILIES, randomFamilyWeights, type Family } from './model-families.js';

/** gguf TokenType. */
const NORMAL = 1;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;

/** What convert_hf_to_gguf.py's get_vocab_base_pre detects for the shared tokenizer files. */
const PRE_NAME: Record<string, string> = { llama3: 'llama-bpe', qwen3: 'qwen2' };

interface HfAddedToken {
  id: number;
  content: string;
  special: boolean;
}
interface HfTokenizerJson {
  added_tokens: HfAddedToken[];
  model: { vocab: Record<string, number>; merges: (string | [string, string])[] };
}
type TokenSpec = string | { content: string } | null | undefined;

export interface FamilyGgufOptions {
  quant?: 'f32' | 'q4_0';
  seed?: number;
  /** randomFamilyWeights' scale: larger spreads the logits further apart. */
  scale?: number;
  /** Weights to write instead of random ones of the family. */
  weights?: LlamaWeights;
}

/** Writes the family's GGUF to `file` and returns the weights it holds (in our layout). */
export async function writeFamilyGguf(family: Family, file: string, opts: FamilyGgufOptions = {}): Promise<LlamaWeights> {
  const weights = opts.weights ?? randomFamilyWeights(family, opts.seed, opts.scale);
  const quant = opts.quant ?? 'f32';
  const metadata = new Map<string, GgufTypedValue>([
    ...architectureMetadata(weights.config, { quant, name: `tiny-${family}` }),
    ...familyTokenizerMetadata(family),
  ]);
  await writeGguf(file, { metadata, tensors: architectureTensors(weights, quant) });
  return weights;
}

/** tokenizer.* metadata for the family's real tokenizer, as convert_hf_to_gguf.py writes it. */
export function familyTokenizerMetadata(family: Family): Map<string, GgufTypedValue> {
  const spec = FAMILIES[family];
  if (family === 'llama2') {
    const bin = readFileSync(path.join(spec.tokenizerDir, 'tokenizer.bin'));
    return vocabMetadata(parseLlama2cTokenizer(bin, spec.config.vocab_size, 'llama2/tokenizer.bin'));
  }
  const dirName = path.basename(spec.tokenizerDir);
  const json = JSON.parse(readFileSync(path.join(spec.tokenizerDir, 'tokenizer.json'), 'utf8')) as HfTokenizerJson;
  const config = JSON.parse(readFileSync(path.join(spec.tokenizerDir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  const vocabSize = spec.config.vocab_size;

  const tokens: string[] = new Array<string>(vocabSize);
  const types: number[] = new Array<number>(vocabSize);
  for (const [piece, id] of Object.entries(json.model.vocab)) {
    tokens[id] = piece;
    types[id] = NORMAL;
  }
  for (const added of json.added_tokens) {
    tokens[added.id] = added.content;
    const looksSpecial = added.content.startsWith('<|') && added.content.endsWith('|>');
    types[added.id] = added.special || looksSpecial ? CONTROL : USER_DEFINED;
  }
  for (let id = 0; id < vocabSize; id++) {
    if (tokens[id] === undefined) {
      tokens[id] = `[PAD${id}]`;
      types[id] = UNUSED;
    }
  }
  const merges = json.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' ')));

  // gguf-py SpecialVocab: tokenizer_config.json's *_token (looked up among added tokens), then config.json's *_token_id.
  const idOf = (t: TokenSpec): number | undefined => {
    const content = typeof t === 'string' ? t : t?.content;
    return json.added_tokens.find((a) => a.content === content)?.id;
  };
  const bos = idOf(config.bos_token as TokenSpec) ?? spec.config.bos_token_id;
  const eos = idOf(config.eos_token as TokenSpec) ?? spec.config.eos_token_id;
  const pad = idOf(config.pad_token as TokenSpec);

  const m = new Map<string, GgufTypedValue>();
  m.set('tokenizer.ggml.model', gguf.str('gpt2'));
  m.set('tokenizer.ggml.pre', gguf.str(PRE_NAME[dirName]));
  m.set('tokenizer.ggml.tokens', gguf.array(GgufValueType.STRING, tokens));
  m.set('tokenizer.ggml.token_type', gguf.array(GgufValueType.INT32, types));
  m.set('tokenizer.ggml.merges', gguf.array(GgufValueType.STRING, merges));
  m.set('tokenizer.ggml.bos_token_id', gguf.u32(bos));
  m.set('tokenizer.ggml.eos_token_id', gguf.u32(eos));
  if (pad !== undefined) m.set('tokenizer.ggml.padding_token_id', gguf.u32(pad));
  if (typeof config.add_bos_token === 'boolean') m.set('tokenizer.ggml.add_bos_token', gguf.bool(config.add_bos_token));
  if (typeof config.chat_template === 'string') m.set('tokenizer.chat_template', gguf.str(config.chat_template));
  return m;
}
