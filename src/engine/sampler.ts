import type { SamplingParams } from './worker-messages.js';

/** Limits which tokens may come next (a response format); see structured/token-mask.ts. */
export interface SamplingConstraint {
  allows(token: number): boolean;
  /** Sets every refused token's logit to −∞; returns how many tokens remain allowed. */
  restrict(logits: Float32Array): number;
  /** The allowed ids (ascending) when they are few, else null; restrict need not have run. */
  allowedIds(): Uint32Array | null;
}

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

  /**
   * Picks the next token; `logits` is modified in place (penalties, the constraint's −∞), never kept.
   * With a constraint and neither truncation nor logprobs, the model's own pick is tried first and
   * the mask built only when the constraint refuses it: drawing again from the masked distribution
   * then gives each allowed token exactly p(t) / p(allowed), as masking first would (greedy: the
   * best allowed token either way), at a few byte steps instead of a vocabulary pass per token.
   */
  sample(logits: Float32Array, constraint: SamplingConstraint | null = null): { token: number; logprob?: number; top?: Array<[number, number]> } {
    const p = this.params;
    this.applyPenalties(logits);
    const pick = () => (p.temperature === 0 ? argmax(logits) : this.draw(logits));
    let token: number;
    if (!constraint) token = pick();
    else {
      const tryFirst = p.topLogprobs < 0 && p.topK <= 0 && p.topP >= 1;
      token = tryFirst ? pick() : -1;
      if (token < 0 || !constraint.allows(token)) {
        // Few allowed (punctuation, keys, enums): draw over those alone instead of the whole
        // vocabulary, without writing −∞ over the rest unless logprobs read them.
        const ids = p.topK <= 0 && p.topP >= 1 ? constraint.allowedIds() : null;
        if (!ids || ids.length === 0 || p.topLogprobs >= 0) {
          if (constraint.restrict(logits) === 0) throw new Error('no token of the vocabulary can continue the response format here');
        }
        if (ids) token = this.pickAmong(logits, ids);
        else {
          // Many allowed, after a refused first draw: its weights are still in WEIGHTS, and reused
          // when the best token is still allowed (the second draw's weights are then the same numbers).
          const again = token >= 0 && p.temperature > 0 ? this.redrawMasked(logits) : -1;
          token = again >= 0 ? again : pick();
        }
        // Rounding can leave a draw on a zero-weight (refused) entry: the best allowed token instead.
        if (logits[token] === -Infinity) {
          constraint.restrict(logits);
          token = argmax(logits);
        }
      }
    }
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (p.topLogprobs < 0) return { token };
    // Logprobs describe the model's distribution (after penalties, before temperature and truncation),
    // as vLLM reports them by default.
    const logZ = logSumExp(logits);
    // Refused tokens (−∞ under a format) are no alternatives: fewer than asked when fewer are allowed.
    const top = p.topLogprobs > 0 ? topK(logits, p.topLogprobs).flatMap(([id, l]) => (l > -Infinity ? [[id, l - logZ] as [number, number]] : [])) : [];
    return { token, logprob: logits[token] - logZ, top };
  }

  /**
   * What argmax or drawFull would pick from logits whose only finite entries are `ids` (ascending):
   * the same token for the same draw, in a pass over those entries only.
   */
  private pickAmong(logits: Float32Array, ids: Uint32Array): number {
    let best = ids[0];
    for (const id of ids) if (logits[id] > logits[best]) best = id;
    const temperature = this.params.temperature;
    if (temperature === 0) return best;
    const max = logits[best];
    let total = 0;
    for (const id of ids) total += Math.exp((logits[id] - max) / temperature);
    let r = this.rng() * total;
    for (const id of ids) {
      r -= Math.exp((logits[id] - max) / temperature);
      if (r < 0) return id;
    }
    return ids[ids.length - 1];
  }

  private applyPenalties(logits: Float32Array): void {
    const { presencePenalty, frequencyPenalty } = this.params;
    if (presencePenalty === 0 && frequencyPenalty === 0) return;
    for (const [id, c] of this.counts) logits[id] -= c * frequencyPenalty + presencePenalty;
  }

  /**
   * Temperature sampling with optional top-k then top-p. Linear in the vocabulary: the full
   * distribution is drawn from in one pass without sorting; truncation sorts only the candidates it
   * keeps (a sort of a 49,152-entry vocabulary per token per sequence used to dominate batched steps).
   */
  private draw(logits: Float32Array): number {
    const { temperature, topK: k, topP } = this.params;
    if (k <= 0 && topP >= 1) return this.drawFull(logits, temperature);
    const cands = k > 0 ? topK(logits, Math.min(k, logits.length)) : nucleus(logits, temperature, topP);
    const max = cands[0][1];
    const weights = new Float64Array(cands.length);
    let total = 0;
    for (let i = 0; i < cands.length; i++) {
      weights[i] = Math.exp((cands[i][1] - max) / temperature);
      total += weights[i];
    }
    // With top-k the mass is renormalised over the k first; without, `nucleus` kept a prefix of the
    // sorted vocabulary that reaches topP of the whole mass, whose own total is what counts here.
    const mass = k > 0 ? total : fullMass(logits, max, temperature);
    let keep = cands.length;
    if (topP < 1) {
      let acc = 0;
      for (let i = 0; i < cands.length; i++) {
        acc += weights[i] / mass;
        if (acc >= topP) {
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

  /**
   * One draw from softmax(logits / T): the weights are computed once, kept in WEIGHTS for the walk
   * (which used to compute each again) and for a redraw under a mask (redrawMasked).
   */
  private drawFull(logits: Float32Array, temperature: number): number {
    const n = logits.length;
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
    if (WEIGHTS.length < n) WEIGHTS = new Float64Array(n);
    const w = WEIGHTS;
    let total = 0;
    for (let i = 0; i < n; i++) total += w[i] = Math.exp((logits[i] - max) / temperature);
    this.drawn = { logits, max, temperature };
    let r = this.rng() * total;
    let last = 0;
    for (let i = 0; i < n; i++) {
      if (w[i] > 0) last = i;
      r -= w[i];
      if (r < 0) return i;
    }
    return last; // rounding left a sliver of mass: the last token with any weight
  }

  /** What the last drawFull left in WEIGHTS (null: nothing reusable). */
  private drawn: { logits: Float32Array; max: number; temperature: number } | null = null;

  /**
   * drawFull again on the same logits after a constraint set refused ones to −∞, with the weights of
   * the first draw: when the largest logit is still allowed they are the same numbers (an allowed
   * token's exp((l − max) / T) has not changed, a refused one's is 0), so this draws exactly what
   * drawFull would, without the exponentials. −1: the largest was refused (drawFull must run).
   */
  private redrawMasked(logits: Float32Array): number {
    const d = this.drawn;
    this.drawn = null;
    const n = logits.length;
    if (!d || d.logits !== logits || d.temperature !== this.params.temperature) return -1;
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
    if (max !== d.max) return -1;
    const w = WEIGHTS;
    let total = 0;
    for (let i = 0; i < n; i++) if (logits[i] !== -Infinity) total += w[i];
    let r = this.rng() * total;
    let last = 0;
    for (let i = 0; i < n; i++) {
      if (logits[i] === -Infinity) continue;
      if (w[i] > 0) last = i;
      r -= w[i];
      if (r < 0) return i;
    }
    return last;
  }
}

/** The weights of the latest drawFull (one sampler runs at a time in the engine's thread). */
let WEIGHTS = new Float64Array(0);

/** Σ exp((l − max) / T) over the whole vocabulary. */
function fullMass(logits: Float32Array, max: number, temperature: number): number {
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp((logits[i] - max) / temperature);
  return total;
}

/**
 * The smallest best-first prefix of the vocabulary whose probability reaches `topP`: the top 64
 * first (a partial selection), widened by sorting everything only when those do not reach it.
 */
function nucleus(logits: Float32Array, temperature: number, topP: number): Array<[number, number]> {
  const head = topK(logits, Math.min(64, logits.length));
  const max = head[0][1];
  const total = fullMass(logits, max, temperature);
  let acc = 0;
  for (const [, v] of head) {
    acc += Math.exp((v - max) / temperature) / total;
    if (acc >= topP) return head;
  }
  if (head.length === logits.length) return head;
  const order = new Uint32Array(logits.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  order.sort((a, b) => logits[b] - logits[a] || a - b);
  return Array.from(order, (i) => [i, logits[i]] as [number, number]);
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
