/**
 * The replay buffer: every event of every sandbox, kept in LMDB (sub-database `events`,
 * keys `[name, seq]`), bounded per sandbox by a count and a byte budget. A subscriber that
 * lost its connection resumes from the last `seq` it saw and gets the rest exactly once.
 *
 * The thread that hosts a sandbox's actor writes its events (src/events/EventRecorder.ts,
 * which also trims the buffer); the output of an output event is read from the exec log
 * entry its record refers to. Any process that opens the same state dir reads what is
 * committed; a reader in the supervisor's process also sees the events it received and
 * whose records are not committed yet (its {@link UnwrittenEvents}). A new actor life (a
 * restart numbers its events from 1 again) starts a new buffer.
 */

import type { Database } from 'lmdb';
import { InvalidOptionError } from '../errors.ts';
import type { SandboxEvent } from '../bus/events.ts';
import type { LogEntry } from '../logs/ExecLog.ts';
import type { Store } from '../store/Store.ts';
import type { StoredEvent, UnwrittenEvents } from './EventRecorder.ts';

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
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/**
 * The bounds of a replay buffer, with their defaults; throws E_INVALID_OPTION for a bad one.
 *
 * @example
 * replayLimits({ maxEvents: 1000 }) // → { maxEvents: 1000, maxBytes: 16777216 }
 */
export function replayLimits(limits: ReplayLimits = {}): Required<ReplayLimits> {
  const maxEvents = limits.maxEvents ?? 10_000;
  const maxBytes = limits.maxBytes ?? 16 * 1024 * 1024;
  if (!Number.isInteger(maxEvents) || maxEvents < 1) throw new InvalidOptionError('replay.maxEvents', 'a positive integer', limits.maxEvents);
  if (!Number.isFinite(maxBytes) || maxBytes < 1024) throw new InvalidOptionError('replay.maxBytes', 'at least 1024', limits.maxBytes);
  return { maxEvents, maxBytes };
}

/**
 * @example
 * const log = new ReplayLog(store, (name) => unwritten.get(name));
 * const { events, missed } = log.read('worker', 42);
 */
export class ReplayLog {
  readonly #store: Store;
  readonly #db: Database<StoredEvent, Key>;
  readonly #logs: Database<LogEntry, Key>;
  readonly #unwritten: (name: string) => UnwrittenEvents | undefined;

  /** @param unwritten the events of a sandbox this process has and the store may not have yet */
  constructor(store: Store, unwritten: (name: string) => UnwrittenEvents | undefined = () => undefined) {
    this.#store = store;
    this.#db = store.database<StoredEvent, Key>('events');
    this.#logs = store.database<LogEntry, Key>('logs');
    this.#unwritten = unwritten;
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
    const pending = this.#unwritten(name);
    // Taken before the store is read: what left it since is committed, and a fresh read
    // transaction (the one this thread holds may predate that commit) sees it there.
    const unwritten = pending?.events() ?? [];
    const keptFrom = pending?.replayFrom ?? 0;
    // The worker writes an event before the supervisor publishes it: what it did not publish
    // yet, a reader here gets live.
    const upTo = pending ? pending.last : MAX_SEQ;
    if (!this.#store.closed && !pending?.fresh) {
      if (pending) this.#db.resetReadTxn();
      for (const key of this.#db.getKeys({ start: [name, keptFrom], end: [name, upTo + 1], limit: 1 })) oldest = (key as Key)[1];
      for (const { key, value } of this.#db.getRange({ start: [name, Math.max(since + 1, keptFrom)], end: [name, upTo + 1] })) {
        const e = this.#resolve(value);
        if (!e) {
          // Its output is gone (a store written by a process killed mid-rotation): the
          // buffer starts after it.
          bySeq.clear();
          oldest = key[1] + 1;
          continue;
        }
        bySeq.set(key[1], e);
      }
    }
    for (const e of unwritten) {
      if (e.seq < keptFrom) continue;
      if (e.seq > since) bySeq.set(e.seq, e);
      oldest = oldest === null ? e.seq : Math.min(oldest, e.seq);
    }
    const events = [...bySeq.entries()].sort((a, b) => a[0] - b[0]).map(([, e]) => e);
    const missed = oldest !== null && oldest > since + 1 ? oldest - 1 : undefined;
    return missed === undefined ? { events, oldest } : { events, oldest, missed };
  }

  /** Forgets every event of `name` (when the sandbox is removed). */
  async clear(name: string): Promise<void> {
    if (this.#store.closed) return;
    await this.#db.transaction(() => {
      for (const key of this.#db.getKeys({ start: [name, 0], end: [name, MAX_SEQ] })) this.#db.removeSync(key as Key);
    });
  }

  /** A stored event as it was made: an output record gets its bytes back from the exec log. */
  #resolve(value: StoredEvent): SandboxEvent | undefined {
    if (!('log' in value)) return value;
    const entry = this.#logs.get([value.name, value.log]);
    if (!entry) return undefined;
    return { type: value.type, name: value.name, seq: value.seq, ts: value.ts, execId: value.execId, data: entry.data };
  }
}
