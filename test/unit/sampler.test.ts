import { describe, expect, it } from 'vitest';
import type { SamplingParams } from '../../src/engine/worker-messages.js';
import { Sampler, topK, type SamplingConstraint } from '../../src/engine/sampler.js';
import { mulberry32 } from '../../bench/lib/rng.js';

const params = (p: Partial<SamplingParams>): SamplingParams => ({
  temperature: 1, topP: 1, topK: 0, seed: 1, presencePenalty: 0, frequencyPenalty: 0, maxTokens: 10, stopTokenIds: [], topLogprobs: -1, ...p,
});
const logits = () => Float32Array.from([2, 1.5, 1, 0.5, 0, -1]);

function histogram(p: Partial<SamplingParams>, draws = 4000): number[] {
  const counts = new Array<number>(6).fill(0);
  const s = new Sampler(params(p));
  for (let i = 0; i < draws; i++) counts[s.sample(logits()).token]++;
  return counts;
}

describe('sampler', () => {
  it('greedy picks the argmax, lowest id on ties', () => {
    expect(new Sampler(params({ temperature: 0 })).sample(logits()).token).toBe(0);
    expect(new Sampler(params({ temperature: 0 })).sample(Float32Array.from([1, 3, 3])).token).toBe(1);
  });

  it('the same seed gives the same draws; another seed other draws', () => {
    const run = (seed: number) => {
      const s = new Sampler(params({ seed }));
      return Array.from({ length: 50 }, () => s.sample(logits()).token);
    };
    expect(run(42)).toEqual(run(42));
    expect(run(42)).not.toEqual(run(43));
  });

  it('draws in proportion to softmax(logits / temperature)', () => {
    const counts = histogram({});
    const z = logits().reduce((s, v) => s + Math.exp(v), 0);
    counts.forEach((c, i) => expect(c / 4000).toBeCloseTo(Math.exp(logits()[i]) / z, 1));
  });

  it('top_k keeps only the k most likely tokens', () => {
    const counts = histogram({ topK: 2 });
    expect(counts.slice(2).every((c) => c === 0)).toBe(true);
    expect(counts[0] > 0 && counts[1] > 0).toBe(true);
  });

  it('top_p keeps the smallest set reaching the mass', () => {
    // softmax: p0 ≈ 0.43, p1 ≈ 0.26, p2 ≈ 0.16 → top_p 0.6 keeps tokens 0 and 1 only.
    const counts = histogram({ topP: 0.6 });
    expect(counts.slice(2).every((c) => c === 0)).toBe(true);
    expect(counts[1]).toBeGreaterThan(0);
  });

  it('top_p over a wide, flat vocabulary keeps exactly the smallest best-first prefix', () => {
    // 1,000 equal logits (ties: lower ids first) → top_p 0.5 keeps ids 0..499; a bump on id 900
    // puts it first.
    const wide = () => {
      const l = new Float32Array(1000);
      l[900] = 3;
      return l;
    };
    const s = new Sampler(params({ topP: 0.5, seed: 7 }));
    const seen = new Set<number>();
    for (let i = 0; i < 3000; i++) seen.add(s.sample(wide()).token);
    const pBump = Math.exp(3) / (Math.exp(3) + 999);
    const keptFlat = Math.ceil((0.5 - pBump) * (Math.exp(3) + 999)); // flat tokens needed after the bump
    expect(seen.has(900)).toBe(true);
    expect(Math.max(...[...seen].filter((t) => t !== 900))).toBeLessThan(keptFlat + 1);
    expect(Math.max(...[...seen].filter((t) => t !== 900))).toBeGreaterThan(keptFlat - 40);
  });

  it('presence and frequency penalties lower repeated tokens', () => {
    const s = new Sampler(params({ temperature: 0, frequencyPenalty: 2 }));
    const first = s.sample(logits()).token;
    expect(first).toBe(0);
    // 2 - 2 = 0 < 1.5: the repeated token loses its lead.
    expect(s.sample(logits()).token).toBe(1);
    const p = new Sampler(params({ temperature: 0, presencePenalty: 0.4 }));
    p.sample(logits());
    expect(p.sample(logits()).token).toBe(0); // 1.6 > 1.5: a small presence penalty is not enough
  });

  it('reports normalised logprobs with the top alternatives', () => {
    const r = new Sampler(params({ temperature: 0, topLogprobs: 3 })).sample(logits());
    const z = Math.log(logits().reduce((s, v) => s + Math.exp(v), 0));
    expect(r.logprob).toBeCloseTo(2 - z, 5);
    expect(r.top!.map(([id]) => id)).toEqual([0, 1, 2]);
  });

  it('topK returns the k largest, best first', () => {
    expect(topK(Float32Array.from([0.1, 5, -2, 5, 3]), 3)).toEqual([[1, 5], [3, 5], [4, 3]]);
  });

  /** A constraint allowing the ids `ok` says (dense: no id list, so a refused draw is drawn again). */
  const only = (ok: (id: number) => boolean, list = false): SamplingConstraint => ({
    allows: ok,
    restrict(l) {
      let n = 0;
      for (let i = 0; i < l.length; i++) if (ok(i)) n++;
      else l[i] = -Infinity;
      return n;
    },
    allowedIds: () => (list ? Uint32Array.from({ length: 4096 }, (_, i) => i).filter(ok) : null),
  });

  it('under a constraint, a refused draw is drawn again exactly as from the masked logits (the first draw\'s weights reused)', () => {
    const random = mulberry32(3);
    let redrawn = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const l = Float32Array.from({ length: 4096 }, () => 6 * random());
      // Refused: a third of the ids, sometimes the best one too (its weights cannot be reused then).
      const top = l.indexOf(Math.max(...l));
      const ok = (id: number) => id % 3 !== seed % 3 && !(seed % 4 === 0 && id === top);
      const held = new Sampler(params({ seed, temperature: 0.9 }));
      const a = held.sample(l.slice(), only(ok)).token;
      // The same draws by hand: the full distribution first, then, if refused, the masked one.
      const ref = new Sampler(params({ seed, temperature: 0.9 }));
      let b = ref.sample(l.slice()).token;
      if (!ok(b)) {
        const masked = l.slice();
        only(ok).restrict(masked);
        b = ref.sample(masked).token;
        redrawn++;
      }
      expect(a, `seed ${seed}`).toBe(b);
      expect(ok(a)).toBe(true);
    }
    expect(redrawn).toBeGreaterThan(40);
  });

  it('under a constraint with few allowed ids: greedy is the best allowed, draws stay allowed, logprobs list allowed tokens only', () => {
    const l = Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i));
    const ok = (id: number) => id % 512 === 7;
    const best = [...Array(4096).keys()].filter(ok).reduce((x, y) => (l[y] > l[x] ? y : x));
    expect(new Sampler(params({ temperature: 0 })).sample(l.slice(), only(ok, true)).token).toBe(best);
    const s = new Sampler(params({ seed: 4 }));
    for (let i = 0; i < 50; i++) expect(ok(s.sample(l.slice(), only(ok, true)).token)).toBe(true);
    const r = new Sampler(params({ temperature: 0, topLogprobs: 20 })).sample(l.slice(), only(ok, true));
    expect(r.token).toBe(best);
    expect(r.top!.length).toBe(8); // 8 allowed of the 20 asked: the refused (−∞) are not alternatives
    for (const [id, lp] of r.top!) expect(ok(id) && Number.isFinite(lp)).toBe(true);
  });
});
