/**
 * Import of Andrej Karpathy's llama2.c checkpoints (`run.c` format) and `tokenizer.bin`.
 *
 * Two checkpoint layouts exist (llama2.c export.py):
 * - legacy "version 0": 7 x int32 header, then fp32 weights grouped by kind across layers, the
 *   obsolete freq_cis tables, and the classifier only when vocab_size is negative (untied);
 * - "ak42" versions: 256-byte header (magic, version, 7 x int32, u8 shared_classifier, ...);
 *   version 1 is fp32 with norms first, version 2 is llama2.c's own int8 format (unsupported).
 * llama2.c trains/exports Q and K without the HF permutation, so RoPE rotates adjacent pairs.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import type { ImportedCheckpoint, LlamaConfig, LlamaLayer, LlamaWeights, Matrix, SentencePieceVocab } from './types.js';

const AK42_MAGIC = 0x616b3432;
const AK42_HEADER_BYTES = 256;
const LEGACY_HEADER_BYTES = 7 * 4;

/** llama2.c hard-codes these in run.c / model.py. */
const LLAMA2C_ROPE_THETA = 10000;
const LLAMA2C_RMS_EPS = 1e-5;

interface Llama2cHeader {
  version: 0 | 1;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
  weightsOffset: number;
}

export async function llama2cToCheckpoint(
  binPath: string,
  tokenizerBinPath: string,
): Promise<ImportedCheckpoint & { vocab: SentencePieceVocab }> {
  const [bin, tokenizerBin] = await Promise.all([readFile(binPath), readFile(tokenizerBinPath)]);
  const header = validateHeader(parseHeader(bin, binPath), binPath);
  const vocab = parseLlama2cTokenizer(tokenizerBin, header.vocabSize, tokenizerBinPath);
  const config = configFromHeader(header, vocab);
  const weights = readWeights(bin, header, config, binPath);
  const sha256 = createHash('sha256').update(bin).digest('hex');
  return { weights, vocab, source: { format: 'llama2c', path: binPath, sha256 } };
}

function parseHeader(bin: Uint8Array, where: string): Llama2cHeader {
  if (bin.length < LEGACY_HEADER_BYTES) throw new Error(`${where}: too small for a llama2.c checkpoint`);
  const view = new DataView(bin.buffer, bin.byteOffset, bin.byteLength);
  const i32 = (at: number): number => view.getInt32(at, true);

  if (view.getUint32(0, true) === AK42_MAGIC) {
    const version = i32(4);
    if (version === 2) throw new Error(`${where}: llama2.c version-2 (int8 Q8_0) checkpoints are not supported; export version 0 or 1`);
    if (version !== 1) throw new Error(`${where}: unknown llama2.c checkpoint version ${version}`);
    if (bin.length < AK42_HEADER_BYTES) throw new Error(`${where}: truncated llama2.c v1 header`);
    const vocabSize = i32(28);
    return {
      version: 1,
      dim: i32(8),
      hiddenDim: i32(12),
      nLayers: i32(16),
      nHeads: i32(20),
      nKvHeads: i32(24),
      vocabSize: Math.abs(vocabSize),
      seqLen: i32(32),
      sharedClassifier: bin[36] !== 0,
      weightsOffset: AK42_HEADER_BYTES,
    };
  }

  // Legacy export signals an untied classifier by writing vocab_size negated.
  const vocabSize = i32(20);
  return {
    version: 0,
    dim: i32(0),
    hiddenDim: i32(4),
    nLayers: i32(8),
    nHeads: i32(12),
    nKvHeads: i32(16),
    vocabSize: Math.abs(vocabSize),
    seqLen: i32(24),
    sharedClassifier: vocabSize > 0,
    weightsOffset: LEGACY_HEADER_BYTES,
  };
}

/** Rejects garbage early (e.g. a non-llama2.c file), before the tokenizer or weights are read. */
function validateHeader(h: Llama2cHeader, where: string): Llama2cHeader {
  const fields = [h.dim, h.hiddenDim, h.nLayers, h.nHeads, h.nKvHeads, h.vocabSize, h.seqLen];
  if (fields.some((v) => v <= 0) || h.dim % h.nHeads !== 0 || h.nHeads % h.nKvHeads !== 0) {
    throw new Error(`${where}: llama2.c header is not a valid model shape: ${JSON.stringify(fields)}`);
  }
  return h;
}

