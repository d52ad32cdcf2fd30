/**
 * A GGUF file's tokenizer (tokenizer.ggml.*) to our vocabulary forms and to the package's Hugging
 * Face tokenizer files, and back to GGUF metadata for the writer.
 *
 * Two tokenizer models: `llama` (SentencePiece BPE, built by ./tokenizer-json.ts) and `gpt2`
 * (byte-level BPE: Llama 3, Qwen2/2.5/3, SmolLM2). A byte-level BPE is tokens + merges + a
 * pre-tokenizer that splits the text first; GGUF names that split by `tokenizer.ggml.pre`, and the
 * Hugging Face pre-tokenizer for each name below is the one in the model family's own tokenizer.json
 * (the regexes are those files' Split patterns, which llama.cpp's llama-vocab.cpp re-expresses).
 */
import { GgufMetadataReader, GgufValueType, gguf, type GgufFile, type GgufTypedValue, type GgufValue } from '../formats/gguf-file.js';
import { bosPostProcessor, buildTokenizerFiles } from './tokenizer-json.js';
import type { BpeVocab, SentencePieceVocab } from './types.js';

/** GGUF / SentencePiece token types (llama.cpp llama_token_type). */
const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export const GGUF_TOKENIZER_MODELS = ['llama', 'gpt2'] as const;

// ---------------------------------------------------------------------------------------------
// Byte-level BPE pre-tokenizers, by tokenizer.ggml.pre

/** Llama 3's tokenizer.json Split regex (llama.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3). */
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** Qwen2/2.5/3's tokenizer.json Split regex: single digits (llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2). */
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface ByteLevelSettings {
  add_prefix_space: boolean;
  trim_offsets: boolean;
  use_regex: boolean;
}
const byteLevel = (s: ByteLevelSettings) => ({ type: 'ByteLevel', ...s });
const split = (regex: string) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false });

interface PreTokenizerFamily {
  normalizer: object | null;
  preTokenizer: object;
  decoder: object;
  /** BPE `ignore_merges`: a pre-token that is itself in the vocabulary is one token (Llama 3). */
  ignoreMerges: boolean;
  /** Hugging Face clean_up_tokenization_spaces, as llama.cpp's clean_spaces for the same name. */
  cleanSpaces: boolean;
  /** llama.cpp's add_bos default for the name when the file has no tokenizer.ggml.add_bos_token. */
  addBos: boolean;
}

const LLAMA3: PreTokenizerFamily = {
  normalizer: null,
  preTokenizer: { type: 'Sequence', pretokenizers: [split(LLAMA3_SPLIT), byteLevel({ add_prefix_space: false, trim_offsets: true, use_regex: false })] },
  decoder: byteLevel({ add_prefix_space: true, trim_offsets: true, use_regex: true }),
  ignoreMerges: true,
  cleanSpaces: true,
  addBos: true,
};

/** GPT-2's ByteLevel pre-tokenizer with its built-in regex (llama.cpp LLAMA_VOCAB_PRE_TYPE_GPT2). */
const GPT2_BYTE_LEVEL = byteLevel({ add_prefix_space: false, trim_offsets: true, use_regex: true });

const PRE_TOKENIZERS: Record<string, PreTokenizerFamily> = {
  'llama-bpe': LLAMA3,
  llama3: LLAMA3,
  'llama-v3': LLAMA3,
  qwen2: {
    normalizer: { type: 'NFC' },
    preTokenizer: { type: 'Sequence', pretokenizers: [split(QWEN2_SPLIT), byteLevel({ add_prefix_space: false, trim_offsets: false, use_regex: false })] },
    decoder: byteLevel({ add_prefix_space: false, trim_offsets: false, use_regex: false }),
    ignoreMerges: false,
    cleanSpaces: false,
    addBos: false,
  },
  // SmolLM / SmolLM2 (StarCoder-style): every digit alone, then GPT-2's regex.
  smollm: {
    normalizer: null,
    preTokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, GPT2_BYTE_LEVEL] },
    decoder: byteLevel({ add_prefix_space: true, trim_offsets: true, use_regex: true }),
    ignoreMerges: false,
    cleanSpaces: false,
    addBos: false,
  },
  'gpt-2': {
    normalizer: null,
    preTokenizer: GPT2_BYTE_LEVEL,
    decoder: byteLevel({ add_prefix_space: true, trim_offsets: true, use_regex: true }),
    ignoreMerges: false,
    cleanSpaces: true,
    addBos: false,
  },
};

