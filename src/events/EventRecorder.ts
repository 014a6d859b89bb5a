/**
 * Writes one sandbox's events into the state dir, from the thread that makes them (the
 * worker hosting the sandbox's actor), so the supervisor's thread does no store write per
 * event. Each event goes into the replay buffer (sub-database `events`, keys `[name, seq]`);
 * each chunk of output is written once, as an exec log entry (sub-database `logs`, keys
 * `[name, n]`), and the replay buffer's record of it refers to that entry ({@link OutputRef})
 * instead of holding the bytes a second time. An entry is deleted once it is out of both
 * windows: the exec log's and, while a replay record refers to it, the replay buffer's.
 *
 * The writes of one event turn are one LMDB transaction (lmdb-js batches them); within it the
 * log entry comes before the record that refers to it, and deletions come last, so a store
 * left by a killed process never refers to an entry it lacks.
 */

import type { Database } from 'lmdb';
import type { SandboxEvent } from '../bus/events.ts';
import type { CorralError } from '../errors.ts';
import type { LogEntry, UnwrittenLog } from '../logs/ExecLog.ts';
import { logFailure } from '../runtime/log.ts';
import type { Store } from '../store/Store.ts';
import { RetentionWindow } from './RetentionWindow.ts';

/** The replay buffer's record of an output event: its bytes are in the exec log's entry `log`. */
export interface OutputRef {
  readonly type: 'exec.stdout' | 'exec.stderr';
  readonly name: string;
  readonly seq: number;
  readonly ts: number;
  readonly execId: number;
  /** The exec log entry holding the bytes. */
  readonly log: number;
  /** How many bytes it holds. */
  readonly bytes: number;
}

/** What the `events` sub-database holds: an event, or for output a reference to its log entry. */
export type StoredEvent = SandboxEvent | OutputRef;

/** Bounds of both buffers, resolved (see `ReplayLimits` and `ExecLogLimits`). */
export interface RecordLimits {
  readonly replay: { readonly maxEvents: number; readonly maxBytes: number };
  readonly logs: { readonly maxEntries: number; readonly maxBytes: number };
}

/**
 * Events of a sandbox handed to the store and not committed there yet: a reader in the same
 * process joins them to what it reads from the store. The recorder is one (its own writes);
 * the supervisor keeps one per sandbox for the events it received from the sandbox's worker.
 */
export interface UnwrittenEvents extends UnwrittenLog {
  /** The events not committed yet, oldest first. */
  events(): readonly SandboxEvent[];
  /** The oldest seq the replay buffer keeps; older records may still be in the store until their removal commits. */
  readonly replayFrom: number;
  /**
   * The last seq handed on (published, for the supervisor's): the store may already hold
   * later ones, which a reader that goes live next would then get twice.
   */
  readonly last: number;
  /** Nothing of this life is committed yet: the store's events of this name are an earlier life's. */
  readonly fresh: boolean;
}

type Key = [string, number];
const MAX = Number.MAX_SAFE_INTEGER;
/** What an event that carries no output costs the replay byte budget. */
export const EVENT_BYTES = 256;
/** What an output event costs it besides its bytes. */
export const OUTPUT_EVENT_BYTES = 64;

interface Unwritten {
  readonly e: SandboxEvent;
  readonly log: number | undefined;
}

/**
 * @example
 * const rec = new EventRecorder(store, 'worker', limits, (seq) => Atomics.store(written, 0, BigInt(seq)));
 * const n = rec.record(event); // the exec log number of its output, if it has some
 * await rec.flushed();
 */
