/**
 * `sandbox.fs().watch(path)`: changes in a guest directory, assembled in the caller's thread
 * from the sandbox's `fs.watch` events, so it works wherever the sandbox lives (a worker of
 * this process, a detached host, a cluster node): each link carries the events.
 */

import { Subject, type Observable, type Subscription } from 'rxjs';
import type { FsWatchChange, FsWatchEndReason, SandboxEvent } from '../bus/events.ts';
import { CorralError, InvalidOptionError, deserializeError } from '../errors.ts';
import type { WatchRequest } from '../actor/contract.ts';
import { logFailure } from '../runtime/log.ts';

export type { FsWatchChange as FsWatchEvent, FsWatchChangeType as FsWatchEventType, FsWatchEndReason } from '../bus/events.ts';

/** Options of {@link SandboxFs.watch}. */
export interface FsWatchOptions {
  /** Watch the subdirectories too, including ones made later. Default false. */
  readonly recursive?: boolean;
  /** Aborting it stops the watch (the iteration ends, no error). */
  readonly signal?: AbortSignal;
  /** The start call rejects with E_TIMEOUT after this many ms (a positive number). */
  readonly timeoutMs?: number;
  /**
   * Events an iteration holds for its consumer (1 to 1,000,000; default 4096). Past it, events
   * are dropped and one `overflow` event takes their place: a consumer that stops reading
   * costs bounded memory. `events$` subscribers get every event as it comes.
   */
  readonly maxQueuedEvents?: number;
}

/** How a watch reaches its sandbox (src/sdk/Sandbox.ts provides it). */
export interface FsWatchLink {
  /** The sandbox's events, from now on. */
  readonly events$: Observable<SandboxEvent>;
  start(watchId: number, req: WatchRequest): Promise<void>;
  stop(watchId: number): Promise<void>;
  /** Runs `fn` keeping the process alive meanwhile. */
  hold<T>(fn: () => Promise<T>): Promise<T>;
}

const DEFAULT_MAX_QUEUED = 4096;
const OPTIONS = new Set(['recursive', 'signal', 'timeoutMs', 'maxQueuedEvents']);

/**
 * Checks {@link FsWatchOptions}; returns the queue bound. Throws InvalidOptionError naming
 * the option and what it allows.
 *
 * @example
 * validateWatchOptions({ recursive: true }); // 4096
 */
export function validateWatchOptions(options: unknown): number {
  if (options === undefined) return DEFAULT_MAX_QUEUED;
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError('options', 'an object of recursive, signal, timeoutMs, maxQueuedEvents', options);
  for (const k of Object.keys(options)) if (!OPTIONS.has(k)) throw new InvalidOptionError(k, 'not an option of watch (one of recursive, signal, timeoutMs, maxQueuedEvents)', (options as Record<string, unknown>)[k]);
  const o = options as Record<string, unknown>;
  if (o.recursive !== undefined && typeof o.recursive !== 'boolean') throw new InvalidOptionError('recursive', 'true or false', o.recursive);
  const max = o.maxQueuedEvents ?? DEFAULT_MAX_QUEUED;
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 1 || max > 1_000_000) throw new InvalidOptionError('maxQueuedEvents', 'an integer from 1 to 1000000', max);
  return max;
}

/**
 * A live file watch: an AsyncIterable of its changes (one consumer; events wait for it, up
 * to `maxQueuedEvents`) and `events$`, an Observable of the same changes for any number of
 * subscribers (hot: from their subscription on). Both end when the watch does: `stop()`,
 * the directory removed, the sandbox stopped; a guest that fails to read it, or a cluster
 * moving the sandbox to another node (E_SANDBOX_MOVED), errors them.
 * A pending iteration keeps the process alive; a watch nobody iterates does not.
 *
 * @example
 * await using w = await sb.fs().watch('/work', { recursive: true });
 * for await (const e of w) console.log(e.type, e.path);
 */
export class FsWatch implements AsyncIterable<FsWatchChange> {
  readonly #link: FsWatchLink;
  readonly #maxQueued: number;
  readonly #subject = new Subject<FsWatchChange>();
  readonly #queue: FsWatchChange[] = [];
  #overflowed = false;
  #waiter: (() => void) | undefined;
  #sub: Subscription | undefined;
  #end: { reason: FsWatchEndReason; error?: Error } | undefined;
  #resolveEnded!: (reason: FsWatchEndReason) => void;
  /** Every change, as it comes; completes when the watch ends. */
  readonly events$: Observable<FsWatchChange> = this.#subject.asObservable();
  /** Resolves with why the watch ended (never rejects; a failure's error is {@link error}). */
  readonly ended: Promise<FsWatchEndReason> = new Promise((r) => (this.#resolveEnded = r));

  /** @internal Made by {@link SandboxFs.watch}. */
  constructor(
    /** The watch's id in its sandbox (its `fs.watch` events carry it). */
    readonly id: number,
    /** The directory watched, as asked for. */
    readonly path: string,
    link: FsWatchLink,
    maxQueued: number,
  ) {
    this.#link = link;
    this.#maxQueued = maxQueued;
    this.#sub = link.events$.subscribe({
      next: (e) => this.#route(e),
      error: (err: Error) => this.#finish('sandbox-stopped', err),
      complete: () => this.#finish('sandbox-stopped'),
    });
  }

