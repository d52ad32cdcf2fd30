import type { ModelRunner } from '../engine/model-runner.js';

export interface HeldOutLoss {
  /** Mean next-token negative log-likelihood, nats per token. */
  loss: number;
  perplexity: number;
  tokens: number;
  sequences: number;
}

/**
 * Mean next-token cross-entropy of the base over token sequences, through the engine's own graphs
 * (body then head, whole sequence per pass): how an import option (e.g. 4-bit weights) is priced.
 */
export async function heldOutLoss(runner: ModelRunner, sequences: number[][]): Promise<HeldOutLoss> {
  const V = runner.config.vocab_size;
  const ctx = runner.config.max_position_embeddings;
  let total = 0;
  let count = 0;
  let used = 0;
  for (const full of sequences) {
    const ids = full.slice(0, ctx);
    if (ids.length < 2) continue;
    used++;
    const { hidden } = await runner.forwardBody(ids, runner.newCache());
    const logits = await runner.forwardHead(hidden, ids.length);
    for (let t = 0; t + 1 < ids.length; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      let max = -Infinity;
      for (let i = 0; i < V; i++) if (row[i] > max) max = row[i];
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp(row[i] - max);
      total += Math.log(sum) + max - row[ids[t + 1]];
      count++;
    }
  }
  const loss = count > 0 ? total / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count, sequences: used };
}
