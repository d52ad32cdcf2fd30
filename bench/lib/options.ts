/** Command-line values shared by the benchmarks: numbers with a lower bound, and model lists. */

export function intOption(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name}: expected an integer >= ${min}, got ${v}`);
  return n;
}

export function numOption(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name}: expected a number >= ${min}, got ${v}`);
  return n;
}

/** `--models a,b`: each must be a key of `known`. */
export function modelsOption(spec: string, known: Record<string, unknown>): string[] {
  const models = spec.split(',').map((m) => m.trim()).filter(Boolean);
  for (const m of models) if (!known[m]) throw new Error(`--models: unknown ${m} (known: ${Object.keys(known).join(', ')})`);
  return models;
}