  /** Why it ended, once it did. */
  get endReason(): FsWatchEndReason | undefined {
    return this.#end?.reason;
  }

  /** The failure that ended it (reason `failed`, or the event stream lost). */
  get error(): Error | undefined {
    return this.#end?.error;
  }

  /** Ends the watch; events still queued are still iterated. Idempotent. */
  async stop(): Promise<void> {
    if (this.#end) return;
    this.#finish('stopped');
    await this.#link.stop(this.id);
  }

  /** The same as {@link stop}. */
  close(): Promise<void> {
    return this.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FsWatchChange> {
    for (;;) {
      const next = this.#queue.shift();
      if (next) {
        if (next.type === 'overflow') this.#overflowed = false;
        yield next;
        continue;
      }
      if (this.#end) {
        if (this.#end.error && this.#end.reason !== 'stopped') throw this.#end.error;
        return;
      }
      const arrived = new Promise<void>((r) => (this.#waiter = r));
      // Waiting for an event is a call in progress: it keeps the process alive.
      await this.#link.hold(() => arrived);
    }
  }

  /** @internal The start failed: nothing more comes. */
  abandon(): void {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
  }

  #route(e: SandboxEvent): void {
    if (e.type === 'fs.watch' && e.watchId === this.id) {
      for (const c of e.changes) this.#push(c);
    } else if (e.type === 'fs.watch.ended' && e.watchId === this.id) {
      this.#finish(e.reason, e.error ? deserializeError(e.error) : undefined);
    } else if (e.type === 'sandbox.stopped') {
      this.#finish('sandbox-stopped');
    } else if (e.type === 'sandbox.moved') {
      // Its guest was restored on the other node without the watch (as any restored snapshot
      // is): like an exec running across the move, it ends saying so.
      this.#finish('sandbox-moved', new CorralError('E_SANDBOX_MOVED', `the watch of ${this.path} ended: sandbox "${e.name}" moved from node "${e.from}" to node "${e.to}" (watch it again there)`, { details: { sandbox: e.name, from: e.from, node: e.to } }));
    }
  }

  #push(c: FsWatchChange): void {
    if (this.#end) return;
    this.#subject.next(c);
    if (this.#queue.length < this.#maxQueued) this.#queue.push(c);
    else if (!this.#overflowed) {
      this.#overflowed = true;
      this.#queue.push({ type: 'overflow', path: this.path, name: '', isDir: true });
    }
    this.#wake();
  }

  #finish(reason: FsWatchEndReason, error?: Error): void {
    if (this.#end) return;
    this.#end = { reason, ...(error ? { error } : {}) };
    queueMicrotask(() => this.abandon());
    if (error && reason !== 'stopped') this.#subject.error(error);
    else this.#subject.complete();
    this.#resolveEnded(reason);
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }
}

/**
 * Starts a watch on `link`: subscribed before the start call, so no change is missed.
 * Rejects (E_FS with `details.errno` ENOENT, ENOTDIR…; E_ILLEGAL_STATE; E_TIMEOUT) if the
 * guest cannot watch `path`. `bound` applies the caller's `{ signal, timeoutMs }` to the start.
 *
 * @example
 * const w = await startWatch(link, 7, '/work', true, 4096, undefined, (fn) => fn());
 */
export async function startWatch(link: FsWatchLink, id: number, path: string, recursive: boolean, maxQueued: number, signal: AbortSignal | undefined, bound: (fn: () => Promise<void>) => Promise<void>): Promise<FsWatch> {
  const watch = new FsWatch(id, path, link, maxQueued);
  try {
    await bound(() => link.start(id, { path, recursive }));
  } catch (err) {
    watch.abandon();
    // A start that timed out may still have happened: end it in the guest, not only here.
    if (err instanceof CorralError && (err.code === 'E_TIMEOUT' || err.code === 'E_ABORTED')) void link.stop(id).catch(logFailure(`stopping watch ${id} after its start gave up`));
    throw err;
  }
  if (signal) {
    const onAbort = () => void watch.stop().catch(logFailure(`stopping watch ${id} on its signal`));
    if (signal.aborted) onAbort();
    else {
      signal.addEventListener('abort', onAbort, { once: true });
      void watch.ended.then(() => signal.removeEventListener('abort', onAbort));
    }
  }
  return watch;
}
