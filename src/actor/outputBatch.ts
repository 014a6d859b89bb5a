/**
 * Exec output on its way up as events. Every event costs the same whatever its size: a
 * postMessage to the supervisor's thread, its records in the store (a replay record and an
 * exec log entry), a publish; and a guest command that writes in small pieces (head and cat write 4–8
 * KiB at a time) makes thousands of them a second, most of the host's CPU per byte. So the
 * first chunk after a quiet spell goes on at once (an interactive command keeps its
 * latency), and chunks that follow within {@link BATCH_MS} are joined, in order, into one
 * event of at most {@link BATCH_BYTES} per exec and stream.
 *
 * A flood (a command writing as fast as the guest lets it) still made an event every 4 ms, of
 * ~45 KiB: ~1 ms of the host's CPU each, on 2 cores where the guest's vCPU needs one. So while
 * batches keep filling ({@link FLOOD_BYTES} or more in a window), the window doubles, up to
 * {@link MAX_BATCH_MS}; a batch that does not fill, or a quiet spell, sets it back. A chatty
 * command's small writes keep the short window; a flood's events carry up to BATCH_BYTES.
 */

/** The longest a chunk waits for company, outside a flood. */
export const BATCH_MS = 4;
/** The longest a chunk waits for company in a flood. */
export const MAX_BATCH_MS = 32;
/** A batch that holds this much when its window ends counts as a flood's. */
export const FLOOD_BYTES = 16 * 1024;
/** A batch this large goes on at once. */
export const BATCH_BYTES = 256 * 1024;

export type OutputType = 'exec.stdout' | 'exec.stderr';

/** Time and timers, injectable so that a test drives them. */
export interface BatchClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realClock: BatchClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

interface Pending {
  readonly execId: number;
  readonly type: OutputType;
  readonly chunks: Uint8Array[];
  bytes: number;
}

/**
 * @example
 * const batch = new OutputBatcher((type, execId, data) => post({ type, execId, data }));
 * batch.add('exec.stdout', 1, chunk); // ...
 * batch.flush(); // before any other event of the sandbox, so the order holds
 */
export class OutputBatcher {
  readonly #post: (type: OutputType, execId: number, data: Uint8Array) => void;
  readonly #clock: BatchClock;
  #pending: Pending | undefined;
  #timer: unknown;
  #lastAt = Number.NEGATIVE_INFINITY;
  /** The current window: BATCH_MS, doubled per filled batch of a flood up to MAX_BATCH_MS. */
  #window = BATCH_MS;

  constructor(post: (type: OutputType, execId: number, data: Uint8Array) => void, clock: BatchClock = realClock) {
    this.#post = post;
    this.#clock = clock;
  }

  /**
   * One chunk of output: posted now, or joined to the batch that goes within the window. The
   * chunk may be a view into a larger buffer (the port's read): what is posted is always a
   * Uint8Array of its own whole buffer, so the post can transfer it without a copy.
   */
  add(type: OutputType, execId: number, data: Uint8Array): void {
    const p = this.#pending;
    if (p && (p.execId !== execId || p.type !== type)) this.flush();
    const now = this.#clock.now();
    if (!this.#pending && now - this.#lastAt >= this.#window) {
      this.#window = BATCH_MS; // a quiet spell: whatever flood there was is over
      this.#lastAt = now;
      this.#post(type, execId, owned(data));
      return;
    }
    const batch = (this.#pending ??= { execId, type, chunks: [], bytes: 0 });
    batch.chunks.push(data);
    batch.bytes += data.byteLength;
    if (batch.bytes >= BATCH_BYTES) return this.flush();
    this.#timer ??= this.#clock.setTimeout(() => {
      this.#timer = undefined;
      const filled = (this.#pending?.bytes ?? 0) >= FLOOD_BYTES;
      this.flush();
      this.#window = filled ? Math.min(MAX_BATCH_MS, this.#window * 2) : BATCH_MS;
    }, Math.max(0, this.#lastAt + this.#window - now));
  }

  /** The window a chunk now waits in at most (for tests and diagnostics). */
  get windowMs(): number {
    return this.#window;
  }

  /** Posts what is held, as one event. */
  flush(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    const p = this.#pending;
    this.#pending = undefined;
    if (!p) return;
    this.#lastAt = this.#clock.now();
    this.#post(p.type, p.execId, p.chunks.length === 1 ? owned(p.chunks[0]!) : join(p.chunks, p.bytes));
  }
}

function join(chunks: readonly Uint8Array[], bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** `bytes` in an ArrayBuffer of their own: as they are when they already are, else copied. */
function owned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && !(bytes instanceof Buffer) ? bytes : Uint8Array.prototype.slice.call(bytes);
}
