import type { VocabularyBytes } from '../engine/structured/token-mask.js';
import type { ModelTokenizer } from '../model/tokenizer.js';

/**
 * The vocabulary as structured outputs read it: each token's UTF-8 bytes (the tokenizer's own
 * pieces, so SentencePiece's `▁` and `<0xNN>` and byte-level BPE come out as the bytes they
 * decode to). Special tokens (BOS, EOS, chat markers: `ModelTokenizer.isSpecial`, the ones decode
 * drops) get no bytes, so a response format never emits them as text; the stop tokens end an output
 * on their own terms. Asking the tokenizer's special set, not whether a token decodes alone to '',
 * keeps SentencePiece's lone `▁` (a space that decode drops at the start of a text) and costs no
 * decode per id.
 */
export function vocabularyOf(tokenizer: ModelTokenizer): VocabularyBytes {
  const n = tokenizer.vocabSize;
  const offsets = new Uint32Array(n + 1);
  for (let id = 0; id < n; id++) offsets[id + 1] = offsets[id] + bytesOf(tokenizer, id).length;
  const out = new Uint8Array(offsets[n]);
  for (let id = 0; id < n; id++) out.set(bytesOf(tokenizer, id), offsets[id]);
  return { bytes: out, offsets };
}

function bytesOf(tokenizer: ModelTokenizer, id: number): readonly number[] {
  return tokenizer.isSpecial(id) ? [] : tokenizer.piece(id).bytes;
}
