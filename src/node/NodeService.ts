/**
 * `corral node`: a Supervisor that answers for its sandboxes on NATS.
 *
 * It registers itself in the cluster's node registry (labels, capacity, what is free) and
 * rewrites that entry every heartbeat; serves `corral.node.<name>.<verb>` (src/cluster/protocol.ts);
 * gets every event of its sandboxes into the cluster's event stream (then on the sandbox's
 * live subject with its stream seq): its sandbox workers publish theirs on connections of
 * their own (src/cluster/EventPublisher.ts), it publishes those it makes itself; keeps the catalog entries of its sandboxes
 * current. {@link NodeService.close} stops its sandboxes, marks them stopped and deregisters.
 */

import { recordedInfo } from '../actor/contract.ts';
import { availableParallelism, totalmem } from 'node:os';
import { mkdir, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInbox, nuid, type Msg, type Subscription as NatsSubscription } from '@nats-io/transport-node';
import type { SandboxEvent } from '../bus/events.ts';
import { validateName, type SandboxConfig } from '../config.ts';
import { rankNodes } from '../cluster/placement.ts';
import { Receiver, sendArchive } from './transfer.ts';
import { linkSampler, type MetricsSampler, type SandboxMetrics } from '../metrics/MetricsSampler.ts';
import { CorralError, InvalidOptionError, serializeError } from '../errors.ts';
import { Cluster, type ClusterOptions } from '../cluster/Cluster.ts';
import { REQUEST_ID_HEADER, ReplyCache } from '../cluster/replies.ts';
import { decode, encode, errorReply, eventMessages, eventSubject, nodeSubject, sandboxVerb, type CatalogEntry, type DrainReport, type NodeRecord } from '../cluster/protocol.ts';
import type { WorkerLink } from '../link/WorkerLink.ts';
import type { LogsOptions } from '../logs/ExecLog.ts';
import { FORWARDED_CALLS } from '../link/wire.ts';
import { logFailure, runtimeLog } from '../runtime/log.ts';
import { Supervisor, type SandboxInfo } from '../supervisor/Supervisor.ts';

/** Options of {@link NodeService.start}. */
export interface NodeServiceOptions extends Pick<ClusterOptions, 'servers' | 'user' | 'pass' | 'nkeySeedFile' | 'credsFile' | 'replicas' | 'tls'> {
  /** The node's name in the cluster: lowercase letters, digits and dashes. */
  readonly name: string;
  /** Its supervisor's state dir (LMDB, disks, templates). */
  readonly stateDir: string;
  readonly labels?: Readonly<Record<string, string>>;
  /** How often it rewrites its registry entry. Default 1000. */
  readonly heartbeatMs?: number;
  /** Most sandboxes it runs at once. Default 64. */
  readonly maxSandboxes?: number;
  /** Guest memory it offers, MiB. Default the host's memory less 1 GiB. */
  readonly memoryMib?: number;
  /** How long its start-up may take before E_TIMEOUT naming the step it was at. Default 120000. */
  readonly startTimeoutMs?: number;
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const CALLS = new Set<string>(['start', ...FORWARDED_CALLS]);
/** Calls whose answer is a SandboxInfo, which gets the node's name. */
const INFO_CALLS = new Set(['start', 'info', 'stop', 'kill', 'drain', 'stopped']);

/**
 * @example
 * const node = await NodeService.start({ servers: 'nats://127.0.0.1:4222', name: 'n1', stateDir: '/var/lib/corral' });
 * process.once('SIGTERM', () => void node.close());
 */
export class NodeService {
  readonly name: string;
  readonly #cluster: Cluster;
  readonly #sup: Supervisor;
  readonly #labels: Readonly<Record<string, string>>;
  readonly #capacity: NodeRecord['capacity'];
  readonly #heartbeatMs: number;
  readonly #startedAt = Date.now();
  readonly #live = new Map<string, WorkerLink>();
  /** Sandboxes being created: they hold their memory already. */
  readonly #creating = new Map<string, number>();
  readonly #entries = new Map<string, CatalogEntry>();
  /** Calls in flight per sandbox, by method: its release waits for them (their answers come first). */
  readonly #inflight = new Map<string, Map<Promise<unknown>, string>>();
  /** Each live sandbox's release, run once it stopped. */
  readonly #releases = new Set<Promise<void>>();
  readonly #releaseOf = new Map<string, Promise<void>>();
  /** Sandboxes being moved to another node: calls to them wait for the move's end. */
  readonly #moving = new Map<string, Promise<void>>();
  /** Sandboxes moved away, and where to: calls to them get E_SANDBOX_MOVED naming it. */
  readonly #movedTo = new Map<string, string>();
  /** Metrics samplers of the handles that asked, by `<sandbox>/<sampler id>`. */
  readonly #samplers = new Map<string, MetricsSampler>();
  /** Sandboxes whose events this node no longer publishes (the copy a move left behind). */
  readonly #silenced = new Set<string>();
  /** Archives of sandboxes moving here. */
  readonly #receiver: Receiver;
  /** Answers by request id: a request asked again is not done again. */
  readonly #replies = new ReplyCache();
  #subs: NatsSubscription[] = [];
  #createSub: NatsSubscription | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** The inbox the stream's acks of this node's events come to. */
  readonly #acks = createInbox();
  #draining = false;
  #closed: Promise<void> | undefined;

