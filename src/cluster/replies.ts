/**
 * At-most-once answers for requests that are asked again.
 *
 * NATS request/reply is at most once: a request or its answer can be lost (a route between
 * servers that reconnects, a server that restarts), and a caller that waits without a bound
 * waits for ever. So a client asks again, with the same request id (the {@link REQUEST_ID_HEADER}
 * header), until its own deadline; and a node does each request id's work once: a repeat of
 * one in flight gets the same answer when it comes, a repeat of one answered a moment ago gets
 * that answer again. A repeat of one whose answer was dropped (too old, or too many bytes
 * kept) is refused with E_CLUSTER rather than done twice.
 */

import { CorralError } from '../errors.ts';
import { errorReply } from './protocol.ts';

/** The header a request carries its id in (the same id on every attempt). */
export const REQUEST_ID_HEADER = 'Corral-Request-Id';

/** Limits of a {@link ReplyCache}. */
export interface ReplyCacheLimits {
  /** How long an answer is kept for a repeat. Default 120 s (many attempts of a client). */
  readonly keepMs?: number;
  /** Most bytes of answers kept; the oldest go first. Default 64 MiB. */
  readonly maxBytes?: number;
  /** Most ids remembered as answered once their answer is gone. Default 65536. */
  readonly maxForgotten?: number;
}

interface Kept {
  readonly reply: Uint8Array;
  readonly at: number;
}

/**
 * @example
 * const replies = new ReplyCache();
 * const answer = await replies.answer(rid, () => doTheWork());   // a repeat of rid joins it
 */
export class ReplyCache {
  readonly #keepMs: number;
  readonly #maxBytes: number;
  readonly #maxForgotten: number;
  readonly #inflight = new Map<string, Promise<Uint8Array>>();
  /** Answered, oldest first (a Map keeps insertion order). */
  readonly #kept = new Map<string, Kept>();
  /** Answered, their answer no longer kept: oldest first. */
  readonly #forgotten = new Set<string>();
  #bytes = 0;

  constructor(limits: ReplyCacheLimits = {}, private readonly now: () => number = Date.now) {
    this.#keepMs = limits.keepMs ?? 120_000;
    this.#maxBytes = limits.maxBytes ?? 64 * 2 ** 20;
    this.#maxForgotten = limits.maxForgotten ?? 65_536;
  }

  /** Requests in flight, answers kept (for tests and metrics). */
  get size(): { inflight: number; kept: number; bytes: number; forgotten: number } {
    return { inflight: this.#inflight.size, kept: this.#kept.size, bytes: this.#bytes, forgotten: this.#forgotten.size };
  }

  /**
   * The answer to request `id`: `work()`'s the first time, the same one for a repeat. `id`
   * undefined (a client that sends none): `work()` every time.
   */
  answer(id: string | undefined, work: () => Promise<Uint8Array>): Promise<Uint8Array> {
    if (id === undefined) return work();
    this.#expire();
    const kept = this.#kept.get(id);
    if (kept) return Promise.resolve(kept.reply);
    const running = this.#inflight.get(id);
    if (running) return running;
    if (this.#forgotten.has(id)) {
      return Promise.resolve(errorReply(new CorralError('E_CLUSTER', `request ${id} was answered already and its answer is no longer kept: it is not done twice`, { details: { requestId: id } })));
    }
    const p = work()
      .catch((err: unknown) => errorReply(err))
      .then((reply) => {
        this.#inflight.delete(id);
        this.#keep(id, reply);
        return reply;
      });
    this.#inflight.set(id, p);
    return p;
  }

  #keep(id: string, reply: Uint8Array): void {
    this.#kept.set(id, { reply, at: this.now() });
    this.#bytes += reply.byteLength;
    while (this.#bytes > this.#maxBytes && this.#kept.size > 0) this.#forget(this.#kept.keys().next().value!);
  }

  #expire(): void {
    const before = this.now() - this.#keepMs;
    for (const [id, k] of this.#kept) {
      if (k.at > before) break;
      this.#forget(id);
    }
  }

  #forget(id: string): void {
    const k = this.#kept.get(id);
    if (!k) return;
    this.#kept.delete(id);
    this.#bytes -= k.reply.byteLength;
    this.#forgotten.add(id);
    if (this.#forgotten.size > this.#maxForgotten) this.#forgotten.delete(this.#forgotten.values().next().value!);
  }
}
