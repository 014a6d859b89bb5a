/**
 * The replay buffer: every event of every sandbox, kept in LMDB (sub-database `events`,
 * keys `[name, seq]`), bounded per sandbox by a count and a byte budget. A subscriber that
 * lost its connection resumes from the last `seq` it saw and gets the rest exactly once.
 *
 * The process that hosts a sandbox's actor writes its events (the supervisor does, for each
 * event it receives); any process that opens the same state dir can read them. A new actor
 * life (a restart numbers its events from 1 again) starts a new buffer.
 */

import type { Database } from 'lmdb';
import { InvalidOptionError, type CorralError } from '../errors.ts';
import type { SandboxEvent } from '../bus/events.ts';
import type { Store } from '../store/Store.ts';
import { logFailure } from '../runtime/log.ts';

/** Bounds of a {@link ReplayLog}, per sandbox. */
export interface ReplayLimits {
  /** Most events kept per sandbox. Default 10 000. */
  readonly maxEvents?: number;
  /** Most bytes kept per sandbox (output bytes plus a small per-event overhead). Default 16 MiB. */
  readonly maxBytes?: number;
}

/** What {@link ReplayLog.read} found. */
export interface ReplayRead {
  /** The buffered events with `seq > since`, in order. */
  readonly events: SandboxEvent[];
  /** The oldest `seq` still buffered, or null when the buffer is empty. */
  readonly oldest: number | null;
  /**
   * When the buffer no longer reaches back to `since`: the last seq that is lost (events
   * `since + 1 … missed` cannot be replayed). Undefined when nothing is missing.
   */
  readonly missed?: number;
}

type Key = [string, number];
const DONE: Promise<void> = Promise.resolve();
/** The write of an event there is nothing to write for. */
const written = (): Promise<void> => DONE;
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

interface Tail {
  /** [seq, bytes] of the events this process wrote and still keeps, oldest first. */
  readonly entries: Array<[number, number]>;
  head: number;
  bytes: number;
}

/**
 * @example
 * const log = new ReplayLog(store, { maxEvents: 1000 });
 * log.append(event);
 * const { events, missed } = log.read('worker', 42);
 */
export class ReplayLog {
  readonly maxEvents: number;
  readonly maxBytes: number;
  readonly #store: Store;
  readonly #db: Database<SandboxEvent, Key>;
  readonly #tails = new Map<string, Tail>();
  /** Events whose write is not committed yet: a read in this process must still see them. */
  readonly #unflushed = new Map<string, Map<number, SandboxEvent>>();

  constructor(store: Store, limits: ReplayLimits = {}) {
    this.maxEvents = limits.maxEvents ?? 10_000;
    this.maxBytes = limits.maxBytes ?? 16 * 1024 * 1024;
    if (!Number.isInteger(this.maxEvents) || this.maxEvents < 1) throw new InvalidOptionError('replay.maxEvents', 'a positive integer', limits.maxEvents);
    if (!Number.isFinite(this.maxBytes) || this.maxBytes < 1024) throw new InvalidOptionError('replay.maxBytes', 'at least 1024', limits.maxBytes);
    this.#store = store;
    this.#db = store.database<SandboxEvent, Key>('events');
  }

  /**
   * Records one event (synthetic `stream.gap` notices are not stored). Never throws (nor
   * rejects). Resolves once the write is committed (or failed): a producer that must not
   * run ahead of the disk waits on it (the supervisor's output flow control does).
   */
  append(e: SandboxEvent): Promise<void> {
    return this.stage(e)();
  }

