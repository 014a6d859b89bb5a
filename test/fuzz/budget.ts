/**
 * How long each fuzz property runs. The default test run gives each a few seconds;
 * `scripts/fuzz.sh` (npm run fuzz) sets CORRAL_FUZZ_MS for a long run with random seeds.
 * CORRAL_FUZZ_SEED replays the run fast-check printed with a failure.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Parameters } from 'fast-check';

const longMs = Number(process.env.CORRAL_FUZZ_MS ?? 0);

/** fast-check parameters for one property: `shortMs` in the default run, CORRAL_FUZZ_MS in a long one. */
export function budget<T>(shortMs: number): Parameters<T> {
  const ms = longMs > 0 ? longMs : shortMs;
  // The default run replays one fixed sequence (a CI run must not fail on a new random
  // draw: new cases are the long run's job, and whatever it finds joins the corpus).
  const seed = process.env.CORRAL_FUZZ_SEED ?? (longMs > 0 ? undefined : '20261202');
  return {
    numRuns: Number.MAX_SAFE_INTEGER,
    interruptAfterTimeLimit: ms,
    markInterruptAsFailure: false,
    ...(seed ? { seed: Number(seed) } : {}),
  };
}

/** vitest timeout for a property given `shortMs`. */
export function timeoutFor(shortMs: number): number {
  return (longMs > 0 ? longMs : shortMs) + 60_000;
}

/** The seed corpus files of one kind (test/fuzz/corpus/<kind>/), name → text. */
export function corpus(kind: string): Array<[string, string]> {
  const dir = join(fileURLToPath(new URL('./corpus/', import.meta.url)), kind);
  return readdirSync(dir)
    .sort()
    .map((f) => [f, readFileSync(join(dir, f), 'utf8')]);
}
