/**
 * Joins a replay and a live stream into one, without gap or duplicate: subscribe to the live
 * events first (holding them back), read the buffer, emit what is after `since`, then let the
 * held-back and later live events through, dropping any `seq` already emitted.
 */

import { Observable } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import type { ReplayRead } from './ReplayLog.ts';

/** Where each sandbox's stream resumes: one seq for all, or one per sandbox name. */
export type SinceCursor = number | Readonly<Record<string, number>>;

/** The seq after which the stream of `name` resumes. */
export function sinceFor(since: SinceCursor | undefined, name: string): number {
  if (since === undefined) return 0;
  return typeof since === 'number' ? since : (since[name] ?? 0);
}

/**
 * @param names the sandboxes to replay (their buffers are read in this order)
 * @param read reads one sandbox's buffer after a seq (synchronously)
 * @param live$ the live events (of those sandboxes, or of any: others pass unfiltered)
 * @param complete when true the stream completes after the replay (nothing more will come)
 *
 * @example
 * resumeStream(['worker'], 41, (n, s) => log.read(n, s), bus.forSandbox('worker'), false)
 */
export function resumeStream(
  names: readonly string[],
  since: SinceCursor | undefined,
  read: (name: string, since: number) => ReplayRead,
  live$: Observable<SandboxEvent>,
  complete: boolean,
): Observable<SandboxEvent> {
  return new Observable<SandboxEvent>((sub) => {
    const last = new Map<string, number>();
    const held: SandboxEvent[] = [];
    let replaying = true;
    const lives = new Map<string, number>();
    const pass = (e: SandboxEvent) => {
      const prev = last.get(e.name) ?? sinceFor(since, e.name);
      // A restarted sandbox numbers its events from 1 again: a new life, told by its start time.
      const fresh = e.type === 'sandbox.creating' && e.seq === 1 && lives.get(e.name) !== e.ts;
      if (!fresh && e.seq <= prev) return;
      if (e.type === 'sandbox.creating' && e.seq === 1) lives.set(e.name, e.ts);
      last.set(e.name, e.seq);
      sub.next(e);
    };
    const liveSub = complete
      ? undefined
      : live$.subscribe({
          next: (e) => (replaying ? held.push(e) : pass(e)),
          error: (err) => sub.error(err),
          complete: () => (replaying ? undefined : sub.complete()),
        });
    for (const name of names) {
      const from = sinceFor(since, name);
      const r = read(name, from);
      if (r.missed !== undefined) {
        sub.next({ type: 'stream.gap', name, seq: r.missed, ts: Date.now(), since: from, missed: r.missed });
        last.set(name, r.missed);
      }
      for (const e of r.events) pass(e);
    }
    replaying = false;
    for (const e of held.splice(0)) pass(e);
    if (complete || liveSub?.closed) sub.complete();
    return () => liveSub?.unsubscribe();
  });
}
