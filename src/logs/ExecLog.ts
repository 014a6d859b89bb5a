/**
 * Exec logs: the output of every exec of every sandbox, kept in LMDB (sub-database `logs`,
 * keys `[name, n]` with `n` counting up across the sandbox's restarts), bounded per sandbox
 * by a count and a byte budget: the oldest entries are dropped first (rotation). The logs
 * outlive the sandbox's stop and are removed with the sandbox.
 */

import type { Database } from 'lmdb';
import { InvalidOptionError, type CorralError } from '../errors.ts';
import type { SandboxEvent } from '../bus/events.ts';
import type { Store } from '../store/Store.ts';
import { logFailure } from '../runtime/log.ts';

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

type Key = [string, number];
const DONE: Promise<void> = Promise.resolve();
/** The write of an event that carries no output. */
const written = (): Promise<void> => DONE;

/** A write that failed: the store is closing (E_CLOSED), said nothing of; else logged. Live subscribers still got the output. */
function closing(err: unknown, e: SandboxEvent): Promise<void> {
  if ((err as CorralError).code !== 'E_CLOSED') logFailure(`recording output of sandbox "${e.name}"`)(err);
  return DONE;
}
const MAX_N = Number.MAX_SAFE_INTEGER;

interface Totals {
  next: number;
  /** [n, bytes] of the kept entries, oldest first. */
  readonly entries: Array<[number, number]>;
  head: number;
  bytes: number;
}

/**
 * @example
 * const logs = new ExecLog(store);
 * logs.record(event);                       // exec.stdout / exec.stderr; others are ignored
 * logs.read('worker', { tail: 10 });
 */
export class ExecLog {
  readonly maxEntries: number;
  readonly maxBytes: number;
  readonly #store: Store;
  readonly #db: Database<LogEntry, Key>;
  readonly #totals = new Map<string, Totals>();
  readonly #unflushed = new Map<string, Map<number, LogEntry>>();

  constructor(store: Store, limits: ExecLogLimits = {}) {
    this.maxEntries = limits.maxEntries ?? 50_000;
    this.maxBytes = limits.maxBytes ?? 8 * 1024 * 1024;
    if (!Number.isInteger(this.maxEntries) || this.maxEntries < 1) throw new InvalidOptionError('logs.maxEntries', 'a positive integer', limits.maxEntries);
    if (!Number.isFinite(this.maxBytes) || this.maxBytes < 1) throw new InvalidOptionError('logs.maxBytes', 'a positive number of bytes', limits.maxBytes);
    this.#store = store;
    this.#db = store.database<LogEntry, Key>('logs');
  }

  /**
   * Records the output carried by an event; any other event is ignored. Never throws (nor
   * rejects). Resolves once the write is committed (or failed).
   */
  record(e: SandboxEvent): Promise<void> {
    return this.stage(e)();
  }

  /**
   * {@link record} in two steps: the output is in this process's view of the log (reads see
   * it) when this returns, and on disk once the returned write is called and resolves. The
   * supervisor publishes the event between the two. Never throws; the write never rejects.
   */
  stage(e: SandboxEvent): () => Promise<void> {
    if ((e.type !== 'exec.stdout' && e.type !== 'exec.stderr') || this.#store.closed) return written;
    try {
      const t = this.#totalsOf(e.name);
      const n = t.next++;
      const entry: LogEntry = { ts: e.ts, execId: e.execId, stream: e.type === 'exec.stdout' ? 'stdout' : 'stderr', data: e.data };
      t.entries.push([n, e.data.byteLength]);
      t.bytes += e.data.byteLength;
      let pending = this.#unflushed.get(e.name);
      if (!pending) this.#unflushed.set(e.name, (pending = new Map()));
      pending.set(n, entry);
      const rotated: number[] = [];
      while (t.entries.length - t.head > this.maxEntries || (t.bytes > this.maxBytes && t.entries.length - t.head > 1)) {
        const [old, bytes] = t.entries[t.head++]!;
        t.bytes -= bytes;
        pending.delete(old);
        rotated.push(old);
      }
      if (t.head > 4096) {
        t.entries.splice(0, t.head);
        t.head = 0;
      }
      return () => {
        if (this.#store.closed) return DONE;
        try {
          const put = this.#db.put([e.name, n], entry).then(
            () => void (pending.get(n) === entry && pending.delete(n)),
            logFailure(`writing output of exec ${e.execId} of sandbox "${e.name}" to the exec log`),
          );
          for (const old of rotated) void this.#db.remove([e.name, old]).catch(logFailure(`rotating the exec log of sandbox "${e.name}"`));
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
    const from = (options.after ?? 0) + 1;
    const byN = new Map<number, LogEntry>();
    if (!this.#store.closed) for (const { key, value } of this.#db.getRange({ start: [name, from], end: [name, MAX_N] })) byN.set(key[1], value);
    for (const [n, e] of this.#unflushed.get(name) ?? []) if (n >= from) byN.set(n, e);
    const t = this.#totals.get(name);
    const keptFrom = t && t.head < t.entries.length ? t.entries[t.head]![0] : 0;
    let out = [...byN.entries()]
      .filter(([n, e]) => n >= keptFrom && (since === undefined || e.ts >= since) && (options.execId === undefined || e.execId === options.execId))
      .sort((a, b) => a[0] - b[0]);
    if (options.tail !== undefined) out = options.tail === 0 ? [] : out.slice(-options.tail);
    return out;
  }

  /** Forgets every entry of `name` (when the sandbox is removed). */
  async clear(name: string): Promise<void> {
    this.#totals.delete(name);
    this.#unflushed.delete(name);
    if (this.#store.closed) return;
    await this.#db.transaction(() => {
      for (const key of this.#db.getKeys({ start: [name, 0], end: [name, MAX_N] })) this.#db.removeSync(key as Key);
    });
  }

  /** The counters of a sandbox, read once from what earlier processes left. */
  #totalsOf(name: string): Totals {
    let t = this.#totals.get(name);
    if (t) return t;
    t = { next: 1, entries: [], head: 0, bytes: 0 };
    for (const { key, value } of this.#db.getRange({ start: [name, 0], end: [name, MAX_N] })) {
      t.entries.push([key[1], value.data.byteLength]);
      t.bytes += value.data.byteLength;
      t.next = key[1] + 1;
    }
    this.#totals.set(name, t);
    return t;
  }
}
