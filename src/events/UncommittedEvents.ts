/**
 * The events the supervisor received from a sandbox's worker whose records that worker has
 * not committed yet (src/events/EventRecorder.ts writes them there): a read of the replay
 * buffer or the exec log in the supervisor's process joins them to what it reads from the
 * store, so an event is readable from the moment it is published. The worker says how far it
 * committed in a shared counter; what is committed is dropped from here.
 */

import type { SandboxEvent } from '../bus/events.ts';
import type { LogEntry } from '../logs/ExecLog.ts';
import { logEntryOf, type UnwrittenEvents } from './EventRecorder.ts';

/** How often held output is dropped once committed, when no new event comes to do it. */
const PRUNE_MS = 50;

interface Held {
  readonly e: SandboxEvent;
  readonly log: number | undefined;
}

/**
 * @example
 * const written = new BigInt64Array(new SharedArrayBuffer(8)); // the worker stores committed seqs here
 * const held = new UncommittedEvents(written);
 * held.add(event, envelope.log, envelope.replayFrom); // before the event is published
 */
export class UncommittedEvents implements UnwrittenEvents {
  readonly #written: BigInt64Array;
  readonly #held: Held[] = [];
  #head = 0;
  #heldBytes = 0;
  #firstSeq = 0;
  #last = 0;
  #replayFrom = 0;
  #timer: NodeJS.Timeout | undefined;

  /** @param written `[0]`: the seq of the last event whose records the worker committed */
  constructor(written: BigInt64Array) {
    this.#written = written;
  }

  /** The worker's `event` (its exec log number, and where its replay buffer starts once it is in). */
  add(e: SandboxEvent, log: number | undefined, replayFrom: number): void {
    if (this.#firstSeq === 0) this.#firstSeq = e.seq;
    this.#last = Math.max(this.#last, e.seq);
    this.#replayFrom = replayFrom;
    this.#prune();
    this.#held.push({ e, log });
    if (log !== undefined) this.#heldBytes += outputBytes(e);
    // Output bytes are worth dropping soon; a few small events wait for the next one.
    if (this.#heldBytes > 0) this.#timer ??= setTimeout(() => this.#onTimer(), PRUNE_MS).unref();
  }

  /** The seq of the last event whose records the worker committed. */
  get committed(): number {
    return Number(Atomics.load(this.#written, 0));
  }

  /** Says that the records of the events up to `seq` are committed (written by someone else than the worker). */
  markCommitted(seq: number): void {
    if (seq > this.committed) Atomics.store(this.#written, 0, BigInt(seq));
  }

  /** The seq of the last event received (and published). */
  get last(): number {
    return this.#last;
  }

  get replayFrom(): number {
    return this.#replayFrom;
  }

  get fresh(): boolean {
    return this.#firstSeq === 1 && this.committed === 0;
  }

  events(): readonly SandboxEvent[] {
    this.#prune();
    return this.#held.slice(this.#head).map((h) => h.e);
  }

  logEntries(): ReadonlyArray<readonly [number, LogEntry]> {
    this.#prune();
    const out: Array<readonly [number, LogEntry]> = [];
    for (let i = this.#head; i < this.#held.length; i++) {
      const { e, log } = this.#held[i]!;
      if (log !== undefined) out.push([log, logEntryOf(e)]);
    }
    return out;
  }

  /** The events still not committed, with their log numbers, oldest first (for writing them here). */
  uncommitted(): ReadonlyArray<{ readonly e: SandboxEvent; readonly log: number | undefined }> {
    this.#prune();
    return this.#held.slice(this.#head);
  }

  /**
   * Resolves true once every event received is committed, false if that did not happen
   * within `timeoutMs` (the worker is gone or stuck: the caller writes the rest itself).
   */
  async settled(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (this.committed < this.#last) {
      if (performance.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 2));
    }
    this.#prune();
    return true;
  }

  /** Stops the pruning timer. Idempotent. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #onTimer(): void {
    this.#timer = undefined;
    this.#prune();
    if (this.#heldBytes > 0) this.#timer = setTimeout(() => this.#onTimer(), PRUNE_MS).unref();
  }

  #prune(): void {
    const committed = this.committed;
    while (this.#head < this.#held.length && this.#held[this.#head]!.e.seq <= committed) {
      const { e, log } = this.#held[this.#head++]!;
      if (log !== undefined) this.#heldBytes -= outputBytes(e);
    }
    if (this.#head === this.#held.length) {
      this.#held.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#held.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

function outputBytes(e: SandboxEvent): number {
  return 'data' in e && e.data instanceof Uint8Array ? e.data.byteLength : 0;
}
