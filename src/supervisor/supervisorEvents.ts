/**
 * `supervisor.events({ name?, since })`: picks where a stream comes from. A sandbox of this
 * supervisor: its replay buffer, then the bus. A detached sandbox running in a host process:
 * that host's socket (the host keeps the buffer). A stopped sandbox: its buffer, then done.
 */

import { defer, takeWhile, throwError, type Observable } from 'rxjs';
import type { EventBus } from '../bus/EventBus.ts';
import type { SandboxEvent } from '../bus/events.ts';
import { CorralError } from '../errors.ts';
import type { SandboxRecord } from '../store/Store.ts';
import type { ReplayRead } from '../events/ReplayLog.ts';
import { remoteEvents } from '../link/remoteEvents.ts';
import { resumeStream, sinceFor, type SinceCursor } from '../events/resumeStream.ts';

/** Options of `supervisor.events()` and `sandbox.events()`. */
export interface EventsOptions {
  /** Only this sandbox's events. */
  readonly name?: string;
  /**
   * Resume after this seq (the last one seen): 0 replays the whole buffer, undefined gives
   * live events only. Without `name`, a `{ name: seq }` cursor resumes each sandbox apart.
   */
  readonly since?: SinceCursor;
}

/** What the supervisor lends {@link supervisorEvents}. */
export interface EventSources {
  read(name: string, since: number): ReplayRead;
  names(): string[];
  isLive(name: string): boolean;
  record(name: string): SandboxRecord | undefined;
  readonly bus: Pick<EventBus, 'events$' | 'forSandbox'>;
}

const EMPTY_READ: ReplayRead = { events: [], oldest: null };

/** @internal see `Supervisor.events`. */
export function supervisorEvents(src: EventSources, options: EventsOptions): Observable<SandboxEvent> {
  const { name, since } = options;
  const read = since === undefined ? () => EMPTY_READ : src.read;
  if (name === undefined) return defer(() => resumeStream(since === undefined ? [] : src.names(), since, read, src.bus.events$, false));
  const untilStopped = takeWhile((e: SandboxEvent) => e.type !== 'sandbox.stopped', true);
  return defer(() => {
    if (src.isLive(name)) return resumeStream([name], since, read, src.bus.forSandbox(name), false).pipe(untilStopped);
    const rec = src.record(name);
    if (rec && rec.status !== 'stopped' && rec.controlSocket) {
      return remoteEvents(rec.controlSocket, name, since === undefined ? -1 : sinceFor(since, name));
    }
    if (!rec && src.read(name, 0).oldest === null) return throwError(() => new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`));
    return resumeStream([name], since, read, src.bus.forSandbox(name), true);
  });
}
