/**
 * A connection to a corral cluster: NATS servers with JetStream, and the `corral node`
 * processes registered there. Clients use it to place, find and reach sandboxes; each node
 * holds one too (for the registry, the catalog and the event stream).
 */

import { connect, delay, headers, nuid, type NatsConnection } from '@nats-io/transport-node';
import { natsConnectOptions } from './natsConnect.ts';
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Observable } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { logFailure, runtimeLog } from '../runtime/log.ts';
import { REQUEST_ID_HEADER } from './replies.ts';
import { CATALOG_BUCKET, EVENTS_STREAM, NODES_BUCKET, decode, encode, eventSubject, liveSubject, nodeSubject, unwrapReply, type CatalogEntry, type DrainReport, type NodeRecord } from './protocol.ts';

export type { CatalogEntry, DrainReport, NodeRecord };

/** Options of {@link Cluster.connect}. */
export interface ClusterOptions {
  /** NATS server URLs (`nats://host:port`), one or several of the same cluster. */
  readonly servers: string | readonly string[];
  readonly user?: string;
  readonly pass?: string;
  /**
   * A file holding this side's NATS user nkey seed (`SU…`, as `nsc` or `nk -gen user` write
   * it): the server knows the user by its public key, and no password crosses the wire.
   */
  readonly nkeySeedFile?: string;
  /**
   * A NATS credentials file (`.creds`: the user's JWT and its nkey seed, as `nsc` or Synadia
   * Cloud write it), for servers in operator (JWT) mode. Not with `nkeySeedFile`.
   */
  readonly credsFile?: string;
  /**
   * TLS: the CA that signed the servers' certificates, and this side's certificate and key
   * when the servers ask for one (files, PEM). Given, or with `tls://` URLs, only TLS
   * connections are made.
   */
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string };
  /** A name for this connection, shown by the NATS server. */
  readonly name?: string;
  /**
   * A node whose registry entry was not rewritten for this long (and for three of its
   * heartbeats) is lost: its sandboxes read stopped (`node-lost`) and calls to them reject
   * with E_NODE_LOST. Default 3000.
   */
  readonly lostAfterMs?: number;
  /** How long a request to a node may take before E_TIMEOUT (calls that wait for an end excepted). Default 60000. */
  readonly requestTimeoutMs?: number;
  /**
   * How long one attempt of a request waits for its answer before asking again with the same
   * request id (a lost request or answer costs this much, not the whole call). Default 5000.
   */
  readonly resendAfterMs?: number;
  /** Replicas of the buckets and the event stream when this connection creates them. Default 1. */
  readonly replicas?: number;
  /** How long the event stream keeps events. Default 24 h. */
  readonly eventsMaxAgeMs?: number;
}

/** One live node, as {@link Cluster.nodes} lists it. */
export type ClusterNode = NodeRecord;

/** Options of {@link Cluster.events}. */
export interface ClusterEventsOptions {
  /** Only this sandbox's events. */
  readonly name?: string;
  /**
   * Resume after this seq (the stream sequence an event carried); 0 = from the oldest kept.
   * Default: the events stored from the moment of subscribing on.
   */
  readonly since?: number;
  /** Complete after this sandbox's `sandbox.stopped` (only with `name`). */
  readonly untilStopped?: boolean;
}

interface Seen {
  record: NodeRecord;
  revision: number;
  /** When this process last saw the entry change (ms, local clock). */
  at: number;
}

/**
 * @example
 * const cluster = await Cluster.connect({ servers: ['nats://127.0.0.1:4222'], user: 'app', pass: '…' });
 * console.log(await cluster.nodes());
 * await cluster.close();
 */
export class Cluster {
  readonly lostAfterMs: number;
  readonly requestTimeoutMs: number;
  readonly resendAfterMs: number;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #nodesKv: KV;
  readonly #catalog: KV;
  readonly #seen = new Map<string, Seen>();
  readonly #lostListeners = new Set<(node: string) => void>();
  readonly #closeListeners = new Set<() => void>();
  readonly #timer: NodeJS.Timeout;
  #closed: Promise<void> | undefined;
  #stopWatch: (() => void) | undefined;

  /**
   * Every sandbox's events from now on, each with `seq` = its sequence in the cluster's event
   * stream (resume with {@link events}`({ since })`).
   */
  readonly events$: Observable<SandboxEvent>;

