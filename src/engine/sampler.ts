import type { SamplingParams } from './protocol.js';

/**
 * Token selection for one sequence. Deterministic for a given seed: the RNG is per sequence, so the
 * sequences around it (and batching) never change its draws.
 */
export class Sampler {
  private readonly rng: () => number;
  /** How often each token was generated so far, for presence/frequency penalties. */
  private readonly counts = new Map<number, number>();

  constructor(private readonly params: SamplingParams) {
    const seed = params.seed ?? Math.floor(Math.random() * 2 ** 32);
    this.rng = mulberry32(seed >>> 0);
  }

  /** Picks the next token; `logits` is modified in place (penalties), never kept. */
  sample(logits: Float32Array): { token: number; logprob?: number; top?: Array<[number, number]> } {
    const p = this.params;
    this.applyPenalties(logits);
    const token = p.temperature === 0 ? argmax(logits) : this.draw(logits);
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (p.topLogprobs < 0) return { token };
    // Logprobs describe the model's distribution (after penalties, before temperature and truncation),
    // as vLLM reports them by default.
    const logZ = logSumExp(logits);
    const top = p.topLogprobs > 0 ? topK(logits, p.topLogprobs).map(([id, l]) => [id, l - logZ] as [number, number]) : [];
    return { token, logprob: logits[token] - logZ, top };
  }

  private applyPenalties(logits: Float32Array): void {
    const { presencePenalty, frequencyPenalty } = this.params;
    if (presencePenalty === 0 && frequencyPenalty === 0) return;
    for (const [id, c] of this.counts) logits[id] -= c * frequencyPenalty + presencePenalty;
  }

  private draw(logits: Float32Array): number {
    const { temperature, topK: k, topP } = this.params;
    const limit = k > 0 ? Math.min(k, logits.length) : logits.length;
    // Candidates sorted by logit; top-k truncates, then top-p keeps the smallest prefix reaching topP mass.
    const cands = limit < logits.length ? topK(logits, limit) : sortedAll(logits);
    const max = cands[0][1];
    const weights = new Float64Array(cands.length);
    let total = 0;
    for (let i = 0; i < cands.length; i++) {
      weights[i] = Math.exp((cands[i][1] - max) / temperature);
      total += weights[i];
    }
    let keep = cands.length;
    if (topP < 1) {
      let mass = 0;
      for (let i = 0; i < cands.length; i++) {
        mass += weights[i] / total;
        if (mass >= topP) {
          keep = i + 1;
          break;
        }
      }
    }
    let kept = 0;
    for (let i = 0; i < keep; i++) kept += weights[i];
    let r = this.rng() * kept;
    for (let i = 0; i < keep; i++) {
      r -= weights[i];
      if (r < 0) return cands[i][0];
    }
    return cands[keep - 1][0];
  }
}

export function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

export function logSumExp(xs: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < xs.length; i++) if (xs[i] > max) max = xs[i];
  let sum = 0;
  for (let i = 0; i < xs.length; i++) sum += Math.exp(xs[i] - max);
  return max + Math.log(sum);
}

/** The k largest entries as [index, value], best first (ties: lower index first). */
export function topK(xs: Float32Array, k: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i];
    if (out.length === k && v <= out[k - 1][1]) continue;
    let j = out.length < k ? out.length : k - 1;
    if (out.length < k) out.push([i, v]);
    while (j > 0 && out[j - 1][1] < v) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = [i, v];
  }
  return out;
}

function sortedAll(xs: Float32Array): Array<[number, number]> {
  const idx = Array.from(xs, (v, i) => [i, v] as [number, number]);
  return idx.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
}

/** Small, fast, well-distributed 32-bit PRNG; plenty for sampling and reproducible across platforms. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
