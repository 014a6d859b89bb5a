/**
 * A cluster node's sandbox answering its plain calls ({@link WORKER_CALLS}: exec, stdin, fs…)
 * in the worker thread that hosts it, on that thread's own NATS connection (the one its
 * events leave on), under `corral.node.<node>.sandbox.<name>.<method>`. Through the node's
 * main thread, each call woke that thread and then the worker: one hop more on the way in
 * and on the way back (README, Running on many machines → Bench).
 *
 * The node's main thread answers every other call, and these too where nobody answers here
 * (the client then asks it: a sandbox stopped, moved, just created and its subscription not
 * yet known to the client's server). It steers these through the {@link CallServer} methods:
 * a move holds them, then opens them again or ends them with E_SANDBOX_MOVED; a stopped
 * sandbox's end them before it is let go, its calls in flight answered first.
 *
 * A request asked again (same request id) is done once: one {@link ReplyCache} per worker
 * thread, which later lives of the sandbox in this thread share. (A repeat whose first
 * answer was lost, of a sandbox stopped and started again in another worker meanwhile, is
 * not known there.)
 */

import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { CallServer } from '../actor/contract.ts';
import { deserializeError, type SerializedError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import type { EventPublisher } from './EventPublisher.ts';
import { WORKER_CALLS, decode, encode, errorReply } from './protocol.ts';
import { REQUEST_ID_HEADER, ReplyCache } from './replies.ts';

/**
 * One per worker thread: a repeat reaches the thread its first attempt reached. 8 MiB of
 * answers kept each (a node has a worker per CPU; its main thread keeps 64 MiB): past that
 * the oldest go, and a repeat of one of them is refused (E_CLUSTER), not done again.
 */
const replies = new ReplyCache({ maxBytes: 8 * 2 ** 20 });

/** Calls `method` of the sandbox's actor with `args`. */
export type CallTarget = (method: string, args: unknown[]) => Promise<unknown>;

/**
 * @example
 * const calls = new SandboxCalls(EventPublisher.for(target), 'corral.node.n1.sandbox.job-1', (m, args) => actor[m](...args));
 * await calls.ready;      // answering
 * await calls.close();    // stopped: answers its calls in flight, then no more
 */
export class SandboxCalls implements CallServer {
  readonly ready: Promise<void>;
  readonly #subject: string;
  readonly #call: CallTarget;
  #nc: NatsConnection | undefined;
  #sub: Subscription | undefined;
  /** Calls being worked on (past the hold): a hold waits for them. */
  readonly #running = new Set<Promise<unknown>>();
  /** Calls not yet answered, held ones too: a close waits for them. */
  readonly #unanswered = new Set<Promise<void>>();
  /** Set while a move holds the calls. */
  #held: { readonly released: Promise<void>; readonly release: () => void } | undefined;
  /** What calls answer once a move ended them here. */
  #moved: Error | undefined;
  #closed: Promise<void> | undefined;

  constructor(publisher: EventPublisher, subject: string, call: CallTarget) {
    this.#subject = subject;
    this.#call = call;
    this.ready = (async () => {
      const nc = await publisher.connection();
      if (this.#closed) return;
      this.#nc = nc;
      this.#sub = nc.subscribe(`${subject}.*`, {
        callback: (err, msg) => (err ? logFailure(`serving the calls on ${subject}`)(err) : this.#handle(msg)),
      });
      await nc.flush();
    })();
    this.ready.catch(() => {}); // its failure reaches the sandbox's start
  }

  #handle(msg: Msg): void {
    const id = msg.headers?.get(REQUEST_ID_HEADER) || undefined;
    const method = msg.subject.slice(this.#subject.length + 1);
    const answered = replies.answer(id, () => this.#answer(method, msg.data)).then((reply) => {
      // The connection may be closing under a late answer: that is logged, not thrown.
      try {
        msg.respond(reply);
      } catch (e) {
        logFailure(`answering ${msg.subject}`)(e);
      }
    });
    this.#unanswered.add(answered);
    void answered.finally(() => this.#unanswered.delete(answered));
  }

  async #answer(method: string, data: Uint8Array): Promise<Uint8Array> {
    try {
      while (this.#held) await this.#held.released;
      if (this.#moved) throw this.#moved;
      if (!WORKER_CALLS.has(method)) throw new TypeError(`unknown sandbox method ${method}`);
      const payload = decode<{ args?: unknown[] } | null>(data);
      // JSON has no undefined: an omitted optional argument arrives as null.
      const work = Promise.resolve(this.#call(method, (payload?.args ?? []).map((a) => (a === null ? undefined : a))));
      this.#running.add(work);
      try {
        return encode({ result: (await work) ?? null });
      } finally {
        this.#running.delete(work);
      }
    } catch (e) {
      return errorReply(e);
    }
  }

  async hold(): Promise<void> {
    if (!this.#held) {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      this.#held = { released, release };
    }
    await Promise.allSettled([...this.#running]);
  }

  open(): void {
    const held = this.#held;
    this.#held = undefined;
    held?.release();
  }

  close(error?: SerializedError): Promise<void> {
    this.#closed ??= (async () => {
      if (error) this.#moved = deserializeError(error);
      this.open();
      // Calls that reached this thread before the unsubscription are still answered (by the
      // stopped sandbox itself, or with the move's error); later ones go to the main thread.
      await this.#sub?.drain().catch(logFailure(`ending the calls on ${this.#subject}`));
      await Promise.allSettled([...this.#unanswered]);
      // On the wire before the sandbox is let go (its worker may end next).
      await this.#nc?.flush().catch(logFailure(`flushing the answers on ${this.#subject}`));
    })();
    return this.#closed;
  }
}
