import type { VocabularyBytes } from '../engine/structured/token-mask.js';
import type { ModelTokenizer } from '../model/tokenizer.js';

/**
 * The vocabulary as structured outputs read it: each token's UTF-8 bytes (the tokenizer's own
 * pieces, so SentencePiece's `▁` and `<0xNN>` and byte-level BPE come out as the bytes they
 * decode to). Special tokens (BOS, EOS, chat markers) decode to nothing: they get no bytes, so a
 * response format never emits them as text; the stop tokens end an output on their own terms.
 */
export function vocabularyOf(tokenizer: ModelTokenizer): VocabularyBytes {
  const n = tokenizer.vocabSize;
  const pieces: number[][] = [];
  let total = 0;
  for (let id = 0; id < n; id++) {
    const bytes = tokenizer.piece(id).bytes;
    const special = bytes.length > 0 && tokenizer.decode([id]) === '';
    pieces.push(special ? [] : bytes);
    total += special ? 0 : bytes.length;
  }
  const offsets = new Uint32Array(n + 1);
  const out = new Uint8Array(total);
  for (let id = 0; id < n; id++) {
    out.set(pieces[id], offsets[id]);
    offsets[id + 1] = offsets[id] + pieces[id].length;
  }
  return { bytes: out, offsets };
}