function configFromHeader(h: Llama2cHeader, vocab: SentencePieceVocab): LlamaConfig {
  return {
    architecture: 'llama',
    hidden_size: h.dim,
    intermediate_size: h.hiddenDim,
    num_hidden_layers: h.nLayers,
    num_attention_heads: h.nHeads,
    num_key_value_heads: h.nKvHeads,
    head_dim: h.dim / h.nHeads,
    vocab_size: h.vocabSize,
    max_position_embeddings: h.seqLen,
    rope_theta: LLAMA2C_ROPE_THETA,
    rope_style: 'interleaved',
    rope_scaling: null,
    attention_bias: false,
    qk_norm: false,
    rms_norm_eps: LLAMA2C_RMS_EPS,
    tie_word_embeddings: h.sharedClassifier,
    bos_token_id: vocab.bos,
    eos_token_id: vocab.eos,
  };
}

/** Sequential fp32 reader over the checkpoint body; every read is bounds-checked. */
class F32Cursor {
  private offset = 0;
  private readonly floats: Float32Array;

  constructor(
    bin: Uint8Array,
    start: number,
    private readonly where: string,
  ) {
    if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('llama2.c import needs a little-endian host');
    // One aligned copy of the body (the file buffer need not be 4-byte aligned). Uint8Array's
    // slice, not Buffer's: Buffer#slice returns a view of the whole pooled/file buffer.
    const end = start + Math.floor((bin.length - start) / 4) * 4;
    const body = Uint8Array.prototype.slice.call(bin, start, end);
    this.floats = new Float32Array(body.buffer, 0, body.length / 4);
  }

  take(n: number, what: string): Float32Array {
    this.skip(n, what);
    return this.floats.slice(this.offset - n, this.offset);
  }

  skip(n: number, what: string): void {
    if (this.offset + n > this.floats.length) throw new Error(`${this.where}: file ends inside ${what}`);
    this.offset += n;
  }

  get remaining(): number {
    return this.floats.length - this.offset;
  }
}

interface Shapes {
  layers: number;
  dim: number;
  kvDim: number;
  hidden: number;
  vocab: number;
}

type LayerStacks = { [K in keyof LlamaLayer]: LlamaLayer[K][] };

function perLayer(c: F32Cursor, s: Shapes, what: string, size: number): Float32Array[] {
  return Array.from({ length: s.layers }, (_, i) => c.take(size, `${what}[${i}]`));
}

function matrixStack(c: F32Cursor, s: Shapes, what: string, rows: number, cols: number): Matrix[] {
  return perLayer(c, s, what, rows * cols).map((data) => ({ kind: 'f32', rows, cols, data }));
}

function attentionStacks(c: F32Cursor, s: Shapes): Pick<LayerStacks, 'wq' | 'wk' | 'wv' | 'wo'> {
  return {
    wq: matrixStack(c, s, 'wq', s.dim, s.dim),
    wk: matrixStack(c, s, 'wk', s.kvDim, s.dim),
    wv: matrixStack(c, s, 'wv', s.kvDim, s.dim),
    wo: matrixStack(c, s, 'wo', s.dim, s.dim),
  };
}

function ffnStacks(c: F32Cursor, s: Shapes): Pick<LayerStacks, 'gate' | 'down' | 'up'> {
  return {
    gate: matrixStack(c, s, 'w1', s.hidden, s.dim),
    down: matrixStack(c, s, 'w2', s.dim, s.hidden),
    up: matrixStack(c, s, 'w3', s.hidden, s.dim),
  };
}

interface Body {
  tokEmbeddings: Float32Array;
  finalNorm: Float32Array;
  stacks: LayerStacks;
}

/** Legacy order: embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis. */
function readLegacyBody(c: F32Cursor, s: Shapes, seqLen: number, headDim: number): Body {
  const tokEmbeddings = c.take(s.vocab * s.dim, 'token_embedding');
  const attnNorm = perLayer(c, s, 'rms_att', s.dim);
  const attention = attentionStacks(c, s);
  const ffnNorm = perLayer(c, s, 'rms_ffn', s.dim);
  const ffn = ffnStacks(c, s);
  const finalNorm = c.take(s.dim, 'rms_final');
  // Precomputed RoPE tables from the first exporter: recomputed at runtime, so skipped.
  c.skip(2 * seqLen * (headDim / 2), 'freq_cis_real/imag');
  return { tokEmbeddings, finalNorm, stacks: { attnNorm, ffnNorm, ...attention, ...ffn } };
}

/** Version-1 order: rms_att, rms_ffn, rms_final, embedding, wq, wk, wv, wo, w1, w2, w3. */
function readV1Body(c: F32Cursor, s: Shapes): Body {
  const attnNorm = perLayer(c, s, 'rms_att', s.dim);
  const ffnNorm = perLayer(c, s, 'rms_ffn', s.dim);
  const finalNorm = c.take(s.dim, 'rms_final');
  const tokEmbeddings = c.take(s.vocab * s.dim, 'token_embedding');
  const attention = attentionStacks(c, s);
  const ffn = ffnStacks(c, s);
  return { tokEmbeddings, finalNorm, stacks: { attnNorm, ffnNorm, ...attention, ...ffn } };
}

