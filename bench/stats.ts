/** Small statistics helpers shared by the benchmarks. */

/** The q-quantile (0..1) of samples, nearest-rank. */
export function quantile(samples: readonly number[], q: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx]!;
}

/** Median and p95 of samples. */
export function summary(samples: readonly number[]): { median: number; p95: number; n: number } {
  return { median: quantile(samples, 0.5), p95: quantile(samples, 0.95), n: samples.length };
}

/** "123.4 ms (p95 150.2 ms, n=10)" */
export function fmtMs(samples: readonly number[]): string {
  const s = summary(samples);
  return `median ${s.median.toFixed(1)} ms, p95 ${s.p95.toFixed(1)} ms (n=${s.n})`;
}

/** Ratio of medians, as "×1.23". */
export function ratio(a: readonly number[], b: readonly number[]): string {
  return `×${(quantile(a, 0.5) / quantile(b, 0.5)).toFixed(2)}`;
}
