/**
 * What a sandbox's bounded buffer keeps: its newest entries, at most `maxCount` of them and
 * `maxBytes` bytes, and always the newest one. The replay buffer keeps one window of events
 * (by seq), the exec log one of output chunks (by number); src/events/EventRecorder.ts
 * deletes what falls out of both.
 */

/**
 * @example
 * const w = new RetentionWindow(2, 1024);
 * w.push(1, 10); w.push(2, 10);
 * w.push(3, 10); // → [1]: the oldest went out
 */
export class RetentionWindow {
  readonly #entries: Array<[key: number, bytes: number]> = [];
  #head = 0;
  #bytes = 0;

  constructor(
    readonly maxCount: number,
    readonly maxBytes: number,
  ) {}

  /** Adds the newest entry; returns the keys that went out to make room, oldest first. */
  push(key: number, bytes: number): number[] {
    this.#entries.push([key, bytes]);
    this.#bytes += bytes;
    const out: number[] = [];
    while (this.size > this.maxCount || (this.#bytes > this.maxBytes && this.size > 1)) {
      const [old, size] = this.#entries[this.#head++]!;
      this.#bytes -= size;
      out.push(old);
    }
    if (this.#head > 4096) {
      this.#entries.splice(0, this.#head);
      this.#head = 0;
    }
    return out;
  }

  /** The oldest key kept, or undefined when the window is empty. */
  get oldest(): number | undefined {
    return this.#entries[this.#head]?.[0];
  }

  /** Entries kept. */
  get size(): number {
    return this.#entries.length - this.#head;
  }
}