/** Floats the header promises; checked up front so a wrong header fails before any allocation. */
function expectedFloats(h: Llama2cHeader, s: Shapes, headDim: number): number {
  const perLayer = 2 * s.dim + 2 * s.dim * s.dim + 2 * s.kvDim * s.dim + 3 * s.hidden * s.dim;
  const freqCis = h.version === 0 ? h.seqLen * headDim : 0;
  const classifier = h.sharedClassifier ? 0 : s.vocab * s.dim;
  return s.vocab * s.dim + s.layers * perLayer + s.dim + freqCis + classifier;
}

function readWeights(bin: Uint8Array, h: Llama2cHeader, config: LlamaConfig, where: string): LlamaWeights {
  const shapes: Shapes = {
    layers: config.num_hidden_layers,
    dim: config.hidden_size,
    kvDim: config.num_key_value_heads * config.head_dim,
    hidden: config.intermediate_size,
    vocab: config.vocab_size,
  };
  const expectedBytes = h.weightsOffset + 4 * expectedFloats(h, shapes, config.head_dim);
  if (bin.length !== expectedBytes) {
    throw new Error(`${where}: ${bin.length} bytes, but the llama2.c v${h.version} header describes ${expectedBytes} (wrong shape or format?)`);
  }
  const c = new F32Cursor(bin, h.weightsOffset, where);
  const body = h.version === 1 ? readV1Body(c, shapes) : readLegacyBody(c, shapes, h.seqLen, config.head_dim);
  const output: Matrix | null = h.sharedClassifier
    ? null
    : { kind: 'f32', rows: shapes.vocab, cols: shapes.dim, data: c.take(shapes.vocab * shapes.dim, 'wcls') };
  if (c.remaining !== 0) throw new Error(`${where}: ${c.remaining} unexpected trailing floats (wrong shape or format?)`);

  const { stacks } = body;
  const layers: LlamaLayer[] = Array.from({ length: shapes.layers }, (_, i) => ({
    attnNorm: stacks.attnNorm[i],
    wq: stacks.wq[i],
    wk: stacks.wk[i],
    wv: stacks.wv[i],
    wo: stacks.wo[i],
    ffnNorm: stacks.ffnNorm[i],
    gate: stacks.gate[i],
    down: stacks.down[i],
    up: stacks.up[i],
  }));
  return { config, tokEmbeddings: body.tokEmbeddings, layers, finalNorm: body.finalNorm, output };
}

// ---------------------------------------------------------------------------------------------
// tokenizer.bin

const SENTENCEPIECE_SPACE = '\u2581';
const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;

/** SentencePiece piece types (sentencepiece_model.proto). */
const PieceType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, BYTE: 6 } as const;

/**
 * llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length,
 * bytes. Its exporter (tokenizer.py) turned U+2581 into ' ' and wrote BOS/EOS as "\n<s>\n" and
 * "\n</s>\n"; undo both so the pieces equal the SentencePiece model (and its GGUF conversion).
 * Piece types are not stored, so they are inferred from the fixed Llama layout: 0 unk, 1 bos,
 * 2 eos, `<0xNN>` byte-fallback pieces, everything else normal.
 */
export function parseLlama2cTokenizer(bytes: Uint8Array, vocabSize: number, where = 'tokenizer.bin'): SentencePieceVocab {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  let at = 4; // skip max_token_length: only run.c's buffer sizing needs it
  for (let id = 0; id < vocabSize; id++) {
    if (at + 8 > bytes.length) throw new Error(`${where}: truncated at token ${id} of ${vocabSize}`);
    const score = view.getFloat32(at, true);
    const length = view.getInt32(at + 4, true);
    at += 8;
    if (length < 0 || at + length > bytes.length) throw new Error(`${where}: bad length ${length} for token ${id}`);
    const raw = decoder.decode(bytes.subarray(at, at + length));
    at += length;
    const piece = id === 1 || id === 2 ? raw.trim() : raw.replaceAll(' ', SENTENCEPIECE_SPACE);
    tokens.push(piece);
    scores.push(score);
    types.push(pieceType(id, piece));
  }
  if (at !== bytes.length) throw new Error(`${where}: ${bytes.length - at} trailing bytes after ${vocabSize} tokens`);
  return { tokens, scores, types, bos: 1, eos: 2, unk: 0, addSpacePrefix: true };
}

function pieceType(id: number, piece: string): number {
  if (id === 0) return PieceType.UNKNOWN;
  if (id === 1 || id === 2) return PieceType.CONTROL;
  return BYTE_PIECE.test(piece) ? PieceType.BYTE : PieceType.NORMAL;
}