export class EventRecorder implements UnwrittenEvents {
  readonly name: string;
  readonly #store: Store;
  readonly #events: Database<StoredEvent, Key>;
  readonly #logs: Database<LogEntry, Key>;
  readonly #limits: RecordLimits;
  readonly #onCommitted: ((seq: number) => void) | undefined;
  #replay: RetentionWindow | undefined;
  #log: RetentionWindow | undefined;
  /** Log numbers referred to by the replay window's output records, oldest first (from #refHead). */
  readonly #refs: number[] = [];
  #refHead = 0;
  /** Seqs in the replay window that refer to a log entry, in step with #refs. */
  readonly #refSeqs = new Set<number>();
  #nextLog = 1;
  /** Log entries below this are deleted (or their deletion is queued). */
  #deletedBelow = 1;
  readonly #unwritten: Unwritten[] = [];
  #unwrittenBytes = 0;
  #committed = 0;
  #firstSeq = 0;
  #lastSeq = 0;
  #last: Promise<unknown> = Promise.resolve();

  /** @param onCommitted called with the seq of each event once its records are committed */
  constructor(store: Store, name: string, limits: RecordLimits, onCommitted?: (seq: number) => void) {
    this.name = name;
    this.#store = store;
    this.#events = store.database<StoredEvent, Key>('events');
    this.#logs = store.database<LogEntry, Key>('logs');
    this.#limits = limits;
    this.#onCommitted = onCommitted;
  }

  /**
   * Records `e` (an event of this recorder's sandbox, in seq order): its writes are queued
   * now, and its bytes copied into the write, so the caller may transfer them away next.
   * Returns the exec log number of its output, if it has output. `log` numbers the entry
   * instead (a supervisor writing what a dead worker had numbered). Never throws.
   */
  record(e: SandboxEvent, log?: number): number | undefined {
    if (e.type === 'stream.gap' || this.#store.closed) return undefined;
    try {
      this.#open(e.seq);
      const output = e.type === 'exec.stdout' || e.type === 'exec.stderr';
      // Already in the windows (read back at the start): written again, counted once.
      const known = e.seq <= this.#lastSeq;
      this.#lastSeq = Math.max(this.#lastSeq, e.seq);
      let n: number | undefined;
      let stored: StoredEvent = e;
      if (output) {
        n = log ?? this.#nextLog;
        this.#nextLog = Math.max(this.#nextLog, n + 1);
        // Its failure is the event's too (one transaction): logged once, below.
        this.#logs.put([this.name, n], logEntryOf(e)).catch(() => {});
        stored = { type: e.type, name: e.name, seq: e.seq, ts: e.ts, execId: e.execId, log: n, bytes: e.data.byteLength };
      }
      const put = this.#events.put([this.name, e.seq], stored);
      const bytes = output ? e.data.byteLength : 0;
      this.#unwritten.push({ e, log: n });
      this.#unwrittenBytes += bytes;
      if (!known) this.#trim(e.seq, output ? bytes + OUTPUT_EVENT_BYTES : EVENT_BYTES, n, bytes);
      this.#last = put.then(
        () => this.#committedUpTo(e.seq, bytes),
        (err: unknown) => {
          this.#committedUpTo(e.seq, bytes);
          failed(err, e);
        },
      );
      return n;
    } catch (err) {
      failed(err, e);
      return undefined;
    }
  }

  /** Output bytes recorded and not committed yet (the actor's flow control counts them). */
  get unwrittenBytes(): number {
    return this.#unwrittenBytes;
  }

  /** The seq of the last event whose records are committed (0: none of this life). */
  get committed(): number {
    return this.#committed;
  }

  /** Resolves once everything recorded so far is committed (or failed, which is logged). */
  async flushed(): Promise<void> {
    await this.#last;
  }

  events(): readonly SandboxEvent[] {
    return this.#unwritten.map((u) => u.e);
  }