  /**
   * {@link append} in two steps: the event is in this process's view of the buffer (reads
   * see it) when this returns, and on disk once the returned write is called and resolves.
   * The supervisor publishes an event between the two, so its disk write does not delay it.
   * Never throws; the write never rejects.
   */
  stage(e: SandboxEvent): () => Promise<void> {
    if (e.type === 'stream.gap' || this.#store.closed) return written;
    try {
      // A new actor life numbers its events from 1 again: the old buffer is of no use.
      if (e.seq === 1) this.#clearSync(e.name);
      let tail = this.#tails.get(e.name);
      if (!tail) this.#tails.set(e.name, (tail = { entries: [], head: 0, bytes: 0 }));
      const size = eventBytes(e);
      tail.entries.push([e.seq, size]);
      tail.bytes += size;
      let pending = this.#unflushed.get(e.name);
      if (!pending) this.#unflushed.set(e.name, (pending = new Map()));
      pending.set(e.seq, e);
      const trimmed: number[] = [];
      while (tail.entries.length - tail.head > this.maxEvents || (tail.bytes > this.maxBytes && tail.entries.length - tail.head > 1)) {
        const [seq, bytes] = tail.entries[tail.head++]!;
        tail.bytes -= bytes;
        pending.delete(seq);
        trimmed.push(seq);
      }
      if (tail.head > 4096) {
        tail.entries.splice(0, tail.head);
        tail.head = 0;
      }
      return () => {
        if (this.#store.closed) return DONE;
        try {
          const put = this.#db.put([e.name, e.seq], e).then(
            () => void (pending.get(e.seq) === e && pending.delete(e.seq)),
            logFailure(`writing event ${e.seq} of sandbox "${e.name}" to the replay log`),
          );
          for (const seq of trimmed) void this.#db.remove([e.name, seq]).catch(logFailure(`trimming event ${seq} of sandbox "${e.name}" from the replay log`));
          return put;
        } catch (err) {
          return closing(err, e);
        }
      };
    } catch (err) {
      closing(err, e);
      return written;
    }
  }

  /**
   * The buffered events of `name` after `since`, and whether some are lost.
   *
   * @example
   * const { events, missed } = log.read('worker', 0);
   */
  read(name: string, since: number): ReplayRead {
    const bySeq = new Map<number, SandboxEvent>();
    let oldest: number | null = null;
    if (!this.#store.closed) {
      for (const key of this.#db.getKeys({ start: [name, 0], end: [name, MAX_SEQ], limit: 1 })) oldest = (key as Key)[1];
      for (const { key, value } of this.#db.getRange({ start: [name, since + 1], end: [name, MAX_SEQ] })) bySeq.set(key[1], value);
    }
    const tail = this.#tails.get(name);
    const pending = this.#unflushed.get(name);
    if (pending) {
      for (const [seq, e] of pending) if (seq > since) bySeq.set(seq, e);
      if (pending.size) {
        const first = Math.min(...pending.keys());
        oldest = oldest === null ? first : Math.min(oldest, first);
      }
    }
    // Keys this process already trimmed may still be on disk until their removal commits.
    if (tail && tail.head < tail.entries.length) {
      const keptFrom = tail.entries[tail.head]![0];
      oldest = oldest === null ? keptFrom : Math.max(oldest, keptFrom);
      for (const seq of [...bySeq.keys()]) if (seq < keptFrom) bySeq.delete(seq);
    }
    const events = [...bySeq.entries()].sort((a, b) => a[0] - b[0]).map(([, e]) => e);
    const missed = oldest !== null && oldest > since + 1 ? oldest - 1 : undefined;
    return missed === undefined ? { events, oldest } : { events, oldest, missed };
  }

  /** The last seq buffered for `name` (0 if none). */
  lastSeq(name: string): number {
    const pending = this.#unflushed.get(name);
    let last = pending?.size ? Math.max(...pending.keys()) : 0;
    if (!this.#store.closed) for (const key of this.#db.getKeys({ start: [name, MAX_SEQ], end: [name, 0], reverse: true, limit: 1 })) last = Math.max(last, (key as Key)[1]);
    return last;
  }

  /** Forgets every event of `name` (when the sandbox is removed). */
  async clear(name: string): Promise<void> {
    if (this.#store.closed) return;
    this.#clearSync(name);
  }

  #clearSync(name: string): void {
    this.#tails.delete(name);
    this.#unflushed.delete(name);
    this.#db.transactionSync(() => {
      for (const key of this.#db.getKeys({ start: [name, 0], end: [name, MAX_SEQ] })) this.#db.removeSync(key as Key);
    });
  }
}

/** A write that failed: the store is closing (E_CLOSED), said nothing of; else logged. The event still reaches live subscribers. */
function closing(err: unknown, e: SandboxEvent): Promise<void> {
  if ((err as CorralError).code !== 'E_CLOSED') logFailure(`recording event ${e.seq} of sandbox "${e.name}"`)(err);
  return DONE;
}

/** What an event costs the byte budget: its output bytes plus a flat overhead. */
function eventBytes(e: SandboxEvent): number {
  return 'data' in e && e.data instanceof Uint8Array ? e.data.byteLength + 64 : 256;
}
