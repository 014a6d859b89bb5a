/**
 * The link to a sandbox on a node of a cluster: the same API as an attached or detached
 * one, carried as NATS requests to the node's `corral.node.<node>.sb.<method>` subjects (the
 * plain calls to the sandbox's worker first, `…sandbox.<name>.<method>`, which answers them
 * itself: src/cluster/SandboxCalls.ts); events come from the sandbox's live subject (each
 * once stored in the cluster's stream).
 */

import { Subject, type Observable } from 'rxjs';
import type { Subscription as NatsSubscription } from '@nats-io/transport-node';
import type { SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { FOREVER_MS, nodeLost, type Cluster } from '../cluster/Cluster.ts';
import { SEQ_HEADER, WORKER_CALLS, decode, liveSubject, sandboxVerb } from '../cluster/protocol.ts';
import { holding } from '../runtime/hold.ts';
import { logFailure } from '../runtime/log.ts';
import type { SandboxApi, SandboxLink } from './SandboxLink.ts';
import { FORWARDED_CALLS } from './wire.ts';

/** Calls that wait for the sandbox's end: no deadline (a lost node still ends them). */
const UNBOUNDED = new Set(['stopped', 'drain', 'stop', 'start']);
/**
 * `stopped` may wait for hours: asked again (in case its answer was lost) every 30 s, not
 * every {@link Cluster.resendAfterMs}, so an idle handle costs next to no traffic.
 */
const WAIT_RESEND_MS = 30_000;

/**
 * @example
 * const link = await NatsLink.open(cluster, config, 'n1');
 * await link.api.info();
 */
export class NatsLink implements SandboxLink {
  /** A remote sandbox lives in a process of its own (the node's). */
  readonly detached = true;
  readonly api: SandboxApi;
  readonly events$: Observable<SandboxEvent>;
  readonly #cluster: Cluster;
  readonly #events = new Subject<SandboxEvent>();
  readonly #sub: NatsSubscription;
  readonly #pending = new Set<(err: Error) => void>();
  readonly #offLost: () => void;
  readonly #offClose: () => void;
  #ended: CorralError | undefined;
  #node: string;

  private constructor(
    cluster: Cluster,
    readonly config: SandboxConfig,
    node: string,
  ) {
    this.#cluster = cluster;
    this.#node = node;
    this.events$ = this.#events.asObservable();
    // Subscribed before any call goes out: NATS orders this SUB before the requests that
    // follow on the same connection, so no event of an exec started later can be missed.
    this.#sub = cluster.connection.subscribe(liveSubject(config.name), {
      callback: (err, msg) => {
        if (err) return this.#end(new CorralError('E_CLUSTER', `event subscription of "${config.name}" failed: ${err.message}`, { cause: err }));
        try {
          const seq = Number(msg.headers?.get(SEQ_HEADER));
          this.#events.next({ ...decode<SandboxEvent>(msg.data), seq });
        } catch (e) {
          this.#end(new CorralError('E_PROTOCOL', `bad event from node "${this.#node}": ${(e as Error).message}`, { cause: e }));
        }
      },
    });
    this.#offClose = cluster.onClose(() => this.#end(new CorralError('E_CLOSED', `the cluster connection of the handle on sandbox "${config.name}" was closed`)));
    this.#offLost = cluster.onNodeLost((lost) => {
      if (lost === this.#node) void this.#follow(lost).then((moved) => moved || this.#nodeLost(undefined), (err: unknown) => this.#nodeLost(err));
    });
    const api: Record<string, (...args: unknown[]) => Promise<unknown>> = {};
    for (const m of ['start', ...FORWARDED_CALLS]) api[m] = (...args: unknown[]) => this.busy(() => this.#call(m, args));
    this.api = api as unknown as SandboxApi;
  }

  /** A link to sandbox `config.name` on `node`; its event subscription is in place when it resolves. */
  static async open(cluster: Cluster, config: SandboxConfig, node: string): Promise<NatsLink> {
    const link = new NatsLink(cluster, config, node);
    await cluster.connection.flush();
    return link;
  }

  /** The node that runs the sandbox (another one after a move: the link follows it). */
  get node(): string {
    return this.#node;
  }

  #call(method: string, args: unknown[]): Promise<unknown> {
    if (this.#ended) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => {
      this.#pending.add(reject);
      this.#ask(method, args)
        .then(resolve, (err: unknown) => {
          if (err instanceof CorralError && err.code === 'E_NODE_LOST') this.#nodeLost(err);
          reject(this.#ended ?? err);
        })
        .finally(() => this.#pending.delete(reject));
    });
  }

  /** One call, asked again of the node the sandbox moved to (a drain with migrate) if it did. */
  async #ask(method: string, args: unknown[]): Promise<unknown> {
    for (let moves = 0; ; moves++) {
      const node = this.#node;
      // The plain calls go to the sandbox's worker itself where its node has it answer them.
      const first = WORKER_CALLS.has(method) && this.#cluster.nodeRecord(node)?.workerCalls ? { first: `${sandboxVerb(this.config.name)}.${method}` } : {};
      try {
        return await this.#cluster.request(node, `sb.${method}`, { name: this.config.name, args }, UNBOUNDED.has(method) ? { timeoutMs: FOREVER_MS, ...(method === 'stopped' ? { resendAfterMs: WAIT_RESEND_MS } : {}) } : first);
      } catch (err) {
        if (moves >= 8 || !(err instanceof CorralError)) throw err;
        if (err.code === 'E_SANDBOX_MOVED' && typeof err.details?.node === 'string') {
          if (this.#node === node) this.#node = err.details.node;
          continue;
        }
        // Its old node gone after a move: the catalog says where it runs now.
        const followed = err.code === 'E_NODE_LOST' && (await this.#follow(node).catch((e: unknown) => (logFailure(`looking up where "${this.config.name}" runs now`)(e), false)));
        if (followed) continue;
        throw err;
      }
    }
  }

  /** Whether the catalog puts the sandbox on a live node other than `lost` (then the link goes there). */
  async #follow(lost: string): Promise<boolean> {
    const entry = await this.#cluster.catalogEntry(this.config.name, { raw: true });
    if (!entry || entry.node === lost || entry.status === 'stopped' || !this.#cluster.nodeAlive(entry.node)) return false;
    if (this.#node === lost) this.#node = entry.node;
    return true;
  }

  /** Runs `fn` holding the process (the NATS connection keeps it alive anyway while open). */
  busy<T>(fn: () => Promise<T>): Promise<T> {
    return holding(fn);
  }

  /** The sandbox stopped: its node let go of it already; this drops the subscription. */
  async release(): Promise<void> {
    this.#end(new CorralError('E_CLOSED', `the handle on sandbox "${this.config.name}" was released`));
  }

  async detach(): Promise<void> {
    this.#end(new CorralError('E_CLOSED', `the handle on sandbox "${this.config.name}" was detached`));
  }

  /** The node is gone and its VMs with it: the sandbox's last event says so; every call rejects E_NODE_LOST. */
  #nodeLost(cause: unknown): void {
    if (this.#ended) return;
    this.#events.next({ type: 'sandbox.stopped', name: this.config.name, seq: 0, ts: Date.now(), reason: 'node-lost', exitCode: null, signal: null } as SandboxEvent);
    this.#end(nodeLost(this.#node, cause, this.config.name));
  }

  #end(err: CorralError): void {
    if (this.#ended) return;
    this.#ended = err;
    for (const reject of this.#pending) reject(err);
    this.#pending.clear();
    this.#offLost();
    this.#offClose();
    if (!this.#cluster.connection.isClosed()) {
      try {
        this.#sub.unsubscribe();
      } catch (e) {
        // A connection draining under it: its subscriptions end with it.
        logFailure(`dropping the event subscription of "${this.config.name}"`)(e);
      }
    }
    this.#events.complete();
  }
}