  private constructor(options: NodeServiceOptions, cluster: Cluster, sup: Supervisor) {
    this.name = options.name;
    this.#cluster = cluster;
    this.#sup = sup;
    this.#labels = { ...(options.labels ?? {}) };
    this.#heartbeatMs = options.heartbeatMs ?? 1000;
    this.#capacity = {
      memoryMib: options.memoryMib ?? Math.max(0, Math.floor(totalmem() / 2 ** 20) - 1024),
      cpus: availableParallelism(),
      sandboxes: sup.maxSandboxes,
    };
    this.#receiver = new Receiver(join(options.stateDir, 'incoming'), {
      hold: (name, memoryMib) => {
        this.#assertRoom(name, memoryMib);
        this.#creating.set(name, memoryMib);
      },
      release: (name) => this.#creating.delete(name),
    });
  }

  /** Connects, opens the supervisor, serves and registers. Resolves once registered. */
  static async start(options: NodeServiceOptions): Promise<NodeService> {
    if (typeof options?.name !== 'string' || !NAME_RE.test(options.name)) throw new InvalidOptionError('name', 'lowercase letters, digits and dashes, not starting or ending with a dash', options?.name);
    const heartbeatMs = options.heartbeatMs ?? 1000;
    if (!Number.isInteger(heartbeatMs) || heartbeatMs < 50) throw new InvalidOptionError('heartbeatMs', 'an integer of ms ≥ 50', options.heartbeatMs);
    if (options.memoryMib !== undefined && (!Number.isInteger(options.memoryMib) || options.memoryMib < 1)) throw new InvalidOptionError('memoryMib', 'a positive integer of MiB', options.memoryMib);
    for (const [k, v] of Object.entries(options.labels ?? {})) if (!k || typeof v !== 'string') throw new InvalidOptionError('labels', 'key=value pairs of strings', options.labels);
    const startTimeoutMs = options.startTimeoutMs ?? 120_000;
    if (!Number.isInteger(startTimeoutMs) || startTimeoutMs < 1000) throw new InvalidOptionError('startTimeoutMs', 'an integer of ms ≥ 1000', options.startTimeoutMs);
    // Each step of a start-up is bounded by NATS request timeouts; the whole is bounded too,
    // and a start-up that runs late says at which step it is.
    const progress = { step: 'connecting to the NATS servers' };
    const work = NodeService.#open(options, heartbeatMs, progress);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CorralError('E_TIMEOUT', `node "${options.name}" did not start within ${startTimeoutMs} ms: it was ${progress.step}`, { details: { step: progress.step } })), startTimeoutMs);
    });
    try {
      return await Promise.race([work, late]);
    } catch (err) {
      // One that finishes after all is closed again; one that fails says why in the log.
      void work.then((node) => node.close()).catch(logFailure(`starting node "${options.name}" (given up on)`));
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  static async #open(options: NodeServiceOptions, heartbeatMs: number, progress: { step: string }): Promise<NodeService> {
    const cluster = await Cluster.connect({ ...options, name: `corral-node-${options.name}`, lostAfterMs: Math.max(3000, heartbeatMs * 3) });
    let sup: Supervisor | undefined;
    try {
      if (cluster.nodeAlive(options.name)) throw new CorralError('E_CLUSTER', `a node named "${options.name}" is registered and alive already`);
      progress.step = 'opening its supervisor';
      // Its sandboxes' workers publish their events into the stream themselves, as this node.
      const events = {
        servers: typeof options.servers === 'string' ? [options.servers] : [...options.servers],
        ...(options.user !== undefined ? { user: options.user } : {}),
        ...(options.pass !== undefined ? { pass: options.pass } : {}),
        ...(options.nkeySeedFile !== undefined ? { nkeySeedFile: options.nkeySeedFile } : {}),
        ...(options.credsFile !== undefined ? { credsFile: options.credsFile } : {}),
        ...(options.tls !== undefined ? { tls: options.tls } : {}),
        name: `corral-node-${options.name}-events`,
      };
      // ...and answer their plain calls themselves (src/cluster/SandboxCalls.ts).
      const callSubject = (sandbox: string) => nodeSubject(options.name, sandboxVerb(sandbox));
      sup = new Supervisor({ stateDir: options.stateDir, events, callSubject, ...(options.maxSandboxes !== undefined ? { maxSandboxes: options.maxSandboxes } : {}) });
      const node = new NodeService(options, cluster, sup);
      await node.#serve(progress);
      return node;
    } catch (err) {
      await sup?.close();
      await cluster.close();
      throw err;
    }
  }

  /**
   * A node that comes back (same name, same state dir) runs none of the sandboxes the catalog
   * may still give it: its VMs ended with its last process. Their entries say stopped, with
   * the reason its store gives (crashed when it died under them).
   */
  async #reconcile(): Promise<void> {
    for (const entry of await this.#cluster.catalog({ raw: true })) {
      if (entry.node !== this.name || entry.status === 'stopped') continue;
      const rec = this.#sup.reconcile(entry.name);
      const stopReason = rec?.status === 'stopped' ? (rec.stopReason ?? 'crashed') : 'crashed';
      await this.#cluster.putCatalog({ ...entry, status: 'stopped', stopReason, updatedAt: Date.now() });
    }
  }

  async #serve(progress: { step: string }): Promise<void> {
    const step = (what: string) => {
      progress.step = what;
      runtimeLog.debug(`node "${this.name}": ${what}`);
    };
    step('reconciling its catalog entries');
    await this.#reconcile();
    step('subscribing to its subjects');
    const nc = this.#cluster.connection;
    this.#subs.push(
      nc.subscribe(this.#acks, {
        callback: (err, msg) => {
          if (err) return logFailure(`reading the event stream's acks`)(err);
          const ack = decode<{ error?: { description?: string } }>(msg.data);
          if (ack.error) logFailure('storing an event in the stream')(new Error(ack.error.description ?? JSON.stringify(ack.error)));
        },
      }),
    );
    this.#sup.events$.subscribe((e) => this.#onEvent(e));
    this.#createSub = nc.subscribe(nodeSubject(this.name, 'create'), { callback: (err, msg) => this.#handle(err, msg, (p) => this.#create(p as { config: SandboxConfig })) });
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'config'), { callback: (err, msg) => this.#handle(err, msg, async (p) => this.#config((p as { name: string }).name)) }));
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'start'), { callback: (err, msg) => this.#handle(err, msg, (p) => this.#start((p as { name: string }).name)) }));
    this.#subs.push(
      nc.subscribe(nodeSubject(this.name, 'logs'), {
        callback: (err, msg) =>
          this.#handle(err, msg, async (p) => {
            const { name, options } = p as { name: string; options?: LogsOptions };
            return this.#sup.logs(name, options ?? {});
          }),
      }),
    );
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'drain'), { callback: (err, msg) => this.#handle(err, msg, (p) => this.drain({ migrate: (p as { migrate?: unknown } | null)?.migrate === true })) }));
    this.#subs.push(
      nc.subscribe(nodeSubject(this.name, 'receive.*'), {
        callback: (err, msg) => this.#handle(err, msg, (p) => this.#receive(msg.subject.slice(nodeSubject(this.name, 'receive.').length), p as Record<string, unknown>)),
      }),
    );
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'snapshot.list'), { callback: (err, msg) => this.#handle(err, msg, async () => this.#sup.snapshots().map((m) => m.name)) }));
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'metrics'), { callback: (err, msg) => this.#handle(err, msg, (p) => this.#metrics(p as { name?: unknown; sampler?: unknown })) }));
    this.#subs.push(
      nc.subscribe(nodeSubject(this.name, 'snapshot.remove'), {
        callback: (err, msg) => this.#handle(err, msg, async (p) => (await this.#sup.removeSnapshot(validateName((p as { name?: unknown })?.name, 'snapshot name')), null)),
      }),
    );
    this.#subs.push(nc.subscribe(nodeSubject(this.name, 'remove'), { callback: (err, msg) => this.#handle(err, msg, (p) => this.#remove((p as { name: string }).name)) }));
    this.#subs.push(
      nc.subscribe(nodeSubject(this.name, 'sb.*'), {
        callback: (err, msg) => this.#handle(err, msg, (p) => this.#call(msg.subject.slice(nodeSubject(this.name, 'sb.').length), p as { name: string; args: unknown[] })),
      }),
    );
    await nc.flush();
    step('registering');
    await this.#register();
    this.#timer = setInterval(() => void this.#register().catch(logFailure(`heartbeat of node "${this.name}"`)), this.#heartbeatMs);
  }

  #handle(err: Error | null, msg: Msg, fn: (payload: unknown) => Promise<unknown>): void {
    if (err) return logFailure(`serving node "${this.name}"`)(err);
    // A client asks again (same id) when an answer is late: the work is done once.
    const id = msg.headers?.get(REQUEST_ID_HEADER) || undefined;
    void this.#replies
      .answer(id, async () => {
        try {
          return encode({ result: (await fn(decode(msg.data))) ?? null });
        } catch (e) {
          return errorReply(e);
        }
      })
      .then((reply) => {
        // The connection may be closing under a late answer: that is logged, not thrown.
        try {
          msg.respond(reply);
        } catch (e) {
          logFailure(`answering ${msg.subject}`)(e);
        }
      });
  }

  /** The registry entry as of now. */
  record(): NodeRecord {
    let used = 0;
    for (const l of this.#live.values()) used += l.config.memoryMib;
    for (const m of this.#creating.values()) used += m;
    const count = this.#live.size + this.#creating.size;
    return {
      name: this.name,
      labels: this.#labels,
      capacity: this.#capacity,
      free: { memoryMib: Math.max(0, this.#capacity.memoryMib - used), sandboxes: Math.max(0, this.#capacity.sandboxes - count) },
      sandboxes: this.#live.size,
      heartbeatMs: this.#heartbeatMs,
      startedAt: this.#startedAt,
      draining: this.#draining,
      workerCalls: true,
    };
  }

  async #register(): Promise<void> {
    if (this.#closed) return;
    await this.#cluster.registry.put(this.name, encode(this.record()));
  }

  async #create(payload: { config: SandboxConfig }): Promise<SandboxInfo> {
    const config = payload?.config;
    const name = config?.name;
    if (typeof name !== 'string') throw new InvalidOptionError('config.name', 'a sandbox name', name);
    // The catalog entry is the cluster's claim on the name: a same-named record of an
    // earlier life of this node's state dir is replaced.
    return this.#boot(name, typeof config.memoryMib === 'number' ? config.memoryMib : 0, () => this.#sup.create(config, { replace: true }), Date.now());
  }

  /** Boots a stopped sandbox of this node again, from its config and upper disk. */
  async #start(name: string): Promise<SandboxInfo> {
    if (this.#live.has(name)) throw new CorralError('E_ILLEGAL_STATE', `cannot start sandbox "${name}": it is running on node "${this.name}"`, { details: { state: 'running' } });
    await this.#releaseOf.get(name);
    const rec = this.#sup.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" on node "${this.name}"`);
    return this.#boot(name, rec.config.memoryMib, () => this.#sup.restart(name), rec.createdAt);
  }

  /** E_CLOSED, or E_NO_CAPACITY, unless this node takes a new sandbox of `memoryMib`. */
  #assertRoom(name: string, memoryMib: number): void {
    if (this.#closed) throw new CorralError('E_CLOSED', `node "${this.name}" is shutting down`);
    if (this.#draining) throw new CorralError('E_NO_CAPACITY', `node "${this.name}" is draining: it takes no new sandboxes`);
    const rec = this.record();
    if (rec.free.sandboxes < 1 || rec.free.memoryMib < memoryMib) {
      throw new CorralError('E_NO_CAPACITY', `node "${this.name}" has no room for "${name}" (${memoryMib} MiB asked; ${rec.free.memoryMib} MiB and ${rec.free.sandboxes} slots free)`);
    }
  }

  async #boot(name: string, memoryMib: number, make: () => Promise<WorkerLink>, createdAt: number): Promise<SandboxInfo> {
    this.#assertRoom(name, memoryMib);
    this.#creating.set(name, memoryMib);
    let link: WorkerLink;
    try {
      await this.#register();
      link = await make();
    } finally {
      this.#creating.delete(name);
    }
    this.#live.set(name, link);
    const now = Date.now();
    const entry: CatalogEntry = { name, node: this.name, status: 'running', stopReason: null, image: link.config.image, labels: link.config.labels ?? {}, memoryMib: link.config.memoryMib, createdAt, updatedAt: now };
    this.#entries.set(name, entry);
    await this.#cluster.putCatalog(entry);
    await this.#register();
    const released = this.#releaseWhenStopped(link).finally(() => {
      this.#releases.delete(released);
      if (this.#releaseOf.get(name) === released) this.#releaseOf.delete(name);
    });
    this.#releases.add(released);
    this.#releaseOf.set(name, released);
    return { ...(await link.api.info()), node: this.name };
  }

  /** Once the sandbox stopped (however): answers first, then its worker goes, then the registry says so. */
  async #releaseWhenStopped(link: WorkerLink): Promise<void> {
    const name = link.config.name;
    try {
      await link.api.stopped();
    } catch (err) {
      if (!(err instanceof CorralError && (err.code === 'E_CLOSED' || err.code === 'E_WORKER_CRASHED'))) logFailure(`waiting for sandbox "${name}" to stop`)(err);
    }
    // The calls its worker answers end there first (their answers out), then those here.
    await link.api.closeCalls().catch((err: unknown) => {
      if (!(err instanceof CorralError && (err.code === 'E_CLOSED' || err.code === 'E_WORKER_CRASHED'))) logFailure(`ending the calls of sandbox "${name}"`)(err);
    });
    await Promise.allSettled([...(this.#inflight.get(name)?.keys() ?? [])]);
    if (this.#live.get(name) === link) this.#live.delete(name);
    for (const key of this.#samplers.keys()) if (key.startsWith(`${name}/`)) this.#samplers.delete(key);
    await this.#sup.release(link).catch(logFailure(`releasing sandbox "${name}"`));
    const rec = this.#sup.reconcile(name);
    await this.#setStatus(name, 'stopped', rec?.stopReason ?? 'crashed').catch(logFailure(`writing the catalog entry of "${name}"`));
    await this.#register().catch(logFailure(`registering node "${this.name}"`));
  }

  async #call(method: string, payload: { name: string; args: unknown[] }): Promise<unknown> {
    if (!CALLS.has(method)) throw new TypeError(`unknown sandbox method ${method}`);
    const name = payload?.name;
    await this.#moving.get(name);
    this.#assertHere(name);
    const link = this.#live.get(name);
    if (!link) {
      const rec = this.#sup.reconcile(name);
      if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" on node "${this.name}"`);
      if (INFO_CALLS.has(method) && method !== 'start') return this.#recordInfo(name);
      throw new CorralError('E_ILLEGAL_STATE', `cannot ${method} sandbox "${name}": it is ${rec.status}`, { details: { state: rec.status } });
    }
    const fn = (link.api as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method]!;
    // JSON has no undefined: an omitted optional argument arrives as null.
    const p = fn(...(payload.args ?? []).map((a) => (a === null ? undefined : a)));
    let set = this.#inflight.get(name);
    if (!set) this.#inflight.set(name, (set = new Map()));
    set.set(p, method);
    try {
      const result = await p;
      // Answered by the copy that stayed behind as it was moved (a stopped() that saw it end):
      // the caller asks the node it moved to.
      this.#assertHere(name);
      if (!INFO_CALLS.has(method)) return result;
      const info = result as SandboxInfo;
      // The verbs that end the sandbox answer once the catalog says so: the caller's next
      // remove() or list(), from any process, reads it stopped.
      if (info.status === 'stopped') await this.#setStatus(name, 'stopped', info.stopReason);
      return { ...info, node: this.name };
    } finally {
      set.delete(p);
    }
  }

  /**
   * Takes no new sandboxes from now on, and drains each live one (new execs refused, running
   * ones finish, then it stops: reason `drained`). Resolves with the time each took.
   *
   * `migrate`: moves each running sandbox to another node instead, one at a time (memory
   * snapshot → archive → transfer → restore there, under the same name, its files and
   * processes with it); one that cannot move (no room elsewhere, a paused one) stays here,
   * running, and says why in its report line.
   */
  async drain(options: { migrate?: boolean } = {}): Promise<DrainReport> {
    this.#draining = true;
    await this.#register();
    if (options.migrate) {
      const sandboxes: DrainReport['sandboxes'][number][] = [];
      for (const link of [...this.#live.values()]) sandboxes.push(await this.#migrate(link));
      return { node: this.name, sandboxes };
    }
    const sandboxes = await Promise.all(
      [...this.#live.values()].map(async (link) => {
        const t0 = performance.now();
        try {
          const info = (await this.#call('drain', { name: link.config.name, args: [] })) as SandboxInfo;
          await this.#releaseOf.get(link.config.name);
          return { name: link.config.name, ms: performance.now() - t0, stopReason: info.stopReason };
        } catch (err) {
          return { name: link.config.name, ms: performance.now() - t0, stopReason: null, error: serializeError(err) };
        }
      }),
    );
    return { node: this.name, sandboxes };
  }

  /**
   * Moves one sandbox to the best other node. Calls to it wait meanwhile; once it runs there,
   * the copy here ends without a word on the event stream (the sandbox did not stop), its
   * record and disk go, an exec that was running here ends with E_SANDBOX_MOVED (its process
   * runs on there), and callers are sent there (E_SANDBOX_MOVED, which handles follow).
   */
  async #migrate(link: WorkerLink): Promise<DrainReport['sandboxes'][number]> {
    const name = link.config.name;
    const t0 = performance.now();
    let done!: () => void;
    this.#moving.set(name, new Promise<void>((resolve) => (done = resolve)));
    const snapshot = `moved-${nuid.next().toLowerCase()}`;
    const file = join(this.#sup.stateDir, 'incoming', `${snapshot}.out`);
    let paused = false;
    let held = false;
    let to: string | undefined;
    try {
      // In flight before the move began: their answers come first (not a stopped(), which
      // waits for the end: it is answered by the node it moved to). Those its worker answers
      // wait there meanwhile.
      held = true;
      await link.api.holdCalls();
      await Promise.allSettled([...(this.#inflight.get(name) ?? [])].filter(([, m]) => m !== 'stopped').map(([p]) => p));
      const running = await link.api.execs();
      // Saved, then frozen at once: what the guest does after the save would be lost.
      await link.api.snapshot(snapshot);
      await link.api.pause();
      paused = true;
      await mkdir(dirname(file), { recursive: true, mode: 0o700 });
      await this.#sup.exportSnapshot(snapshot, file);
      const bytes = (await stat(file)).size;
      const createdAt = this.#entries.get(name)?.createdAt ?? Date.now();
      const targets = rankNodes((await this.#cluster.nodes()).filter((n) => n.name !== this.name), { memoryMib: link.config.memoryMib });
      let lastFull: unknown;
      for (const target of targets) {
        try {
          await sendArchive(this.#cluster, target.name, file, bytes, { name, memoryMib: link.config.memoryMib, config: link.config, createdAt });
          to = target.name;
          break;
        } catch (err) {
          if (!(err instanceof CorralError && (err.code === 'E_NO_CAPACITY' || err.code === 'E_NODE_LOST'))) throw err;
          lastFull = err;
        }
      }
      if (!to) throw lastFull;
      // It runs there now, and its node wrote its catalog entry: this one is no longer ours.
      this.#movedTo.set(name, to);
      this.#entries.delete(name);
      this.#silenced.add(name);
      await link.api.closeCalls(serializeError(movedError(name, this.name, to))).catch(logFailure(`ending the calls of the copy of "${name}" left on node "${this.name}"`));
      // Its worker publishes no more of its events, and the server has those before: the
      // move's events below follow them in the stream.
      await link.api.silenceEvents().catch(logFailure(`silencing the copy of "${name}" left on node "${this.name}"`));
      await link.api.kill().catch(logFailure(`ending the copy of "${name}" left on node "${this.name}"`));
      await this.#releaseOf.get(name);
      await this.#sup.remove(name).catch(logFailure(`removing the copy of "${name}" left on node "${this.name}"`));
      const ms = performance.now() - t0;
      const moved = movedError(name, this.name, to);
      for (const x of running) this.#publish({ type: 'exec.failed', name, seq: 0, ts: Date.now(), execId: x.id, error: serializeError(moved) } as SandboxEvent);
      this.#publish({ type: 'sandbox.moved', name, seq: 0, ts: Date.now(), from: this.name, to, ms } as SandboxEvent);
      return { name, ms, stopReason: null, movedTo: to };
    } catch (err) {
      if (paused && !to) await link.api.resume().catch(logFailure(`resuming "${name}" after its move failed`));
      if (held && !to) await link.api.openCalls().catch(logFailure(`letting the calls of "${name}" go on after its move failed`));
      return { name, ms: performance.now() - t0, stopReason: null, error: serializeError(err) };
    } finally {
      this.#moving.delete(name);
      done();
      await this.#sup.removeSnapshot(snapshot).catch((err: unknown) => {
        if (!(err instanceof CorralError && err.code === 'E_SNAPSHOT_NOT_FOUND')) logFailure(`removing the move snapshot of "${name}"`)(err);
      });
      await rm(file, { force: true });
    }
  }

  /** A step of a sandbox moving here (src/node/transfer.ts). */
  async #receive(step: string, p: Record<string, unknown>): Promise<unknown> {
    switch (step) {
      case 'begin':
        return this.#receiver.begin(p);
      case 'chunk':
        return this.#receiver.chunk(p);
      case 'abort':
        return this.#receiver.abort(p);
      case 'end':
        return this.#receiver.end(p, async (name, file) => {
          const config = p.config as SandboxConfig;
          if (config?.name !== name) throw new InvalidOptionError('config.name', `"${name}", the sandbox the transfer began for`, config?.name);
          const snapshot = `moved-${nuid.next().toLowerCase()}`;
          await this.#sup.importSnapshot(file, { name: snapshot });
          try {
            // Restored from the move's snapshot, which stays while the sandbox does (a start()
            // after a stop boots from it again): removed with it.
            return await this.#boot(name, config.memoryMib, () => this.#sup.create({ ...config, fromSnapshot: snapshot }, { replace: true }), typeof p.createdAt === 'number' ? p.createdAt : Date.now());
          } catch (err) {
            await this.#sup.removeSnapshot(snapshot).catch(logFailure(`removing the snapshot of "${name}" that did not boot`));
            throw err;
          }
        });
      default:
        throw new TypeError(`unknown receive step ${step}`);
    }
  }

  /**
   * One sample of a sandbox's resource use, taken here where its VM runs, by the sampler of
   * the asking handle (its CPU % is since that handle's previous sample). Samplers of
   * sandboxes that ended go; at most 1024 are kept (the oldest go first).
   */
  async #metrics(p: { name?: unknown; sampler?: unknown }): Promise<SandboxMetrics> {
    const name = typeof p?.name === 'string' ? p.name : '';
    if (typeof p?.sampler !== 'string' || p.sampler.length > 64) throw new InvalidOptionError('sampler', 'a sampler id (≤ 64 characters)', p?.sampler);
    this.#assertHere(name);
    const link = this.#live.get(name);
    if (!link) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${name}" has no running VM on node "${this.name}"`, { details: { state: 'stopped' } });
    const key = `${name}/${p.sampler}`;
    let sampler = this.#samplers.get(key);
    if (!sampler) {
      sampler = linkSampler(name, link.config.memoryMib, () => link, () => link.api.info());
      this.#samplers.set(key, sampler);
      if (this.#samplers.size > 1024) this.#samplers.delete(this.#samplers.keys().next().value!);
    }
    return sampler.sample();
  }

  /** E_SANDBOX_MOVED for a sandbox moved to another node. */
  #assertHere(name: string): void {
    const to = this.#movedTo.get(name);
    if (to) throw movedError(name, this.name, to);
  }

  /** The config a sandbox of this node was created from. */
  #config(name: string): SandboxConfig {
    this.#assertHere(name);
    const config = this.#live.get(name)?.config ?? this.#sup.reconcile(name)?.config;
    if (!config) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" on node "${this.name}"`);
    return config;
  }

  #recordInfo(name: string): SandboxInfo {
    return { ...recordedInfo(name, this.#sup.reconcile(name)), node: this.name };
  }

  async #remove(name: string): Promise<null> {
    const link = this.#live.get(name);
    if (link) {
      const info = await link.api.info().catch((err: unknown) => logFailure(`reading the state of "${name}" before its removal`)(err));
      if (info && info.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is ${info.status} on node "${this.name}" (stop it first)`, { details: { state: info.status } });
    }
    // Stopped a moment ago, its release (which ends its worker) may still be under way.
    await this.#releaseOf.get(name);
    const rec = this.#sup.reconcile(name);
    if (rec) await this.#sup.remove(name);
    // A sandbox that moved here took its snapshot along: it goes with it.
    const from = rec?.config.fromSnapshot;
    if (from?.startsWith('moved-')) await this.#sup.removeSnapshot(from).catch(logFailure(`removing the move snapshot of "${name}"`));
    this.#entries.delete(name);
    return null;
  }

  #onEvent(e: SandboxEvent): void {
    // The copy left behind by a move ends in silence: the sandbox runs on elsewhere.
    if (this.#silenced.has(e.name)) return;
    const status = e.type === 'sandbox.paused' ? 'paused' : e.type === 'sandbox.resumed' ? 'running' : e.type === 'sandbox.draining' ? 'draining' : undefined;
    // A sandbox frozen for its move: the catalog goes on saying running (then the node it
    // moved to writes it), so a late write from here cannot put it back on this node.
    if (status && !this.#moving.has(e.name)) void this.#setStatus(e.name, status, null).catch(logFailure(`writing the catalog entry of "${e.name}"`));
    // Its worker published it already, unless the supervisor made it (a worker that died).
    if (!this.#sup.publishedByWorker(e)) this.#publish(e);
  }

  #publish(e: SandboxEvent): void {
    const nc = this.#cluster.connection;
    // The events this node makes itself (a move's, a crashed worker's): the sandbox's worker
    // published the ones before on its own connection, flushed first (silenceEvents) where
    // it still runs. Acks come back to one inbox, a failed one is logged; none is waited for
    // (the stream republishes each to the live subject).
    try {
      for (const part of eventMessages(e, nc.info?.max_payload)) nc.publish(eventSubject(e.name), part, { reply: this.#acks });
    } catch (err) {
      // A closed or draining connection throws here: the event is lost to the stream, said so.
      logFailure(`publishing ${e.type} of "${e.name}"`)(err);
    }
  }

  async #setStatus(name: string, status: CatalogEntry['status'], stopReason: CatalogEntry['stopReason']): Promise<void> {
    const entry = this.#entries.get(name);
    if (!entry) return;
    const next = { ...entry, status, stopReason, updatedAt: Date.now() };
    this.#entries.set(name, next);
    await this.#cluster.putCatalog(next);
  }

  /**
   * Stops taking requests, stops its sandboxes (gracefully, escalating to kill), marks them
   * stopped in the catalog, deregisters and closes its connection. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#timer);
      this.#createSub?.unsubscribe();
      await Promise.allSettled(
        [...this.#live.values()].map(async (link) => {
          await link.api.stop().catch(logFailure(`stopping sandbox "${link.config.name}"`));
        }),
      );
      // The release of each (catalog: stopped) follows its stop.
      await Promise.allSettled([...this.#releases]);
      for (const s of this.#subs) s.unsubscribe();
      await this.#receiver.close();
      await this.#cluster.connection.flush();
      await this.#sup.close();
      await this.#cluster.registry.delete(this.name).catch(logFailure(`deregistering node "${this.name}"`));
      await this.#cluster.close();
    })();
    return this.#closed;
  }
}

/** E_SANDBOX_MOVED: `name` runs on node `to` now (details.node), not on `from`. */
function movedError(name: string, from: string, to: string): CorralError {
  return new CorralError('E_SANDBOX_MOVED', `sandbox "${name}" moved from node "${from}" to node "${to}"`, { details: { sandbox: name, from, node: to } });
}