export const SUPPORTED_BPE_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

/**
 * Tokens that end a generation when their text is one of these, whatever the file's EOS: llama.cpp
 * marks them end-of-generation by text (llama-vocab.cpp), and Llama 3 GGUFs name <|end_of_text|>
 * as EOS while chats end with <|eot_id|>. The subset for the families served here.
 */
const END_OF_GENERATION_TEXTS = new Set(['<|eot_id|>', '<|eom_id|>', '<|im_end|>', '<|endoftext|>', '<|end_of_text|>']);

// ---------------------------------------------------------------------------------------------
// GGUF metadata -> vocabulary

export function vocabFromGguf(file: GgufFile): SentencePieceVocab | BpeVocab {
  const meta = new GgufMetadataReader(file);
  const model = meta.string('tokenizer.ggml.model');
  if (model === 'llama') return sentencePieceVocabFromGguf(file);
  if (model === 'gpt2') return bpeVocabFromGguf(file);
  throw new Error(
    `${file.path}: tokenizer.ggml.model is ${JSON.stringify(model)}; supported: 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)`,
  );
}

function tokenList(file: GgufFile): string[] {
  const tokens = new GgufMetadataReader(file).array('tokenizer.ggml.tokens');
  if (!tokens || !tokens.every((t): t is string => typeof t === 'string')) {
    throw new Error(`${file.path}: tokenizer.ggml.tokens missing or not strings`);
  }
  return tokens;
}

function sentencePieceVocabFromGguf(file: GgufFile): SentencePieceVocab {
  const meta = new GgufMetadataReader(file);
  const tokens = tokenList(file);
  const scores = numberArray(meta.array('tokenizer.ggml.scores'), tokens.length, 0, 'tokenizer.ggml.scores', file.path);
  const types = numberArray(meta.array('tokenizer.ggml.token_type'), tokens.length, 1, 'tokenizer.ggml.token_type', file.path);
  const unknownIndex = types.indexOf(TokenType.UNKNOWN);
  const vocab: SentencePieceVocab = {
    tokens,
    scores,
    types,
    bos: meta.number('tokenizer.ggml.bos_token_id', 1),
    eos: meta.number('tokenizer.ggml.eos_token_id', 2),
    unk: meta.number('tokenizer.ggml.unknown_token_id', unknownIndex >= 0 ? unknownIndex : 0),
    addSpacePrefix: meta.bool('tokenizer.ggml.add_space_prefix', true),
  };
  const chatTemplate = meta.string('tokenizer.chat_template');
  if (chatTemplate !== undefined) vocab.chatTemplate = chatTemplate;
  for (const [name, id] of [['bos', vocab.bos], ['eos', vocab.eos], ['unk', vocab.unk]] as const) {
    if (id < 0 || id >= tokens.length) throw new Error(`${file.path}: ${name} token id ${id} out of range`);
  }
  return vocab;
}

