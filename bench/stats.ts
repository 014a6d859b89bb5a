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

/** One figure of a bench run: its unit, median and p95, and the floor measured in the same run. */
export interface Metric {
  readonly unit: string;
  readonly median: number;
  readonly p95: number;
  readonly floor?: number;
  /** median / floor. */
  readonly ratio?: number;
}

/**
 * One bench run's figures as data: with `--json` on the command line, {@link print} writes
 * them as one JSON object on the last line, `{"bench", "metrics": {NAME: {unit, median,
 * p95, floor, ratio}}}`, for scripts that track the figures across runs.
 *
 * @example
 * const report = new BenchReport('boot');
 * report.add('exec_true', execMs, 'ms', floorMs);
 * report.print();
 */
export class BenchReport {
  readonly #metrics: Record<string, Metric> = {};

  constructor(readonly bench: string) {}

  /** A figure from its samples; `floor` is the same run's floor in the same unit. */
  add(name: string, samples: readonly number[], unit: string, floor?: number): void {
    const { median, p95 } = summary(samples);
    this.#metrics[name] = { unit, median, p95, ...(floor !== undefined ? { floor, ratio: median / floor } : {}) };
  }

  /** Prints the JSON line when the run was asked for it (`--json`). */
  print(): void {
    if (process.argv.includes('--json')) console.log(JSON.stringify({ bench: this.bench, metrics: this.#metrics }));
  }
}
