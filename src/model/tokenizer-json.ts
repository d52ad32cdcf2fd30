/**
 * Builds a Hugging Face `tokenizer.json` + `tokenizer_config.json` for a SentencePiece BPE vocab,
 * matching what transformers' LlamaConverter emits for the legacy Llama tokenizer:
 * BPE with byte fallback, merges derived from the piece scores, normalizer that prepends "▁" and
 * turns spaces into "▁", no pre-tokenizer, and a decoder that reverses it.
 *
 * Why merges reproduce SentencePiece: SentencePiece BPE repeatedly merges the adjacent pair whose
 * concatenation is the highest-scoring piece (leftmost on ties). HF BPE merges the pair with the
 * lowest merge rank. Listing every (left, right) split of every piece, ranked by the piece's score,
 * makes the two orders coincide.
 */
import type { SentencePieceVocab } from './types.js';

const SPACE_PIECE = '\u2581';

/** SentencePiece piece types (sentencepiece_model.proto). */
const PieceType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface TokenizerFiles {
  tokenizerJson: TokenizerJson;
  tokenizerConfig: TokenizerConfig;
}

export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

export interface TokenizerJson {
  version: '1.0';
  truncation: null;
  padding: null;
  added_tokens: AddedTokenJson[];
  normalizer: { type: 'Sequence'; normalizers: object[] };
  pre_tokenizer: null;
  post_processor: object;
  decoder: { type: 'Sequence'; decoders: object[] };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: string;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: true;
    byte_fallback: true;
    ignore_merges: false;
    vocab: Record<string, number>;
    merges: [string, string][];
  };
}

export interface TokenizerConfig {
  add_bos_token: boolean;
  add_eos_token: boolean;
  bos_token: string;
  eos_token: string;
  unk_token: string;
  model_max_length: number;
  chat_template?: string;
  clean_up_tokenization_spaces: boolean;
  legacy: boolean;
  tokenizer_class: string;
}

export function buildTokenizerFiles(vocab: SentencePieceVocab, opts: { modelMaxLength: number }): TokenizerFiles {
  validateVocab(vocab);
  const bos = vocab.tokens[vocab.bos];
  const eos = vocab.tokens[vocab.eos];
  const unk = vocab.tokens[vocab.unk];

  const tokenizerJson: TokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(vocab),
    normalizer: normalizer(vocab.addSpacePrefix),
    pre_tokenizer: null,
    post_processor: bosPostProcessor(bos, vocab.bos),
    decoder: decoder(vocab.addSpacePrefix),
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab.tokens.map((piece, id) => [piece, id])),
      merges: sentencePieceMerges(vocab),
    },
  };

  const tokenizerConfig: TokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: bos,
    eos_token: eos,
    unk_token: unk,
    model_max_length: opts.modelMaxLength,
    ...(vocab.chatTemplate !== undefined ? { chat_template: vocab.chatTemplate } : {}),
    clean_up_tokenization_spaces: false,
    legacy: true,
    tokenizer_class: 'LlamaTokenizer',
  };
  return { tokenizerJson, tokenizerConfig };
}

function validateVocab(vocab: SentencePieceVocab): void {
  const n = vocab.tokens.length;
  if (vocab.scores.length !== n || vocab.types.length !== n) {
    throw new Error(`vocab: ${n} tokens but ${vocab.scores.length} scores and ${vocab.types.length} types`);
  }
  // tokenizer.json's vocab is a JSON object: a repeated piece would silently lose an id.
  const seen = new Map<string, number>();
  vocab.tokens.forEach((piece, id) => {
    const previous = seen.get(piece);
    if (previous !== undefined) throw new Error(`vocab: piece ${JSON.stringify(piece)} appears at ids ${previous} and ${id}`);
    seen.set(piece, id);
  });
  for (const [name, id] of [['bos', vocab.bos], ['eos', vocab.eos], ['unk', vocab.unk]] as const) {
    if (!Number.isInteger(id) || id < 0 || id >= n) throw new Error(`vocab: ${name} id ${id} out of range`);
  }
}

/**
 * Control and unknown pieces become special added tokens (never produced by BPE, skipped when
 * decoding with skip_special_tokens); user-defined pieces are matched whole, as SentencePiece does.
 */
function addedTokens(vocab: SentencePieceVocab): AddedTokenJson[] {
  const out: AddedTokenJson[] = [];
  vocab.types.forEach((type, id) => {
    const special = type === PieceType.CONTROL || type === PieceType.UNKNOWN;
    if (!special && type !== PieceType.USER_DEFINED) return;
    out.push({ id, content: vocab.tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  });
  return out;
}

function normalizer(addSpacePrefix: boolean): TokenizerJson['normalizer'] {
  const normalizers: object[] = [];
  if (addSpacePrefix) normalizers.push({ type: 'Prepend', prepend: SPACE_PIECE });
  normalizers.push({ type: 'Replace', pattern: { String: ' ' }, content: SPACE_PIECE });
  return { type: 'Sequence', normalizers };
}

function decoder(addSpacePrefix: boolean): TokenizerJson['decoder'] {
  const decoders: object[] = [
    { type: 'Replace', pattern: { String: SPACE_PIECE }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  // The prefix space was added by the normalizer, so exactly one leading space is removed.
  if (addSpacePrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return { type: 'Sequence', decoders };
}

/** BOS before each sequence, as LlamaTokenizerFast.update_post_processor sets up (add_bos_token). */
export function bosPostProcessor(bos: string, bosId: number): object {
  const special = (type_id: number) => ({ SpecialToken: { id: bos, type_id } });
  const sequence = (id: 'A' | 'B', type_id: number) => ({ Sequence: { id, type_id } });
  return {
    type: 'TemplateProcessing',
    single: [special(0), sequence('A', 0)],
    pair: [special(0), sequence('A', 0), special(1), sequence('B', 1)],
    special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
  };
}

/**
 * Every split of a normal piece into two in-vocab pieces is a merge, ranked by the merged piece's
 * score (descending); ties keep piece id order, and splits of one piece are ordered by (left id,
 * right id), as transformers' SentencePieceExtractor does. Pieces are split on code points, since
 * HF BPE starts from code points too. Control, byte, unknown and user-defined pieces are never
 * merge results in SentencePiece, so they produce no merges.
 */
export function sentencePieceMerges(vocab: SentencePieceVocab): [string, string][] {
  const ids = new Map(vocab.tokens.map((piece, id) => [piece, id]));
  const candidates: { left: number; right: number; piece: number }[] = [];
  vocab.tokens.forEach((piece, id) => {
    if (vocab.types[id] !== PieceType.NORMAL) return;
    const chars = Array.from(piece);
    const local: { left: number; right: number; piece: number }[] = [];
    for (let cut = 1; cut < chars.length; cut++) {
      const left = ids.get(chars.slice(0, cut).join(''));
      const right = ids.get(chars.slice(cut).join(''));
      if (left !== undefined && right !== undefined) local.push({ left, right, piece: id });
    }
    local.sort((a, b) => a.left - b.left || a.right - b.right);
    candidates.push(...local);
  });
  // Array.prototype.sort is stable, so equal scores keep piece-id order.
  candidates.sort((a, b) => vocab.scores[b.piece] - vocab.scores[a.piece]);
  return candidates.map(({ left, right }) => [vocab.tokens[left], vocab.tokens[right]]);
}
