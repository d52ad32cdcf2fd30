/**
 * Minimal reader of a legacy (version-0) llama2.c checkpoint into LlamaWeights, for tests that
 * must not depend on the production checkpoint readers. All matrices come back as f32.
 */
import { readFileSync } from 'node:fs';
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
