/**
 * Forks: running copies of a sandbox that share its state up to now. A fork is a snapshot
 * taken for the purpose, sandboxes restored from it, and the snapshot removed; all or none:
 * a fork that came up is ended again when another failed or the call was aborted.
 */

import { validateInt, validateName } from '../config.ts';
import { CorralError } from '../errors.ts';
import { randomInt } from 'node:crypto';

/** What a fork is made of: the caller's means to snapshot, create and undo. */
export interface ForkSteps<S> {
  snapshot(name: string): Promise<unknown>;
  create(name: string, fromSnapshot: string, signal: AbortSignal | undefined): Promise<S>;
  /** Ends and removes a fork that came up (all or none). */
  discard(fork: S): Promise<void>;
  removeSnapshot(name: string): Promise<void>;
}

/** The names of the forks of `source`: one given, or `count` of them as `${prefix}-1` … */
export function forkNames(source: string, arg: string | { count: number; prefix?: string }): string[] {
  const names =
    typeof arg === 'string'
      ? [arg]
      : Array.from({ length: validateInt(arg.count, 'count', { min: 1, max: 64 }) }, (_, i) => `${arg.prefix ?? `${source}-fork`}-${i + 1}`);
  for (const n of names) validateName(n, 'fork name');
  return names;
}

/**
 * Makes the forks of `source` named `names`. The snapshot is removed however it ends (a
 * failure to remove it is reported by `onLeftover`, not thrown over the forks' outcome).
 */
export async function fork<S>(source: string, names: readonly string[], steps: ForkSteps<S>, signal: AbortSignal | undefined, onLeftover: (err: unknown, snapshot: string) => void): Promise<S[]> {
  const snap = `fork-${source.slice(0, 40)}-${randomInt(1e9)}`;
  await steps.snapshot(snap);
  try {
    const made = await Promise.allSettled(names.map((n) => steps.create(n, snap, signal)));
    const forks = made.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = made.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed || signal?.aborted) {
      await Promise.all(forks.map((f) => steps.discard(f)));
      throw failed?.reason ?? new CorralError('E_ABORTED', `fork of sandbox "${source}" was aborted`);
    }
    return forks;
  } finally {
    await steps.removeSnapshot(snap).catch((err: unknown) => onLeftover(err, snap));
  }
}
