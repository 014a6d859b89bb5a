/**
 * A cluster node's sandbox events, published into the cluster's stream by the worker thread
 * that hosts the sandboxes, on a NATS connection of that thread's own (one per worker and
 * node), each written as it is made. Through the node's main thread instead, an exec's exit
 * waited for that thread to wake before it left (~0.5 ms), and by then the machine's idle CPUs
 * had gone to sleep, so each hop after it cost more again (README, Running on many machines →
 * Bench). The node's main thread still publishes the events it makes itself (a move's).
 *
 * Events of one sandbox leave on one connection in the order they were made, so the stream
 * keeps that order. nats.js is loaded only in the workers of a node.
 */

import type { NatsConnection } from '@nats-io/transport-node';
import type { SandboxEvent } from '../bus/events.ts';
import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import type { NatsTarget } from './natsConnect.ts';
import { decode, eventMessages, eventSubject } from './protocol.ts';

const publishers = new Map<string, EventPublisher>();

/**
 * @example
 * const events = EventPublisher.for({ servers: ['nats://127.0.0.1:4222'], user: 'node', pass: '…', name: 'corral-node-n1-w1' });
 * events.publish(event);          // encoded now, written now (queued until connected)
 * await events.flushed();         // the server has it
 */
export class EventPublisher {
  /** Resolves once connected; rejects E_CLUSTER when it cannot (a sandbox's start then fails). */
  readonly ready: Promise<void>;
  #nc: NatsConnection | undefined;
  /** Messages made before the connection was up, in order. */
  #queue: Array<[string, Uint8Array[]]> | undefined = [];
  #acks = '';

  private constructor(target: NatsTarget, key: string) {
    this.ready = (async () => {
      const [{ connect, createInbox }, { natsConnectOptions }] = await Promise.all([import('@nats-io/transport-node'), import('./natsConnect.ts')]);
      const nc = await connect(natsConnectOptions(target));
      this.#acks = createInbox();
      nc.subscribe(this.#acks, {
        callback: (err, msg) => {
          if (err) return logFailure(`reading the event stream's acks`)(err);
          const ack = decode<{ error?: { description?: string } }>(msg.data);
          if (ack.error) logFailure('storing an event in the stream')(new Error(ack.error.description ?? JSON.stringify(ack.error)));
        },
      });
      this.#nc = nc;
      const queued = this.#queue ?? [];
      this.#queue = undefined;
      for (const [subject, parts] of queued) this.#write(subject, parts);
    })().catch((err: unknown) => {
      // Not kept: the next sandbox of this worker tries again.
      publishers.delete(key);
      this.#queue = undefined;
      throw new CorralError('E_CLUSTER', `a sandbox worker cannot connect to the NATS servers ${target.servers.join(', ')} to publish its events (as ${target.name}): ${(err as Error).message}`, { cause: err });
    });
    this.ready.catch(() => {}); // its failure reaches each sandbox's start
  }

  /** This thread's publisher for `target`, connecting at the first call. */
  static for(target: NatsTarget): EventPublisher {
    const key = JSON.stringify(target);
    let p = publishers.get(key);
    if (!p) publishers.set(key, (p = new EventPublisher(target, key)));
    return p;
  }

  /**
   * Publishes `e` into the stream: encoded now (its bytes may be transferred away next), and
   * written now, not in a microtask, so it leaves before the thread goes on to wake its
   * supervisor. Never throws: a failure is logged, as the node's own publishes are.
   */
  publish(e: SandboxEvent): void {
    try {
      const parts = eventMessages(e, this.#nc?.info?.max_payload);
      if (this.#queue) this.#queue.push([eventSubject(e.name), parts]);
      else this.#write(eventSubject(e.name), parts);
    } catch (err) {
      logFailure(`publishing ${e.type} of "${e.name}"`)(err);
    }
  }

  /** This thread's connection to the servers, once connected (its sandboxes' calls are answered on it too: src/cluster/SandboxCalls.ts). */
  async connection(): Promise<NatsConnection> {
    await this.ready;
    return this.#nc!;
  }

  /** Resolves once the server holds every event published so far (a PING answered). */
  async flushed(): Promise<void> {
    await this.ready;
    await this.#nc!.flush();
  }

  #write(subject: string, parts: Uint8Array[]): void {
    const nc = this.#nc;
    if (!nc) return; // it could not connect: the sandbox did not start
    try {
      for (const part of parts) nc.publish(subject, part, { reply: this.#acks });
      writeNow(nc);
    } catch (err) {
      // A closed or draining connection throws here: the event is lost to the stream, said so.
      logFailure(`publishing an event on ${subject}`)(err);
    }
  }
}

/**
 * Writes what the connection holds at once. nats.js 3.x writes in a microtask, which here
 * would run after the postMessage that wakes the supervisor's thread (and the work that follows
 * it); its protocol handler's flushPending() does it now. Without that method (another
 * version), the microtask still writes it.
 */
function writeNow(nc: NatsConnection): void {
  const protocol = (nc as unknown as { protocol?: { flushPending?: () => void } }).protocol;
  if (typeof protocol?.flushPending === 'function') protocol.flushPending();
}
