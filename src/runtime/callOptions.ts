/**
 * One cancellation contract for every async public call: `{ signal, timeoutMs }`, combined
 * into one signal (`AbortSignal.any`, the E2B SDK's way). A call bounded so rejects with
 * E_ABORTED (the caller's signal, its reason as the cause) or E_TIMEOUT (timeoutMs ran out).
 *
 * Two kinds of call:
 * - `abortable`: the operation takes the signal and undoes itself (a create kills the VM it
 *   was booting); the call rejects once that is done, so nothing is left half made.
 * - otherwise the call only stops waiting: what it asked for (a pause, a snapshot) may still
 *   happen, and the sandbox's state says whether it did.
 */

import { CorralError, InvalidOptionError } from '../errors.ts';

export interface CallOptions {
  /** Aborting it rejects the call with E_ABORTED. */
  readonly signal?: AbortSignal;
  /** The call rejects with E_TIMEOUT after this many ms (a positive number). */
  readonly timeoutMs?: number;
}

/** Throws an InvalidOptionError naming `signal` or `timeoutMs` when either is of the wrong kind. */
export function validateCallOptions(options: unknown, where = 'options'): asserts options is CallOptions | undefined {
  if (options === undefined) return;
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError(where, 'an object', options);
  const { signal, timeoutMs } = options as Record<string, unknown>;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidOptionError('signal', 'an AbortSignal', signal);
  if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0)) {
    throw new InvalidOptionError('timeoutMs', 'a positive number of ms', timeoutMs);
  }
}

/**
 * Runs `run` under `options`: `run` gets the combined signal (undefined when the caller gave
 * neither). Rejects with E_ABORTED or E_TIMEOUT as soon as that signal fires, or, when
 * `abortable`, once `run` settled after it fired.
 *
 * @example
 * await bounded('pause sandbox "a"', { timeoutMs: 5000 }, () => link.api.pause());
 */
export async function bounded<T>(what: string, options: CallOptions | undefined, run: (signal: AbortSignal | undefined) => Promise<T>, abortable = false): Promise<T> {
  validateCallOptions(options);
  const { signal, timeoutMs } = options ?? {};
  if (!signal && timeoutMs === undefined) return run(undefined);
  const timer = new AbortController();
  const timeout = timeoutMs !== undefined ? setTimeout(() => timer.abort(new CorralError('E_TIMEOUT', `${what} did not finish within ${timeoutMs} ms`)), timeoutMs) : undefined;
  const combined = signal ? AbortSignal.any([signal, timer.signal]) : timer.signal;
  const why = (): CorralError => {
    // The combined signal keeps the reason of whichever source fired first.
    if (timer.signal.aborted && combined.reason === timer.signal.reason) return timer.signal.reason as CorralError;
    const reason: unknown = signal?.reason;
    return new CorralError('E_ABORTED', `${what} was aborted${reason instanceof Error ? `: ${reason.message}` : ''}`, { cause: reason });
  };
  let onAbort: (() => void) | undefined;
  try {
    if (combined.aborted) throw why();
    // Once the signal fired, the call's answer is the abort, however `run` ended.
    const running = run(combined).then(
      (value) => {
        if (abortable && combined.aborted) throw why();
        return value;
      },
      (err: unknown) => {
        throw combined.aborted ? why() : err;
      },
    );
    if (abortable) return await running;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(why());
      combined.addEventListener('abort', onAbort, { once: true });
    });
    // The race handles a rejection of `running` that comes after the abort won.
    return await Promise.race([running, aborted]);
  } finally {
    clearTimeout(timeout);
    if (onAbort) combined.removeEventListener('abort', onAbort);
  }
}
