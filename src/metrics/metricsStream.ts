/**
 * A stream of metrics samples at a fixed interval, ending when the sandbox no longer runs.
 */

import { Observable } from 'rxjs';
import { CorralError } from '../errors.ts';
import type { MetricsSampler, SandboxMetrics } from './MetricsSampler.ts';

/**
 * Samples every `intervalMs` (each sample's CPU % covers the interval before it). Completes
 * once the sandbox is stopped (its VM is gone); other errors end the stream with them.
 *
 * @example
 * metricsStream(() => new MetricsSampler(src), 1000).subscribe((m) => console.log(m.cpuPercent));
 */
export function metricsStream(newSampler: () => Pick<MetricsSampler, 'sample'>, intervalMs: number): Observable<SandboxMetrics> {
  if (!Number.isFinite(intervalMs) || intervalMs < 50) throw new RangeError(`intervalMs must be at least 50 (got ${intervalMs})`);
  return new Observable<SandboxMetrics>((sub) => {
    const sampler = newSampler();
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const tick = async () => {
      try {
        const m = await sampler.sample({ firstWindowMs: intervalMs });
        if (stopped) return;
        sub.next(m);
        timer = setTimeout(() => void tick(), intervalMs);
      } catch (err) {
        if (stopped) return;
        if (err instanceof CorralError && err.code === 'E_ILLEGAL_STATE') sub.complete();
        else sub.error(err);
      }
    };
    void tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  });
}
