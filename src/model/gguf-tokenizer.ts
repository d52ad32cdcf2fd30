/**
 * A GGUF file's tokenizer metadata (tokenizer.ggml.*) to our vocabulary form, and back.
 */
import { GgufMetadataReader, GgufValueType, gguf, type GgufFile, type GgufTypedValue, type GgufValue } from '../formats/gguf-file.js';
import type { SentencePieceVocab } from './types.js';

export function vocabFromGguf(file: GgufFile): SentencePieceVocab {
  const meta = new GgufMetadataReader(file);
  const model = meta.string('tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new Error(`${file.path}: tokenizer.ggml.model is ${JSON.stringify(model)}; only 'llama' (SentencePiece) is supported`);
  }
  const tokens = meta.array('tokenizer.ggml.tokens');
  if (!tokens || !tokens.every((t): t is string => typeof t === 'string')) {
    throw new Error(`${file.path}: tokenizer.ggml.tokens missing or not strings`);
  }
  const scores = numberArray(meta.array('tokenizer.ggml.scores'), tokens.length, 0, 'tokenizer.ggml.scores', file.path);
  const types = numberArray(meta.array('tokenizer.ggml.token_type'), tokens.length, 1, 'tokenizer.ggml.token_type', file.path);
  const unknownIndex = types.indexOf(2);
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

function numberArray(value: GgufValue[] | undefined, length: number, fallback: number, key: string, where: string): number[] {
  if (value === undefined) return new Array<number>(length).fill(fallback);
  if (value.length !== length || !value.every((v): v is number => typeof v === 'number')) {
    throw new Error(`${where}: ${key} must be ${length} numbers`);
  }
  return value;
}

/** tokenizer.ggml.* for a vocabulary, as convert_hf_to_gguf.py writes a SentencePiece one. */
export function vocabMetadata(vocab: SentencePieceVocab): Map<string, GgufTypedValue> {
  const m = new Map<string, GgufTypedValue>();
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
  if (vocab.chatTemplate !== undefined) m.set('tokenizer.chat_template', gguf.str(vocab.chatTemplate));
  return m;
}
