/**
 * The typed event bus: one stream of every sandbox's events, with per-sandbox and per-type
 * views. Only observables leave the bus; the Subject stays private.
 */

import { Observable, Subject, filter } from 'rxjs';
import type { EventOf, SandboxEvent, SandboxEventType } from './events.ts';

/**
 * Fans out sandbox events to any number of subscribers.
 *
 * @example
 * bus.on('exec.stdout').subscribe((e) => process.stdout.write(e.data));
 * bus.forSandbox('worker').subscribe((e) => console.log(e.seq, e.type));
 */
export class EventBus {
  readonly #subject = new Subject<SandboxEvent>();
  #closed = false;

  /** All events of all sandboxes. */
  readonly events$: Observable<SandboxEvent> = this.#subject.asObservable();

  /** Publishes one stamped event. Ignored after {@link close}. */
  publish(event: SandboxEvent): void {
    if (this.#closed) return;
    this.#subject.next(event);
  }

  /** Events of one type, narrowed. */
  on<T extends SandboxEventType>(...types: T[]): Observable<EventOf<T>> {
    const wanted = new Set<string>(types);
    return this.events$.pipe(filter((e): e is EventOf<T> => wanted.has(e.type)));
  }

  /** Events of one sandbox. */
  forSandbox(name: string): Observable<SandboxEvent> {
    return this.events$.pipe(filter((e) => e.name === name));
  }

  /** Completes every subscription. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#subject.complete();
  }
}

/** Narrows any observable of events to some types. */
export function ofType<T extends SandboxEventType>(...types: T[]) {
  const wanted = new Set<string>(types);
  return filter((e: SandboxEvent): e is EventOf<T> => wanted.has(e.type));
}
