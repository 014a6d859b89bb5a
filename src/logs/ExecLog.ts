/**
 * Exec logs: the output of every exec of every sandbox, kept in LMDB (sub-database `logs`,
 * keys `[name, n]` with `n` counting up across the sandbox's restarts), bounded per sandbox
 * by a count and a byte budget: the oldest entries are dropped first (rotation). The logs
 * outlive the sandbox's stop and are removed with the sandbox.
 *
 * The thread that hosts a sandbox's actor writes them (src/events/EventRecorder.ts): each
 * chunk once, which the replay buffer's record of the output event refers to. The store may
 * so hold older entries than this log's window (the replay buffer still needs them): a read
 * keeps the window, the newest entries within the budget.
 */

import type { Database } from 'lmdb';
import { InvalidOptionError } from '../errors.ts';
import type { Store } from '../store/Store.ts';

/** One chunk of output. */
export interface LogEntry {
  /** Wall clock (ms since the epoch) when the host received it. */
  readonly ts: number;
  readonly execId: number;
  readonly stream: 'stdout' | 'stderr';
  readonly data: Uint8Array;
}

/** Bounds of an {@link ExecLog}, per sandbox. */
export interface ExecLogLimits {
  /** Most output chunks kept per sandbox. Default 50 000. */
  readonly maxEntries?: number;
  /** Most output bytes kept per sandbox. Default 8 MiB. */
  readonly maxBytes?: number;
}

/** Options of {@link ExecLog.read} (and `sandbox.logs()`). */
export interface LogsOptions {
  /** Only entries at or after this time (ms since the epoch, or a Date). */
  readonly since?: number | Date;
  /** Only the last this many entries (after `since`). */
  readonly tail?: number;
  /** Only the output of this exec. */
  readonly execId?: number;
}

/**
 * Output of a sandbox that this process has and whose entries the store may not have yet
 * (see `UnwrittenEvents` in src/events/EventRecorder.ts).
 */
export interface UnwrittenLog {
  /** The entries not committed yet, oldest first. */
  logEntries(): ReadonlyArray<readonly [number, LogEntry]>;
}

type Key = [string, number];
const MAX_N = Number.MAX_SAFE_INTEGER;

/**
 * The bounds of an exec log, with their defaults; throws E_INVALID_OPTION for a bad one.
 *
 * @example
 * execLogLimits({ maxBytes: 1 << 20 }) // → { maxEntries: 50000, maxBytes: 1048576 }
 */
export function execLogLimits(limits: ExecLogLimits = {}): Required<ExecLogLimits> {
  const maxEntries = limits.maxEntries ?? 50_000;
  const maxBytes = limits.maxBytes ?? 8 * 1024 * 1024;
  if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new InvalidOptionError('logs.maxEntries', 'a positive integer', limits.maxEntries);
  if (!Number.isFinite(maxBytes) || maxBytes < 1) throw new InvalidOptionError('logs.maxBytes', 'a positive number of bytes', limits.maxBytes);
  return { maxEntries, maxBytes };
}

/**
 * @example
 * const logs = new ExecLog(store);
 * logs.read('worker', { tail: 10 });
 */
export class ExecLog {
  readonly maxEntries: number;
  readonly maxBytes: number;
  readonly #store: Store;
  readonly #db: Database<LogEntry, Key>;
  readonly #unwritten: (name: string) => UnwrittenLog | undefined;

  /** @param unwritten the events of a sandbox this process has and the store may not have yet */
  constructor(store: Store, limits: ExecLogLimits = {}, unwritten: (name: string) => UnwrittenLog | undefined = () => undefined) {
    ({ maxEntries: this.maxEntries, maxBytes: this.maxBytes } = execLogLimits(limits));
    this.#store = store;
    this.#db = store.database<LogEntry, Key>('logs');
    this.#unwritten = unwritten;
  }

  /**
   * The recorded output of `name`, oldest first.
   *
   * @example
   * const text = log.read('worker', { tail: 20 }).map((e) => Buffer.from(e.data).toString()).join('');
   */
  read(name: string, options: LogsOptions = {}): LogEntry[] {
    return this.readNumbered(name, options).map(([, e]) => e);
  }

  /**
   * Like {@link read}, each entry with its number; numbers only grow, so a follower passes the
   * last number it saw as `after` and gets exactly the entries recorded since.
   */
  readNumbered(name: string, options: LogsOptions & { readonly after?: number } = {}): Array<[number, LogEntry]> {
    const since = options.since instanceof Date ? options.since.getTime() : options.since;
    if (options.tail !== undefined && (!Number.isInteger(options.tail) || options.tail < 0)) throw new RangeError(`tail must be a non-negative integer (got ${options.tail})`);
    const after = options.after ?? 0;
    // Newest first, each number once: the entries not committed yet (taken before the store
    // is read, so a fresh read transaction sees what left them), then the store's.
    const pending = this.#unwritten(name);
    const newest: Array<[number, LogEntry]> = (pending?.logEntries() ?? []).filter(([n]) => n > after).map(([n, e]) => [n, e] as [number, LogEntry]).reverse();
    const below = newest.at(-1)?.[0] ?? MAX_N;
    let bytes = 0;
    let kept = 0;
    const fits = (size: number) => kept < this.maxEntries && (kept === 0 || bytes + size <= this.maxBytes);
    const window: Array<[number, LogEntry]> = [];
    for (const [n, e] of newest) {
      if (!fits(e.data.byteLength)) break;
      bytes += e.data.byteLength;
      kept++;
      window.push([n, e]);
    }
    if (!this.#store.closed && window.length === newest.length) {
      if (pending) this.#db.resetReadTxn();
      for (const { key, value } of this.#db.getRange({ start: [name, below - 1], end: [name, after], reverse: true })) {
        if (key[1] >= below) continue;
        if (!fits(value.data.byteLength)) break;
        bytes += value.data.byteLength;
        kept++;
        window.push([key[1], value]);
      }
    }
    let out = window.reverse().filter(([, e]) => (since === undefined || e.ts >= since) && (options.execId === undefined || e.execId === options.execId));
    if (options.tail !== undefined) out = options.tail === 0 ? [] : out.slice(-options.tail);
    return out;
  }

  /** Forgets every entry of `name` (when the sandbox is removed). */
  async clear(name: string): Promise<void> {
    if (this.#store.closed) return;
    await this.#db.transaction(() => {
      for (const key of this.#db.getKeys({ start: [name, 0], end: [name, MAX_N] })) this.#db.removeSync(key as Key);
    });
  }
}