  private constructor(nc: NatsConnection, jsm: JetStreamManager, nodesKv: KV, catalog: KV, options: ClusterOptions) {
    this.#nc = nc;
    this.#js = jetstream(nc);
    this.#jsm = jsm;
    this.#nodesKv = nodesKv;
    this.#catalog = catalog;
    this.lostAfterMs = options.lostAfterMs ?? 3000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.resendAfterMs = options.resendAfterMs ?? 5000;
    this.events$ = this.events();
    this.#timer = setInterval(() => this.#checkLiveness(), Math.max(100, Math.floor(this.lostAfterMs / 4)));
    this.#timer.unref();
  }

  /**
   * Connects to the NATS servers, creates the buckets and the event stream if none are there
   * yet, and starts following the node registry. Wrong credentials: E_CLUSTER with
   * `details.reason` `auth`; no server reachable: E_CLUSTER with `details.reason` `unreachable`.
   */
  static async connect(options: ClusterOptions): Promise<Cluster> {
    const servers = typeof options?.servers === 'string' ? [options.servers] : [...(options?.servers ?? [])];
    if (servers.length === 0 || !servers.every((s) => typeof s === 'string' && /^(nats|tls):\/\/[^\s/]+$/.test(s))) {
      throw new InvalidOptionError('servers', 'one or more NATS URLs (nats://host:port or tls://host:port)', options?.servers);
    }
    const lostAfterMs = options.lostAfterMs ?? 3000;
    if (!Number.isInteger(lostAfterMs) || lostAfterMs < 200) throw new InvalidOptionError('lostAfterMs', 'an integer of ms ≥ 200', options.lostAfterMs);
    if (options.resendAfterMs !== undefined && (!Number.isInteger(options.resendAfterMs) || options.resendAfterMs < 100)) throw new InvalidOptionError('resendAfterMs', 'an integer of ms ≥ 100', options.resendAfterMs);
    if (options.requestTimeoutMs !== undefined && (!Number.isInteger(options.requestTimeoutMs) || options.requestTimeoutMs < 1)) throw new InvalidOptionError('requestTimeoutMs', 'a positive integer of ms', options.requestTimeoutMs);
    const replicas = options.replicas ?? 1;
    if (![1, 3, 5].includes(replicas)) throw new InvalidOptionError('replicas', '1, 3 or 5', options.replicas);
    // A bad seed or credentials file is an E_INVALID_OPTION of its own, not a connection failure.
    const connectOptions = natsConnectOptions({ ...options, servers, name: options.name ?? `corral-${process.pid}` });
    const who = options.credsFile !== undefined ? `the user in ${options.credsFile}` : options.nkeySeedFile !== undefined ? `the nkey in ${options.nkeySeedFile}` : `user "${options.user ?? ''}"`;
    let nc: NatsConnection;
    try {
      nc = await connect(connectOptions);
    } catch (err) {
      const auth = /authori[sz]ation|authentication/i.test((err as Error).message);
      throw new CorralError(
        'E_CLUSTER',
        auth
          ? `the NATS servers refused the credentials of ${who} (${(err as Error).message})`
          : `cannot connect to the NATS servers ${servers.join(', ')}: ${(err as Error).message}`,
        { cause: err, details: { reason: auth ? 'auth' : 'unreachable' } },
      );
    }
    try {
      const [nodesKv, catalog] = await Promise.all([
        openBucket(nc, NODES_BUCKET, { replicas, history: 1 }),
        openBucket(nc, CATALOG_BUCKET, { replicas, history: 1 }),
        ensureEventStream(nc, replicas, options.eventsMaxAgeMs ?? 24 * 3600_000),
      ]);
      const cluster = new Cluster(nc, await jetstreamManager(nc), nodesKv, catalog, options);
      await cluster.#follow();
      return cluster;
    } catch (err) {
      await nc.close();
      if (err instanceof CorralError) throw err;
      throw new CorralError('E_CLUSTER', `the cluster's JetStream refused to open its buckets: ${(err as Error).message}`, { cause: err });
    }
  }

  /** @internal the NATS connection (nodes publish and serve on it). */
  get connection(): NatsConnection {
    return this.#nc;
  }

