/** Small seeded PRNG (uniform in [0, 1)), so weights and prompts are the same on every run. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` token ids drawn uniformly from [lo, hi). */
export function randomIds(seed: number, count: number, lo: number, hi: number): number[] {
  const uniform = mulberry32(seed);
  return Array.from({ length: count }, () => lo + Math.floor(uniform() * (hi - lo)));
}