  logEntries(): ReadonlyArray<readonly [number, LogEntry]> {
    const out: Array<readonly [number, LogEntry]> = [];
    for (const { e, log } of this.#unwritten) if (log !== undefined) out.push([log, logEntryOf(e)]);
    return out;
  }

  get replayFrom(): number {
    return this.#replay?.oldest ?? 0;
  }

  get fresh(): boolean {
    return this.#firstSeq === 1 && this.#committed === 0;
  }

  get last(): number {
    return this.#lastSeq;
  }

  #committedUpTo(seq: number, bytes: number): void {
    this.#unwrittenBytes -= bytes;
    this.#committed = Math.max(this.#committed, seq);
    while (this.#unwritten.length > 0 && this.#unwritten[0]!.e.seq <= this.#committed) this.#unwritten.shift();
    this.#onCommitted?.(seq);
  }

  /**
   * The windows, at the first event: a new life (seq 1) drops the replay buffer of the last
   * one; a life recorded on (a supervisor finishing a dead worker's writes) reads it back.
   * The exec log goes on across lives: its entries are read back either way.
   */
  #open(seq: number): void {
    if (this.#replay) return;
    const { replay, logs } = this.#limits;
    this.#firstSeq = seq;
    this.#replay = new RetentionWindow(replay.maxEvents, replay.maxBytes);
    this.#log = new RetentionWindow(logs.maxEntries, logs.maxBytes);
    const range = { start: [this.name, 0] as Key, end: [this.name, MAX] as Key };
    let first = true;
    for (const { key, value } of this.#logs.getRange(range)) {
      if (first) this.#deletedBelow = key[1];
      first = false;
      this.#log.push(key[1], value.data.byteLength);
      this.#nextLog = key[1] + 1;
    }
    for (const { key, value } of this.#events.getRange(range)) {
      if (seq === 1) {
        void this.#events.remove(key);
        continue;
      }
      const ref = 'log' in value ? value.log : undefined;
      this.#pushReplay(key[1], eventBytes(value), ref);
      this.#lastSeq = key[1];
    }
  }

  /** Takes `seq` into the replay window and the log window, and deletes what fell out of both. */
  #trim(seq: number, replayBytes: number, log: number | undefined, logBytes: number): void {
    this.#pushReplay(seq, replayBytes, log);
    if (log !== undefined) this.#log!.push(log, logBytes);
    const keepFrom = Math.min(this.#log!.oldest ?? this.#nextLog, this.#refs[this.#refHead] ?? this.#nextLog);
    for (; this.#deletedBelow < keepFrom; this.#deletedBelow++) {
      void this.#logs.remove([this.name, this.#deletedBelow]).catch(logFailure(`rotating the exec log of sandbox "${this.name}"`));
    }
  }

  #pushReplay(seq: number, bytes: number, log: number | undefined): void {
    if (log !== undefined) {
      this.#refs.push(log);
      this.#refSeqs.add(seq);
    }
    for (const old of this.#replay!.push(seq, bytes)) {
      void this.#events.remove([this.name, old]).catch(logFailure(`trimming event ${old} of sandbox "${this.name}" from the replay log`));
      if (this.#refSeqs.delete(old)) this.#refHead++;
    }
    if (this.#refHead > 4096) {
      this.#refs.splice(0, this.#refHead);
      this.#refHead = 0;
    }
  }
}

/** The exec log entry of an output event. */
export function logEntryOf(e: SandboxEvent): LogEntry {
  if (e.type !== 'exec.stdout' && e.type !== 'exec.stderr') throw new TypeError(`${e.type} carries no output`);
  return { ts: e.ts, execId: e.execId, stream: e.type === 'exec.stdout' ? 'stdout' : 'stderr', data: e.data };
}

/** What a stored event costs the replay byte budget: its output bytes plus a flat overhead. */
export function eventBytes(e: StoredEvent): number {
  if ('log' in e) return e.bytes + OUTPUT_EVENT_BYTES;
  return 'data' in e && e.data instanceof Uint8Array ? e.data.byteLength + OUTPUT_EVENT_BYTES : EVENT_BYTES;
}

/** A write that failed: the store is closing (E_CLOSED), said nothing of; else logged. The event still reaches live subscribers. */
function failed(err: unknown, e: SandboxEvent): void {
  if ((err as CorralError).code !== 'E_CLOSED') logFailure(`recording event ${e.seq} of sandbox "${e.name}"`)(err);
}