  /** @internal */
  get jetstream(): JetStreamClient {
    return this.#js;
  }

  /** @internal the node registry bucket. */
  get registry(): KV {
    return this.#nodesKv;
  }

  /**
   * The live nodes (registered, and rewritten their entry within {@link lostAfterMs}), each
   * as its registry entry reads now.
   *
   * @example
   * for (const n of await cluster.nodes()) console.log(n.name, n.free.memoryMib, n.sandboxes);
   */
  async nodes(): Promise<ClusterNode[]> {
    this.#assertOpen();
    this.#checkLiveness();
    const out: ClusterNode[] = [];
    const keys: string[] = [];
    keys.push(...(await bucketKeys(this.#jsm, NODES_BUCKET)));
    for (const name of keys.sort()) {
      const e = await this.#nodesKv.get(name);
      if (!e || e.operation !== 'PUT') continue;
      // Registered a moment ago, before the watch brought it: its write time vouches for it.
      if (!this.#seen.has(name) && Date.now() - e.created.getTime() <= this.lostAfterMs) this.#seen.set(name, { record: e.json<NodeRecord>(), revision: e.revision, at: Math.min(Date.now(), e.created.getTime()) });
      if (this.#seen.has(name)) out.push(e.json<NodeRecord>());
    }
    return out;
  }

  /** Whether `node` is registered and its heartbeat is current. */
  nodeAlive(node: string): boolean {
    this.#checkLiveness();
    return this.#seen.has(node);
  }

  /** @internal `node`'s registry entry as this connection last saw it (undefined: not seen alive). */
  nodeRecord(node: string): NodeRecord | undefined {
    return this.#seen.get(node)?.record;
  }

  /**
   * Drains a node: it takes no new sandboxes from now on (until it restarts), and each of
   * its sandboxes refuses new execs, lets running ones finish, and stops (reason `drained`).
   * Resolves with the time each took.
   *
   * `migrate: true` moves each running sandbox to another node instead, one after another:
   * memory snapshot → archive → transfer (NATS requests, a chunk at a time) → restore there,
   * under the same name, with its files and running processes. Handles on it follow it; an
   * exec stream open across the move ends with E_SANDBOX_MOVED (its process runs on there).
   * A sandbox that cannot move (no room elsewhere, or not running) stays, and its report line
   * says why; `movedTo` names where each moved one went.
   *
   * @example
   * const report = await cluster.drain('n1', { migrate: true });   // { node: 'n1', sandboxes: [{ name, ms, movedTo: 'n2' }] }
   */
  async drain(node: string, options: { migrate?: boolean; timeoutMs?: number } = {}): Promise<DrainReport> {
    if (options.migrate !== undefined && typeof options.migrate !== 'boolean') throw new InvalidOptionError('migrate', 'true or false', options.migrate);
    if (!this.nodeAlive(node)) throw nodeLost(node);
    return this.request<DrainReport>(node, 'drain', { migrate: options.migrate ?? false }, { timeoutMs: options.timeoutMs ?? FOREVER_MS });
  }

  /** @internal calls `fn` once this connection closes (handles on it end then); returns the unsubscribe. */
  onClose(fn: () => void): () => void {
    this.#closeListeners.add(fn);
    return () => this.#closeListeners.delete(fn);
  }

  /** @internal calls `fn` with the name of every node found lost from now on; returns the unsubscribe. */
  onNodeLost(fn: (node: string) => void): () => void {
    this.#lostListeners.add(fn);
    return () => this.#lostListeners.delete(fn);
  }

  /**
   * @internal a request to a node's verb. NATS delivers a request and its answer at most
   * once, so an answer that is late by {@link resendAfterMs} is asked for again with the same
   * request id (the node does the work once: src/cluster/replies.ts), until `timeoutMs`
   * (E_TIMEOUT) or the node is found lost (E_NODE_LOST). A node that does not answer at all (no
   * subscriber: its process is gone) rejects with E_NODE_LOST; errors of the node keep their
   * `code`. `timeoutMs` ≥ 2^31 − 1: no deadline (a call that waits for an end).
   *
   * `first`: a verb to ask before `verb` (a sandbox's worker, which answers some calls
   * itself: src/cluster/SandboxCalls.ts); where nobody answers it, the same request (same
   * id: nobody took it) goes to `verb`.
   */
  async request<T>(node: string, verb: string, payload: unknown, options: { timeoutMs?: number; resendAfterMs?: number; first?: string } = {}): Promise<T> {
    this.#assertOpen();
    const timeout = options.timeoutMs ?? this.requestTimeoutMs;
    const deadline = timeout >= FOREVER_MS ? Infinity : Date.now() + timeout;
    const h = headers();
    h.set(REQUEST_ID_HEADER, nuid.next());
    const data = encode(payload);
    let noResponders = 0;
    let asked = options.first ?? verb;
    for (let attempt = 1; ; attempt++) {
      this.#assertOpen();
      const left = deadline - Date.now();
      const wait = Math.max(1, Math.min(left, options.resendAfterMs ?? this.resendAfterMs));
      let reply;
      try {
        reply = await this.#nc.request(nodeSubject(node, asked), data, { timeout: wait, headers: h });
      } catch (err) {
        const msg = (err as Error).message;
        if (/no responders/i.test(msg) && asked !== verb) {
          asked = verb;
          continue;
        }
        if (/no responders/i.test(msg)) {
          // A node registered a moment ago: its subscription may not have reached this
          // client's server yet. A few short tries, then it is gone.
          if (++noResponders > 4 || !this.nodeAlive(node) || Date.now() + 50 * 2 ** noResponders > deadline) throw nodeLost(node, err);
          await delay(50 * 2 ** noResponders);
          continue;
        }
        if (/timeout/i.test((err as Error).name) || /timeout/i.test(msg)) {
          if (!this.nodeAlive(node)) throw nodeLost(node, err);
          if (Date.now() >= deadline) throw new CorralError('E_TIMEOUT', `node "${node}" did not answer ${verb} within ${timeout} ms (asked ${attempt} times)`, { cause: err });
          runtimeLog.debug(`node "${node}" has not answered ${verb} (attempt ${attempt}): asking again (same request id)`);
          continue;
        }
        throw new CorralError('E_CLUSTER', `request ${verb} to node "${node}" failed: ${msg}`, { cause: err });
      }
      return unwrapReply<T>(reply.data);
    }
  }

  /** @internal claims `entry.name` cluster-wide: E_SANDBOX_EXISTS if any entry has it (a KV create, atomic). */
  async claim(entry: CatalogEntry): Promise<void> {
    this.#assertOpen();
    try {
      await this.#catalog.create(entry.name, encode(entry));
    } catch (err) {
      if (/wrong last sequence|key exists/i.test((err as Error).message)) {
        const held = await this.catalogEntry(entry.name);
        throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${entry.name}" already exists in the cluster${held ? ` (on node ${held.node}, ${held.status})` : ''}`, { cause: err });
      }
      throw new CorralError('E_CLUSTER', `cannot write the catalog entry of "${entry.name}": ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * @internal a catalog entry, as it is: one of a lost node that still reads running reads
   * stopped with reason `node-lost`.
   */
  async catalogEntry(name: string, options: { raw?: boolean } = {}): Promise<CatalogEntry | undefined> {
    this.#assertOpen();
    const e = await this.#catalog.get(name);
    if (!e || e.operation !== 'PUT') return undefined;
    return options.raw ? e.json<CatalogEntry>() : this.#asSeen(e.json<CatalogEntry>());
  }

  /** @internal every catalog entry, sorted by name (entries of lost nodes read stopped unless `raw`). */
  async catalog(options: { raw?: boolean } = {}): Promise<CatalogEntry[]> {
    this.#assertOpen();
    const out: CatalogEntry[] = [];
    for (const key of await bucketKeys(this.#jsm, CATALOG_BUCKET)) {
      const e = await this.catalogEntry(key, options);
      if (e) out.push(e);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** @internal rewrites an entry (last writer wins: only its node writes it while it lives). */
  async putCatalog(entry: CatalogEntry): Promise<void> {
    await this.#catalog.put(entry.name, encode(entry));
  }

  /** @internal drops an entry (its name is free again). */
  async deleteCatalog(name: string): Promise<void> {
    await this.#catalog.delete(name);
  }

  #asSeen(entry: CatalogEntry): CatalogEntry {
    if (entry.status === 'stopped' || entry.status === 'creating' || this.nodeAlive(entry.node)) return entry;
    return { ...entry, status: 'stopped', stopReason: 'node-lost' };
  }

  /**
   * Events from the cluster's stream, each with `seq` = its stream sequence: after `since`
   * exactly once (no gap, no duplicate), then live ones. Without `since`, new events only.
   *
   * @example
   * let last = 0;
   * cluster.events({ since: last }).subscribe((e) => (last = e.seq));
   */
  events(options: ClusterEventsOptions = {}): Observable<SandboxEvent> {
    if (options.since !== undefined && (!Number.isInteger(options.since) || options.since < 0)) throw new InvalidOptionError('since', 'an integer ≥ 0 (a seq an event carried)', options.since);
    return new Observable<SandboxEvent>((sub) => {
      let stopped = false;
      let stop: (() => void) | undefined;
      // "From now on" is the moment of subscribing, not the moment the consumer exists (a
      // request later): an event stored in between is delivered, not lost. By the servers'
      // clock: a client whose clock runs ahead of theirs misses events of that gap.
      const subscribedAt = new Date();
      void (async () => {
        const consumer = await this.#js.consumers.get(EVENTS_STREAM, {
          filter_subjects: eventSubject(options.name ?? '*'),
          ...(options.since === undefined
            ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: subscribedAt.toISOString() }
            : options.since === 0
              ? { deliver_policy: DeliverPolicy.All }
              : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: options.since + 1 }),
        });
        const messages = await consumer.consume();
        stop = () => void messages.close().catch(logFailure('closing an event consumer'));
        if (stopped) return stop();
        for await (const m of messages) {
          const e = { ...decode<SandboxEvent>(m.data), seq: m.seq } as SandboxEvent;
          sub.next(e);
          if (options.untilStopped && e.type === 'sandbox.stopped') {
            sub.complete();
            stop();
            return;
          }
        }
        // The messages ended without this subscriber leaving: the connection closed under it.
        if (!stopped) sub.error(new CorralError('E_CLOSED', 'the cluster connection closed: no more events come on this subscription'));
      })().catch((err: unknown) => {
        if (!stopped) sub.error(err instanceof CorralError ? err : new CorralError('E_CLUSTER', `the cluster's event stream failed: ${(err as Error).message}`, { cause: err }));
      });
      return () => {
        stopped = true;
        stop?.();
      };
    });
  }

  async #follow(): Promise<void> {
    for (const key of await bucketKeys(this.#jsm, NODES_BUCKET)) {
      const e = await this.#nodesKv.get(key);
      // A first look has only the server's write time to go by.
      if (e && e.operation === 'PUT') this.#seen.set(key, { record: e.json<NodeRecord>(), revision: e.revision, at: Math.min(Date.now(), e.created.getTime()) });
    }
    const watch = await this.#nodesKv.watch({ include: 'updates' });
    this.#stopWatch = () => watch.stop();
    void (async () => {
      for await (const e of watch) {
        if (e.operation === 'PUT') this.#seen.set(e.key, { record: e.json<NodeRecord>(), revision: e.revision, at: Date.now() });
        // A deleted entry: the node deregistered (its sandboxes are marked already), or a
        // sweeper found it lost (and marks them): the links hear of it, no sweep here.
        else if (this.#seen.delete(e.key)) for (const fn of this.#lostListeners) fn(e.key);
      }
    })().catch(logFailure('following the node registry'));
    this.#checkLiveness();
  }

  #checkLiveness(): void {
    const now = Date.now();
    for (const [name, s] of this.#seen) {
      // A node with a slow heartbeat gets three of them, whatever this client's setting.
      if (now - s.at <= Math.max(this.lostAfterMs, 3 * (s.record.heartbeatMs || 0))) continue;
      this.#seen.delete(name);
      this.#lost(name, s.revision);
    }
  }

  /** A node is lost: tell the links, mark its sandboxes stopped, drop its registry entry. */
  #lost(node: string, revision: number): void {
    for (const fn of this.#lostListeners) fn(node);
    if (this.#closed) return;
    void this.#sweep(node, revision).catch(logFailure(`marking the sandboxes of lost node "${node}" stopped`));
  }

  async #sweep(node: string, revision: number): Promise<void> {
    // Only the entry seen stale goes: a node that came back meanwhile wrote a newer one.
    await this.#nodesKv.delete(node, { previousSeq: revision }).catch((err: unknown) => logFailure(`dropping the registry entry of lost node "${node}"`)(err));
    for (const key of await bucketKeys(this.#jsm, CATALOG_BUCKET)) {
      const e = await this.#catalog.get(key);
      if (!e || e.operation !== 'PUT') continue;
      const entry = e.json<CatalogEntry>();
      if (entry.node !== node || entry.status === 'stopped') continue;
      const now = Date.now();
      try {
        await this.#catalog.update(key, encode({ ...entry, status: 'stopped', stopReason: 'node-lost', updatedAt: now }), e.revision);
      } catch (err) {
        // Another client or node marked it first (or the node came back and wrote it).
        if (!/wrong last sequence/i.test((err as Error).message)) throw err;
        continue;
      }
      const event = { type: 'sandbox.stopped', name: key, seq: 0, ts: now, reason: 'node-lost', exitCode: null, signal: null } as SandboxEvent;
      // One stopped event per sandbox even when several sweepers get here (JetStream dedupes by msgID).
      await this.#js.publish(eventSubject(key), encode(event), { msgID: `node-lost-${node}-${key}-${e.revision}` });
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new CorralError('E_CLOSED', 'this cluster connection was closed');
  }

  /** Stops following the registry and closes the NATS connection (after flushing). Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#timer);
      this.#stopWatch?.();
      // Handles on this connection end now: their calls and streams reject with E_CLOSED
      // instead of waiting for answers that can no longer come.
      for (const fn of [...this.#closeListeners]) fn();
      this.#closeListeners.clear();
      if (!this.#nc.isClosed()) {
        await this.#nc.drain().catch(async (err: unknown) => {
          logFailure('draining the NATS connection (closing it instead)')(err);
          await this.#nc.close();
        });
      }
    })();
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The longest timer Node takes (~24.8 days): a request this long has no deadline. */
export const FOREVER_MS = 2 ** 31 - 1;

/** E_NODE_LOST for a sandbox of `node`. */
export function nodeLost(node: string, cause?: unknown, sandbox?: string): CorralError {
  return new CorralError('E_NODE_LOST', `node "${node}"${sandbox ? ` of sandbox "${sandbox}"` : ''} is lost: it no longer answers (its sandboxes are stopped, reason node-lost)`, {
    details: { node, ...(sandbox ? { sandbox } : {}) },
    ...(cause !== undefined ? { cause } : {}),
  });
}

/**
 * The keys of a bucket (deleted ones too: their get says so), from one stream-info request
 * per page of subjects. Not `kv.keys()`: that reads them through a push consumer, whose end
 * is a message or heartbeat that a cluster still forming can lose, and then it never ends.
 */
async function bucketKeys(jsm: JetStreamManager, bucket: string): Promise<string[]> {
  const prefix = `$KV.${bucket}.`;
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}>` });
  return Object.keys(info.state.subjects ?? {}).map((subject) => subject.slice(prefix.length));
}

async function openBucket(nc: NatsConnection, name: string, opts: { replicas: number; history: number }): Promise<KV> {
  const kvm = new Kvm(nc);
  const jsm = await jetstreamManager(nc);
  try {
    // A bucket is the stream KV_<name>; opening one does not check that it exists.
    await jsm.streams.info(`KV_${name}`);
    return await kvm.open(name);
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) throw err;
    return kvm.create(name, opts);
  }
}

async function ensureEventStream(nc: NatsConnection, replicas: number, maxAgeMs: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(EVENTS_STREAM);
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) throw err;
    await jsm.streams.add({
      name: EVENTS_STREAM,
      subjects: [eventSubject('*')],
      num_replicas: replicas,
      max_age: maxAgeMs * 1_000_000,
      max_bytes: 256 * 1024 * 1024,
      // Sweepers publish node-lost events with a msgID: one per sandbox, however many sweep.
      duplicate_window: 120 * 1_000_000_000,
      // Each stored event goes on to the sandbox's live subject with its stream sequence (the
      // Nats-Sequence header): handles get events with their seq without the node waiting
      // for each publish's ack before the next.
      republish: { src: eventSubject('>'), dest: liveSubject('>') },
    });
  }
}
