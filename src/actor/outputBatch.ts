/**
 * Exec output on its way up as events. Every event costs the same whatever its size: a
 * postMessage to the supervisor's thread, its records in the store (a replay record and an
 * exec log entry), a publish; and a guest command that writes in small pieces (head and cat write 4–8
 * KiB at a time) makes thousands of them a second, most of the host's CPU per byte. So the
 * first chunk after a quiet spell goes on at once (an interactive command keeps its
 * latency), and chunks that follow within {@link BATCH_MS} are joined, in order, into one
 * event of at most {@link BATCH_BYTES} per exec and stream.
 */

/** The longest a chunk waits for company. */
export const BATCH_MS = 4;
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

  constructor(post: (type: OutputType, execId: number, data: Uint8Array) => void, clock: BatchClock = realClock) {
    this.#post = post;
    this.#clock = clock;
  }

  /** One chunk of output: posted now, or joined to the batch that goes within BATCH_MS. */
  add(type: OutputType, execId: number, data: Uint8Array): void {
    const p = this.#pending;
    if (p && (p.execId !== execId || p.type !== type)) this.flush();
    const now = this.#clock.now();
    if (!this.#pending && now - this.#lastAt >= BATCH_MS) {
      this.#lastAt = now;
      this.#post(type, execId, data);
      return;
    }
    const batch = (this.#pending ??= { execId, type, chunks: [], bytes: 0 });
    batch.chunks.push(data);
    batch.bytes += data.byteLength;
    if (batch.bytes >= BATCH_BYTES) return this.flush();
    this.#timer ??= this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, Math.max(0, this.#lastAt + BATCH_MS - now));
  }

  /** Posts what is held, as one event. */
  flush(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    const p = this.#pending;
    this.#pending = undefined;
    if (!p) return;
    this.#lastAt = this.#clock.now();
    this.#post(p.type, p.execId, p.chunks.length === 1 ? p.chunks[0]! : join(p.chunks, p.bytes));
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