function bpeVocabFromGguf(file: GgufFile): BpeVocab {
  const meta = new GgufMetadataReader(file);
  const pre = meta.string('tokenizer.ggml.pre');
  const family = pre === undefined ? undefined : PRE_TOKENIZERS[pre];
  if (!family) {
    throw new Error(
      `${file.path}: tokenizer.ggml.pre is ${JSON.stringify(pre)}; supported byte-level BPE pre-tokenizers: ${SUPPORTED_BPE_PRE_TOKENIZERS.join(', ')}`,
    );
  }
  const tokens = tokenList(file);
  const types = numberArray(meta.array('tokenizer.ggml.token_type'), tokens.length, TokenType.NORMAL, 'tokenizer.ggml.token_type', file.path);
  const merges = meta.array('tokenizer.ggml.merges');
  if (!merges || !merges.every((m): m is string => typeof m === 'string')) {
    throw new Error(`${file.path}: tokenizer.ggml.merges missing or not strings (a gpt2 tokenizer needs them)`);
  }
  const id = (key: string): number | null => {
    if (!meta.has(key)) return null;
    const value = meta.number(key);
    if (!Number.isInteger(value) || value < 0 || value >= tokens.length) throw new Error(`${file.path}: ${key} ${value} out of range`);
    return value;
  };
  const eos = id('tokenizer.ggml.eos_token_id');
  if (eos === null) throw new Error(`${file.path}: a gpt2 tokenizer without tokenizer.ggml.eos_token_id`);
  const bos = id('tokenizer.ggml.bos_token_id');
  const addBos = meta.bool('tokenizer.ggml.add_bos_token', family.addBos);
  if (addBos && bos === null) throw new Error(`${file.path}: add_bos_token without tokenizer.ggml.bos_token_id`);
  const byText = tokens.flatMap((t, i) => (types[i] === TokenType.CONTROL && END_OF_GENERATION_TEXTS.has(t) ? [i] : []));
  const named = [eos, id('tokenizer.ggml.eot_token_id'), id('tokenizer.ggml.eom_token_id')].filter((t): t is number => t !== null);
  const vocab: BpeVocab = { model: 'gpt2', tokens, types, merges, pre: pre!, bos, eos, addBos, endTokens: [...new Set([...named, ...byText])] };
  const chatTemplate = meta.string('tokenizer.chat_template');
  if (chatTemplate !== undefined) vocab.chatTemplate = chatTemplate;
  return vocab;
}

