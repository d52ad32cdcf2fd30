/**
 * Minimal reader of a legacy (version-0) llama2.c checkpoint into LlamaWeights, for tests that
 * must not depend on the production checkpoint readers. All matrices come back as f32.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LlamaWeights, Matrix } from '../../src/model/types.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const STORIES260K_BIN = path.resolve(repoRoot, '../shared/models/stories260K/stories260K.bin');

const HEADER_INTS = 7;

export function readLlama2cCheckpoint(file: string = STORIES260K_BIN): LlamaWeights {
  const buf = readFileSync(file);
  const header = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + HEADER_INTS * 4));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSigned, seqLen] = header;
  const vocab = Math.abs(vocabSigned);
  const headDim = dim / nHeads;
  const kvDim = nKvHeads * headDim;

  // Copy so the floats are 4-byte aligned regardless of where Node placed the file buffer.
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + HEADER_INTS * 4, buf.byteOffset + buf.byteLength));
  let offset = 0;
  const take = (n: number): Float32Array => {
    const out = floats.subarray(offset, offset + n);
    offset += n;
    return out;
  };
  const perLayer = (n: number): Float32Array[] => Array.from({ length: nLayers }, () => take(n));
  const matrices = (rows: number, cols: number): Matrix[] =>
    perLayer(rows * cols).map((data) => ({ kind: 'f32', rows, cols, data }));

  const tokEmbeddings = take(vocab * dim);
  const rmsAtt = perLayer(dim);
  const wq = matrices(dim, dim);
  const wk = matrices(kvDim, dim);
  const wv = matrices(kvDim, dim);
  const wo = matrices(dim, dim);
  const rmsFfn = perLayer(dim);
  const w1 = matrices(hiddenDim, dim);
  const w2 = matrices(dim, hiddenDim);
  const w3 = matrices(hiddenDim, dim);
  const finalNorm = take(dim);
  offset += seqLen * headDim; // legacy freq_cis_real + freq_cis_imag (2 x seq_len x head_dim/2)
  const output: Matrix | null = vocabSigned > 0 ? null : { kind: 'f32', rows: vocab, cols: dim, data: take(vocab * dim) };
  if (offset !== floats.length) throw new Error(`${file}: read ${offset} floats, file holds ${floats.length}`);

  return {
    config: {
      architecture: 'llama',
      hidden_size: dim,
      intermediate_size: hiddenDim,
      num_hidden_layers: nLayers,
      num_attention_heads: nHeads,
      num_key_value_heads: nKvHeads,
      head_dim: headDim,
      vocab_size: vocab,
      max_position_embeddings: seqLen,
      rope_theta: 10000,
      rope_style: 'interleaved',
      rope_scaling: null,
      attention_bias: false,
      qk_norm: false,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: vocabSigned > 0,
      bos_token_id: 1,
      eos_token_id: 2,
    },
    tokEmbeddings,
    layers: Array.from({ length: nLayers }, (_, l) => ({
      attnNorm: rmsAtt[l],
      wq: wq[l],
      wk: wk[l],
      wv: wv[l],
      wo: wo[l],
      ffnNorm: rmsFfn[l],
      gate: w1[l],
      down: w2[l],
      up: w3[l],
    })),
    finalNorm,
    output,
  };
}

/**
 * A second base that shares stories260K's tokenizer but not its weights: the checkpoint with every
 * weight scaled by (1 + scale · u), u uniform in [-1, 1) from a seeded generator. Its package has
 * the same vocabulary and ids and a different fingerprint: what a mixture carry-on reads beside it.
 */
export function writePerturbedCheckpoint(out: string, opts: { seed: number; scale: number }, file: string = STORIES260K_BIN): void {
  const buf = Buffer.from(readFileSync(file));
  const floats = new Float32Array(buf.buffer, buf.byteOffset + HEADER_INTS * 4, (buf.byteLength - HEADER_INTS * 4) / 4);
  let s = (opts.seed * 2654435761) >>> 0;
  for (let i = 0; i < floats.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    floats[i] *= 1 + opts.scale * (s / 2 ** 31 - 1);
  }
  writeFileSync(out, buf);
}

/**
 * stories260K's tokenizer with one piece respelt (`id`'s text becomes `piece`): the same number of
 * tokens, a different vocabulary, so the same text is other ids. llama2.c's tokenizer.bin is
 * max_token_length (i32), then per token: score (f32), length (i32), bytes.
 */
export function writeRespeltTokenizer(out: string, file: string, id: number, piece: string): void {
  const buf = readFileSync(file);
  const parts: Buffer[] = [buf.subarray(0, 4)];
  let at = 4;
  for (let t = 0; at < buf.length; t++) {
    const len = buf.readInt32LE(at + 4);
    if (t === id) {
      const bytes = Buffer.from(piece, 'utf8');
      const head = Buffer.alloc(8);
      head.writeFloatLE(buf.readFloatLE(at), 0);
      head.writeInt32LE(bytes.length, 4);
      parts.push(head, bytes);
    } else {
      parts.push(buf.subarray(at, at + 8 + len));
    }
    at += 8 + len;
  }
  writeFileSync(out, Buffer.concat(parts));
}
