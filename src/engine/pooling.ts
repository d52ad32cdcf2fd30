/**
 * Embedding = mean of the base's final-layer hidden states (after the final norm) over every input
 * token, BOS included, scaled to unit length so cosine similarity is a dot product (as OpenAI's are).
 */
export function meanPoolNormalized(hidden: Float32Array, rows: number, dim: number): Float32Array {
  const out = new Float32Array(dim);
  for (let r = 0; r < rows; r++) for (let j = 0; j < dim; j++) out[j] += hidden[r * dim + j];
  let norm = 0;
  for (let j = 0; j < dim; j++) {
    out[j] /= rows;
    norm += out[j] * out[j];
  }
  norm = Math.sqrt(norm) || 1;
  for (let j = 0; j < dim; j++) out[j] /= norm;
  return out;
}
