/**
 * Embedding = mean of the base's final-layer hidden states (after the final norm) over every input
 * token, BOS included, scaled to unit length so cosine similarity is a dot product (as OpenAI's are).
 * The step loop sums the rows chunk by chunk as it reads the input; this turns the sum into the vector.
 */
export function normalizeMean(sum: Float64Array, rows: number): Float32Array {
  const out = new Float32Array(sum.length);
  let norm = 0;
  for (let j = 0; j < sum.length; j++) {
    const mean = sum[j] / rows;
    out[j] = mean;
    norm += mean * mean;
  }
  norm = Math.sqrt(norm) || 1;
  for (let j = 0; j < sum.length; j++) out[j] /= norm;
  return out;
}
