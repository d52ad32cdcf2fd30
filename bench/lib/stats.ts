/** Small statistics helpers for the load benchmark. */

/** Nearest-rank percentile (p in [0, 100]) of an unsorted sample; NaN when empty. */
export function percentile(xs: ArrayLike<number>, p: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}

export interface LinearFit {
  slope: number;
  intercept: number;
  /** Standard error of the slope. */
  slopeSe: number;
  /** Standard deviation of the residuals. */
  residualSd: number;
  n: number;
}

/** Ordinary least squares y = intercept + slope·x. */
export function linearFit(xs: number[], ys: number[]): LinearFit {
  const n = xs.length;
  if (n < 2) return { slope: NaN, intercept: NaN, slopeSe: NaN, residualSd: NaN, n };
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < n; i++) {
    sxx += (xs[i] - mx) ** 2;
    sxy += (xs[i] - mx) * (ys[i] - my);
  }
  const slope = sxy / sxx;
  const intercept = my - slope * mx;
  let sse = 0;
  for (let i = 0; i < n; i++) sse += (ys[i] - (intercept + slope * xs[i])) ** 2;
  const residualVar = n > 2 ? sse / (n - 2) : NaN;
  return { slope, intercept, slopeSe: Math.sqrt(residualVar / sxx), residualSd: Math.sqrt(residualVar), n };
}

/** Markdown table, first `leftCols` columns left-aligned, the rest right-aligned. */
export function table(header: string[], rows: string[][], leftCols = 1): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i < leftCols ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`;
  return [line(header), sep, ...rows.map(line)].join('\n');
}
