/**
 * GGUF model files <-> ImportedCheckpoint: reads a model GGUF (src/formats/gguf-file.ts) through
 * the architecture mapping (./gguf-architectures.ts) and the tokenizer mapping (./gguf-tokenizer.ts),
 * and writes a checkpoint back as a GGUF that llama.cpp loads (the `carryon` CLI and the benches).
 */
import { createHash } from 'node:crypto';

import { readGguf, writeGguf } from '../formats/gguf-file.js';
import { architectureMetadata, architectureOf, architectureTensors, configFromGguf, weightsFromGguf } from './gguf-architectures.js';
import { vocabFromGguf, vocabMetadata } from './gguf-tokenizer.js';
import type { ImportedCheckpoint } from './types.js';

export async function ggufToCheckpoint(path: string): Promise<ImportedCheckpoint> {
  const file = await readGguf(path);
  architectureOf(file); // refuses an unknown architecture before anything else is read
  const vocab = vocabFromGguf(file);
  const hasOutput = file.tensor('output.weight') !== undefined;
  const ids = { vocabSize: vocab.tokens.length, bos: 'model' in vocab ? (vocab.bos ?? vocab.eos) : vocab.bos, eos: vocab.eos };
  const config = configFromGguf(file, ids, !hasOutput);
  const weights = weightsFromGguf(file, config);
  const sha256 = createHash('sha256').update(file.bytes).digest('hex');
  return { weights, vocab, source: { format: 'gguf', path, sha256 } };
}

export interface WriteLlamaGgufOptions {
  /**
   * 'f32': every tensor F32 (Q4_0 matrices are dequantized). 'q4_0': the linear layers and an
   * untied output become Q4_0 where the row length allows it (cols % 32 == 0; others stay F32,
   * as llama.cpp's quantizer also falls back). token_embd and the norms always stay F32,
   * mirroring our in-memory form, so a q4_0 export re-imports to the same checkpoint.
   */
  quant: 'f32' | 'q4_0';
  /** general.name; defaults to none. */
  name?: string;
}

/** Writes a checkpoint as a GGUF that llama.cpp can load. */
export async function writeLlamaGguf(path: string, ckpt: ImportedCheckpoint, opts: WriteLlamaGgufOptions): Promise<void> {
  const { weights, vocab } = ckpt;
  const { config } = weights;
  if (config.tie_word_embeddings !== (weights.output === null)) {
    throw new Error('writeLlamaGguf: tie_word_embeddings disagrees with the presence of an output matrix');
  }
  if (vocab.tokens.length !== config.vocab_size) {
    throw new Error(`writeLlamaGguf: ${vocab.tokens.length} vocab pieces for vocab_size ${config.vocab_size}`);
  }
  const metadata = new Map([...architectureMetadata(config, opts), ...vocabMetadata(vocab)]);
  await writeGguf(path, { metadata, tensors: architectureTensors(weights, opts.quant) });
}