function numberArray(value: GgufValue[] | undefined, length: number, fallback: number, key: string, where: string): number[] {
  if (value === undefined) return new Array<number>(length).fill(fallback);
  if (value.length !== length || !value.every((v): v is number => typeof v === 'number')) {
    throw new Error(`${where}: ${key} must be ${length} numbers`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary -> the package's Hugging Face tokenizer files

export interface PackageTokenizerFiles {
  tokenizerJson: object;
  tokenizerConfig: object;
  /** generation_config.json's eos_token_id: every token that ends a generation. */
  eosTokenIds: number[];
  bosTokenId: number;
}

export function packageTokenizerFiles(vocab: SentencePieceVocab | BpeVocab, opts: { modelMaxLength: number }): PackageTokenizerFiles {
  if (!('model' in vocab)) {
    const { tokenizerJson, tokenizerConfig } = buildTokenizerFiles(vocab, opts);
    return { tokenizerJson, tokenizerConfig, eosTokenIds: [vocab.eos], bosTokenId: vocab.bos };
  }
  return { ...bpeTokenizerFiles(vocab, opts), eosTokenIds: vocab.endTokens, bosTokenId: vocab.bos ?? vocab.eos };
}

/**
 * tokenizer.json for a byte-level BPE, in the shape of the family's own file: the vocabulary holds
 * the normal tokens; control tokens are special added tokens and user-defined ones plain added
 * tokens (both matched whole before BPE, as llama.cpp does); unused padding rows are left out.
 */
export function bpeTokenizerFiles(vocab: BpeVocab, opts: { modelMaxLength: number }): { tokenizerJson: object; tokenizerConfig: object } {
  const family = PRE_TOKENIZERS[vocab.pre];
  if (!family) throw new Error(`tokenizer.ggml.pre ${JSON.stringify(vocab.pre)} is not supported`);
  // No prototype: pieces such as "toString" are ordinary vocabulary entries.
  const modelVocab = Object.create(null) as Record<string, number>;
  const added: object[] = [];
  vocab.tokens.forEach((token, id) => {
    const type = vocab.types[id];
    if (type === TokenType.CONTROL || type === TokenType.USER_DEFINED) {
      const special = type === TokenType.CONTROL;
      added.push({ id, content: token, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
    } else if (type !== TokenType.UNUSED) {
      // A repeated piece would silently lose an id in a JSON object.
      if (Object.hasOwn(modelVocab, token)) throw new Error(`vocab: piece ${JSON.stringify(token)} appears at ids ${modelVocab[token]} and ${id}`);
      modelVocab[token] = id;
    }
  });
  const bosToken = vocab.bos === null ? null : vocab.tokens[vocab.bos];
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: family.normalizer,
    pre_tokenizer: family.preTokenizer,
    post_processor: vocab.addBos && bosToken !== null ? bosPostProcessor(bosToken, vocab.bos!) : null,
    decoder: family.decoder,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: family.ignoreMerges,
      vocab: modelVocab,
      merges: vocab.merges.map(splitMerge),
    },
  };
  const tokenizerConfig = {
    add_bos_token: vocab.addBos,
    add_eos_token: false,
    bos_token: bosToken,
    eos_token: vocab.tokens[vocab.eos],
    model_max_length: opts.modelMaxLength,
    ...(vocab.chatTemplate !== undefined ? { chat_template: vocab.chatTemplate } : {}),
    clean_up_tokenization_spaces: family.cleanSpaces,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return { tokenizerJson, tokenizerConfig };
}

/** "left right" split at the first space after the first character, as llama.cpp reads merges. */
function splitMerge(merge: string): [string, string] {
  const at = merge.indexOf(' ', 1);
  if (at < 0) throw new Error(`tokenizer.ggml.merges: ${JSON.stringify(merge)} is not "left right"`);
  return [merge.slice(0, at), merge.slice(at + 1)];
}

// ---------------------------------------------------------------------------------------------
// Vocabulary -> GGUF metadata

/** tokenizer.ggml.* for a vocabulary, as convert_hf_to_gguf.py writes it. */
export function vocabMetadata(vocab: SentencePieceVocab | BpeVocab): Map<string, GgufTypedValue> {
  const m = new Map<string, GgufTypedValue>();
  if ('model' in vocab) {
    m.set('tokenizer.ggml.model', gguf.str('gpt2'));
    m.set('tokenizer.ggml.pre', gguf.str(vocab.pre));
    m.set('tokenizer.ggml.tokens', gguf.array(GgufValueType.STRING, vocab.tokens));
    m.set('tokenizer.ggml.token_type', gguf.array(GgufValueType.INT32, vocab.types));
    m.set('tokenizer.ggml.merges', gguf.array(GgufValueType.STRING, vocab.merges));
    if (vocab.bos !== null) m.set('tokenizer.ggml.bos_token_id', gguf.u32(vocab.bos));
    m.set('tokenizer.ggml.eos_token_id', gguf.u32(vocab.eos));
    m.set('tokenizer.ggml.add_bos_token', gguf.bool(vocab.addBos));
  } else {
    m.set('tokenizer.ggml.model', gguf.str('llama'));
    m.set('tokenizer.ggml.tokens', gguf.array(GgufValueType.STRING, vocab.tokens));
    m.set('tokenizer.ggml.scores', gguf.array(GgufValueType.FLOAT32, vocab.scores));
    m.set('tokenizer.ggml.token_type', gguf.array(GgufValueType.INT32, vocab.types));
    m.set('tokenizer.ggml.bos_token_id', gguf.u32(vocab.bos));
    m.set('tokenizer.ggml.eos_token_id', gguf.u32(vocab.eos));
    m.set('tokenizer.ggml.unknown_token_id', gguf.u32(vocab.unk));
    m.set('tokenizer.ggml.add_bos_token', gguf.bool(true));
    m.set('tokenizer.ggml.add_eos_token', gguf.bool(false));
    m.set('tokenizer.ggml.add_space_prefix', gguf.bool(vocab.addSpacePrefix));
  }
  if (vocab.chatTemplate !== undefined) m.set('tokenizer.chat_template', gguf.str(vocab.chatTemplate));
  return m;
}
