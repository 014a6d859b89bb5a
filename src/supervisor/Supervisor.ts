/**
 * One Supervisor per process: it owns the sandbox workers, the event bus and the store.
 *
 * Each sandbox is an actor hosted by a worker thread of its pool (src/pool: many actors per
 * worker by default, one worker each in strict isolation), reached through a link
 * (src/link: Comlink on a port of its own, or a detached host's socket); its events arrive on
 * that same port, are recorded in the store where they change the record, and are published
 * on the bus. Their replay records and exec log entries are written by the worker itself
 * (src/events/EventRecorder.ts); this thread holds each event until that write commits, so
 * its own reads never miss one.
 */

import { parseKernelChoice } from '../runtime/kernel.ts';
import '../link/comlinkErrors.ts';
import { wrap } from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { MessageChannel } from 'node:worker_threads';
import { join } from 'node:path';
import { Observable } from 'rxjs';
import { EventBus } from '../bus/EventBus.ts';
import type { SandboxEvent } from '../bus/events.ts';
import type { NatsTarget } from '../cluster/natsConnect.ts';
import { normalizeConfig, type SandboxConfig } from '../config.ts';
import { secretsFor } from '../image/secrets.ts';
import { CorralError, InvalidOptionError, deserializeError, serializeError, type SerializedError } from '../errors.ts';
import { SocketLink } from '../link/SocketLink.ts';
import { controlSocketPath } from '../link/wire.ts';
import { sparesEnabled, spareSocketPath, startSpare, takeSpare, type TakenSpare } from '../link/spareHost.ts';
import { sweepStaleRunDirs } from '../vm/Vm.ts';
import { sweepStaleCgroups } from '../vm/cgroups.ts';
import { sweepStaleUidClaims } from '../vm/jail.ts';
import { defaultStateDir } from '../runtime/artifacts.ts';
import { isSandboxVm, processAlive } from '../runtime/process.ts';
import { holding } from '../runtime/hold.ts';
import { sandboxDir } from '../runtime/rootfs.ts';
import { sparesDir, sweepStaleSpares } from '../snapshot/spares.ts';
import { listSnapshots, readSnapshot, removeSnapshot, snapshotDevices, type SnapshotMeta } from '../snapshot/snapshots.ts';
import { exportSnapshot, importSnapshot, type ExportResult } from '../snapshot/portable.ts';
import { snapshotGuestFields } from '../guestenv/guestConfig.ts';
import { Store, type SandboxRecord } from '../store/Store.ts';
import { ReplayLog, replayLimits, type ReplayLimits } from '../events/ReplayLog.ts';
import { EventRecorder, type RecordLimits } from '../events/EventRecorder.ts';
import { UncommittedEvents } from '../events/UncommittedEvents.ts';
import { supervisorEvents, type EventsOptions } from './supervisorEvents.ts';
import { ExecLog, execLogLimits, type ExecLogLimits, type LogEntry, type LogsOptions } from '../logs/ExecLog.ts';
import type { EventEnvelope, InspectionEnvelope, SandboxInfo, SandboxWorkerApi, SandboxWorkerData, WireInspectionEvent } from '../actor/contract.ts';
import { inspectionRelay, type InspectOption } from './inspection.ts';
import type { SandboxLink } from '../link/SandboxLink.ts';
import { WorkerLink } from '../link/WorkerLink.ts';
import { SandboxPool, validatePoolOptions, type Isolation } from '../pool/SandboxPool.ts';
import { captureActorEnv } from '../runtime/actorEnv.ts';
import { ROOT, distEntry } from '../runtime/dist.ts';
import { logFailure } from '../runtime/log.ts';
/**
 * How long a sandbox's release waits for its worker to commit the records of the events it
 * posted; past it (the worker hangs) they are written from here.
 */
const SETTLE_MS = 10_000;
const HOST_MAIN = join(ROOT, 'src', 'detached', 'hostMain.ts');
/** tsx's loader, resolved from here so the host starts whatever the caller's cwd. */
const TSX_LOADER = import.meta.resolve('tsx');

/** Options of a {@link Supervisor}. */
export interface SupervisorOptions {
  /** Where LMDB and sandbox disks live. Default `CORRAL_STATE_DIR` or `~/.local/state/corral`. */
  readonly stateDir?: string;
  /** Most sandboxes this supervisor runs at once. Default 64. */
  readonly maxSandboxes?: number;
  /**
   * MiB of host memory (MemAvailable) that must stay free once a new sandbox's guest has its
   * RAM: a create that would go below fails with E_NO_CAPACITY instead of the host swapping
   * or its OOM killer choosing. Default 256; 0 turns the check off.
   */
  readonly memoryHeadroomMib?: number;
  /** Bounds of the per-sandbox event replay buffer (see {@link Supervisor.events}). */
  readonly replay?: ReplayLimits;
  /** Bounds of the per-sandbox exec logs (see {@link Supervisor.logs}). */
  readonly logs?: ExecLogLimits;
  /**
   * Worker threads of the sandbox pool, each hosting any number of sandboxes (the least
   * loaded takes the next create). A positive integer; default `os.availableParallelism()`.
   */
  readonly workers?: number;
  /**
   * `'shared'` (default): sandboxes share the pool's workers (a worker that crashes fails
   * only its own sandboxes). `'worker'`: one worker thread per sandbox, as a thread boundary
   * around each (~35 MiB of host memory per sandbox).
   */
  readonly isolation?: Isolation;
  /**
   * Spare VMs each worker keeps ready per template shape: restored, warmed and frozen before
   * a create asks, so a create of that shape skips qemu's start, the restore and the first
   * exec's cost. Each costs a frozen VM's memory (~33 MiB) and no CPU while it waits; after
   * a create takes one, another is made in the background. Only sandboxes without volumes,
   * a network or ports take spares; none in `isolation: 'worker'`. An integer 0–4; default 0.
   */
  readonly spares?: number;
  /**
   * Receives the XState inspection events of this supervisor's sandbox actors (the
   * `inspect` that `createActor` takes: a function or an observer), so `@statelyai/inspect`
   * or any tool built for XState can be attached. Sandboxes hosted by this supervisor's
   * workers only (not detached ones, whose actors run in their own host process).
   *
   * @example
   * const inspector = createWebSocketInspector({ url: 'ws://localhost:8080' });
   * const sup = new Supervisor({ inspect: inspector.inspect });
   */
  readonly inspect?: InspectOption;
  /**
   * @internal a cluster node's: its sandboxes' workers publish their events into the
   * cluster's stream themselves, with these servers and credentials (see
   * {@link Supervisor.publishedByWorker}).
   */
  readonly events?: NatsTarget;
  /**
   * @internal a cluster node's (with `events`): the subject under which a sandbox's worker
   * answers its plain calls itself, on that connection (src/cluster/SandboxCalls.ts).
   */
  readonly callSubject?: (sandbox: string) => string;
}

/** Options of {@link Supervisor.create}. */
export interface CreateOptions {
  /** Stop and remove a same-named sandbox first instead of failing. */
  readonly replace?: boolean;
  readonly signal?: AbortSignal;
  /** @internal set by a detached sandbox's host process. */
  readonly controlSocket?: string;
}

/**
 * @example
 * const sup = new Supervisor({ stateDir: '/tmp/corral' });
 * sup.events$.subscribe((e) => console.log(e.name, e.type));
 * const ctl = await sup.create(config);
 * await sup.close();
 */
export class Supervisor {
  readonly stateDir: string;
  readonly maxSandboxes: number;
  readonly memoryHeadroomMib: number;
  readonly #bus = new EventBus();
  readonly #store: Store;
  readonly #replay: ReplayLog;
  readonly #execLog: ExecLog;
  readonly #recordLimits: RecordLimits;
  /**
   * Per sandbox of this supervisor (its current life): the events received from its worker
   * whose records that worker has not committed yet; reads join them to the store's.
   */
  readonly #uncommitted = new Map<string, UncommittedEvents>();
  /** Writes from this thread of a sandbox's last life (#writeHere): its next life waits for them. */
  readonly #writingHere = new Map<string, Promise<void>>();
  readonly #live = new Map<string, WorkerLink>();
  readonly #pool: SandboxPool;
  readonly #spares: number;
  readonly #inspect: ((wire: WireInspectionEvent) => void) | undefined;
  readonly #events: NatsTarget | undefined;
  readonly #callSubject: ((sandbox: string) => string) | undefined;
  /** The events a worker published into a cluster's stream itself (with {@link SupervisorOptions.events}). */
  readonly #publishedByWorker = new WeakSet<SandboxEvent>();
  /** The uncommitted events of each link's actor (see #uncommitted). */
  readonly #heldBy = new WeakMap<WorkerLink, UncommittedEvents>();
  #closed: Promise<void> | undefined;

  /** Every event of every sandbox of this supervisor. */
  readonly events$: Observable<SandboxEvent>;

  constructor(options: SupervisorOptions = {}) {
    this.stateDir = options.stateDir ?? defaultStateDir();
    this.maxSandboxes = options.maxSandboxes ?? 64;
    if (!Number.isInteger(this.maxSandboxes) || this.maxSandboxes < 1) {
      throw new InvalidOptionError('maxSandboxes', 'a positive integer', options.maxSandboxes);
    }
    this.memoryHeadroomMib = options.memoryHeadroomMib ?? 256;
    if (!Number.isInteger(this.memoryHeadroomMib) || this.memoryHeadroomMib < 0) {
      throw new InvalidOptionError('memoryHeadroomMib', 'a non-negative integer of MiB', options.memoryHeadroomMib);
    }
    const spares = options.spares ?? 0;
    if (!Number.isInteger(spares) || spares < 0 || spares > 4) throw new InvalidOptionError('spares', 'an integer from 0 to 4', options.spares);
    // Validated before anything is opened: a bad option leaves nothing behind.
    this.#pool = new SandboxPool(validatePoolOptions({ ...(options.workers !== undefined ? { workers: options.workers } : {}), ...(options.isolation !== undefined ? { isolation: options.isolation } : {}) }));
    this.#recordLimits = { replay: replayLimits(options.replay), logs: execLogLimits(options.logs) };
    this.#store = Store.open(this.stateDir);
    const uncommitted = (name: string) => this.#uncommitted.get(name);
    this.#replay = new ReplayLog(this.#store, uncommitted);
    this.#execLog = new ExecLog(this.#store, this.#recordLimits.logs, uncommitted);
    this.events$ = this.#bus.events$;
    this.#spares = this.#pool.isolation === 'worker' ? 0 : spares;
    if (options.inspect !== undefined && typeof options.inspect !== 'function' && (typeof options.inspect !== 'object' || options.inspect === null)) {
      throw new InvalidOptionError('inspect', 'a function or an observer ({ next })', options.inspect);
    }
    this.#inspect = options.inspect ? inspectionRelay(options.inspect) : undefined;
    this.#events = options.events;
    this.#callSubject = options.callSubject;
    sweepStaleRunDirs();
    void sweepStaleCgroups().catch(logFailure('sweeping the cgroups of VMs that are gone'));
    void sweepStaleUidClaims().catch(logFailure('sweeping the uid claims of VMs that are gone'));
    sweepStaleSpares(this.stateDir);
    openSupervisors.add(this);
    // 'beforeExit', not 'exit': in an 'exit' hook lmdb-js 3.5 can no longer read ("No
    // current read transaction available") and a write there crashed the process (SIGSEGV).
    // An explicit process.exit() or a signal skips this; the next reader reconciles then
    // (the owner pid is dead).
    if (openSupervisors.size === 1) process.once('beforeExit', onProcessExit);
  }

  /** @internal when the process is about to exit: the VMs die with it; say so in the store. */
  markLiveAsKilled(): void {
    this.#recordKilled(this.#live.keys());
  }

  /** Records the sandboxes `names` stopped, reason killed (their VMs ended with their workers). */
  #recordKilled(names: Iterable<string>): void {
    for (const name of names) {
      const rec = this.#store.getSandbox(name);
      if (rec && rec.status !== 'stopped') {
        this.#store.putSandboxSync({ ...rec, status: 'stopped', state: 'stopped', stopReason: 'killed', updatedAt: Date.now() });
      }
    }
  }

  /** The sandbox worker pool (size, isolation, actors per worker). */
  get pool(): Pick<SandboxPool, 'size' | 'isolation' | 'workerCount' | 'loads' | 'warm'> {
    return this.#pool;
  }

  /** The bus, for typed filtering (`supervisor.bus.on('exec.exited')`). */
  get bus(): Pick<EventBus, 'on' | 'forSandbox' | 'events$'> {
    return this.#bus;
  }

  /** The store (read-only use by the SDK). */
  get store(): Store {
    return this.#store;
  }

  /**
   * @internal whether `e` (as {@link events$} gave it) is in the cluster's stream already,
   * published by the worker that made it; not so for the events this supervisor makes itself
   * (a worker that died: its sandbox's `sandbox.stopped`).
   */
  publishedByWorker(e: SandboxEvent): boolean {
    return this.#publishedByWorker.has(e);
  }

  /** @internal the replay buffer (a detached sandbox's host serves it on its socket). */
  get replayLog(): ReplayLog {
    return this.#replay;
  }

  /**
   * Events with resume: the buffered events after `since` exactly once, then live ones, with
   * no gap and no duplicate. With `name`: that sandbox's events, wherever it runs (a detached
   * one through its host), completing after `sandbox.stopped`. Without: every sandbox's,
   * `since` then being one seq for all or a `{ name: seq }` cursor. When the buffer no longer
   * reaches back to `since`, the stream starts with a `stream.gap` event saying what is lost.
   *
   * @example
   * sup.events({ name: 'worker', since: lastSeq }).subscribe((e) => (lastSeq = e.seq));
   */
  events(options: EventsOptions = {}): Observable<SandboxEvent> {
    return supervisorEvents(
      {
        read: (n, since) => this.#replay.read(n, since),
        names: () => this.#store.listSandboxes().map((r) => r.name),
        isLive: (n) => this.#live.has(n),
        record: (n) => this.reconcile(n),
        bus: this.#bus,
      },
      options,
    );
  }

  /**
   * The recorded output of a sandbox's execs, oldest first; also after it stopped (until it
   * is removed). Bounded per sandbox: the oldest output goes first.
   *
   * @example
   * sup.logs('worker', { tail: 10 }).map((e) => Buffer.from(e.data).toString()).join('')
   */
  logs(name: string, options: LogsOptions = {}): LogEntry[] {
    const entries = this.#execLog.read(name, options);
    if (entries.length === 0 && !this.#store.getSandbox(name)) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    return entries;
  }

  /**
   * The recorded output of a sandbox, then its new output as it is recorded (by this or any
   * other process sharing the state dir), each entry exactly once; completes once the sandbox
   * is stopped and its last output has been read. `since`/`tail` pick where to start.
   *
   * @example
   * sup.followLogs('worker', { tail: 10 }).subscribe((e) => process.stdout.write(e.data));
   */
  followLogs(name: string, options: LogsOptions & { readonly intervalMs?: number } = {}): Observable<LogEntry> {
    const { intervalMs = 200, ...first } = options;
    return new Observable<LogEntry>((sub) => {
      let last = 0;
      let timer: NodeJS.Timeout | undefined;
      const drain = (o: LogsOptions & { after?: number }): void => {
        for (const [n, e] of this.#execLog.readNumbered(name, o)) {
          last = n;
          sub.next(e);
        }
      };
      const poll = (): void => {
        try {
          const stopped = this.reconcile(name)?.status === 'stopped'; // read before draining: output of a stopped sandbox is final
          drain({ after: last, ...(first.execId !== undefined ? { execId: first.execId } : {}) });
          if (stopped) sub.complete();
          else timer = setTimeout(poll, intervalMs);
        } catch (e) {
          sub.error(e);
        }
      };
      try {
        if (!this.#store.getSandbox(name)) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
        const head = this.#execLog.readNumbered(name, first);
        for (const [n, e] of head) sub.next(e);
        last = head.at(-1)?.[0] ?? (first.tail !== undefined || first.since !== undefined ? this.#execLog.readNumbered(name, { tail: 1 }).at(-1)?.[0] ?? 0 : 0);
        poll();
      } catch (e) {
        sub.error(e);
      }
      return () => clearTimeout(timer);
    });
  }

  /** Live sandboxes of this supervisor. */
  get size(): number {
    return this.#live.size;
  }

  /**
   * Boots a sandbox in a new worker of this process (attached); resolves once it runs. On a
   * boot failure the worker is gone and the error says why.
   */
  async create(rawConfig: SandboxConfig, options: CreateOptions = {}): Promise<WorkerLink> {
    this.#assertOpen();
    const config = this.#withSnapshotShape(normalizeConfig(rawConfig));
    // A bad CORRAL_KERNEL fails here, before anything is recorded (the actor reads it again).
    parseKernelChoice(process.env.CORRAL_KERNEL);
    this.#assertCapacity(config);
    return holding(async () => {
      await this.#claimName(config.name, options.replace ?? false);
      await this.#putCreating({ name: config.name, config, createdAt: Date.now() }, options.controlSocket);
      return this.#boot(config, options);
    });
  }

  /**
   * Boots a stopped sandbox again from its persisted config and upper disk (files written
   * before the stop are still there).
   */
  async restart(name: string, options: Pick<CreateOptions, 'signal' | 'controlSocket'> = {}): Promise<WorkerLink> {
    this.#assertOpen();
    const rec = this.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    if (rec.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot start sandbox "${name}": it is ${rec.status}`, { details: { state: rec.status } });
    this.#assertCapacity(rec.config);
    return holding(async () => {
      await this.#putCreating(rec, options.controlSocket);
      return this.#boot(rec.config, options);
    });
  }

  /** Records a sandbox as being created by this process (keeping what `base` has, e.g. a pinned image). */
  async #putCreating(base: Pick<SandboxRecord, 'name' | 'config' | 'createdAt'> & Partial<SandboxRecord>, controlSocket: string | undefined): Promise<void> {
    await this.#store.putSandbox({
      ...base,
      status: 'creating',
      state: 'creating',
      ownerPid: process.pid,
      vmPid: null,
      stopReason: null,
      controlSocket: controlSocket ?? null,
      updatedAt: Date.now(),
    });
  }

  /**
   * A sandbox started from a snapshot must have the snapshot's shape (image, memory, cpus…):
   * its RAM and devices come from there. Its name, labels and policies stay its own, and
   * so do its volumes, network and ports where it sets them (src/guestenv/guestConfig.ts).
   */
  #withSnapshotShape(config: SandboxConfig): SandboxConfig {
    if (!config.fromSnapshot) return config;
    const meta = readSnapshot(this.stateDir, config.fromSnapshot);
    const src = meta.config;
    return normalizeConfig({
      ...src,
      ...snapshotGuestFields(src, config, snapshotDevices(meta), config.fromSnapshot),
      name: config.name,
      labels: config.labels,
      logLevel: config.logLevel,
      fromSnapshot: config.fromSnapshot,
      ...(config.maxDurationMs !== undefined ? { maxDurationMs: config.maxDurationMs } : { maxDurationMs: undefined }),
      ...(config.idleTimeoutMs !== undefined ? { idleTimeoutMs: config.idleTimeoutMs } : { idleTimeoutMs: undefined }),
    });
  }

  async #boot(config: SandboxConfig, options: Pick<CreateOptions, 'signal'>): Promise<WorkerLink> {
    // The last life's events written from here land before this life's first write drops them.
    const writing = this.#writingHere.get(config.name);
    if (writing) await writing;
    // Checked again where the sandbox joins the live set (no await in between): creates that
    // ran side by side all passed the check at their start.
    if (this.#live.size >= this.maxSandboxes) {
      await this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'boot-failed' });
      throw new CorralError('E_NO_CAPACITY', `cannot create sandbox "${config.name}": this supervisor already runs ${this.#live.size} sandboxes (maxSandboxes ${this.maxSandboxes})`);
    }
    // One channel for calls, answers and events: one port keeps them in posting order.
    const control = new MessageChannel();
    // Exec output bytes posted by the worker and not yet handled here: the worker stops
    // reading from the guest while too many are in flight (see OUTPUT_HIGH_WATER there).
    const outputInFlight = new Int32Array(new SharedArrayBuffer(4));
    // The worker records the sandbox's events in the store itself, and says in `written` how far it committed.
    const written = new BigInt64Array(new SharedArrayBuffer(8));
    const held = new UncommittedEvents(written);
    // Secrets (registryAuth.secret) go to the worker in memory, never in the config or argv.
    // The runtime variables go as the actor's own: its worker hosts other actors too.
    const data: SandboxWorkerData = { config, stateDir: this.stateDir, control: control.port2, secrets: secretsFor(config), env: captureActorEnv(), outputInFlight, records: { limits: this.#recordLimits, written }, spares: this.#spares, ...(this.#inspect ? { inspect: true } : {}), ...(this.#events ? { events: this.#events, ...(this.#callSubject ? { callSubject: this.#callSubject(config.name) } : {}) } : {}) };
    let ctl: WorkerLink | undefined;
    let lostBeforeStart: ((err: CorralError) => void) | undefined;
    const actor = this.#pool.host(data, [control.port2], (err) => {
      // Lost during start(): the create fails with a boot failure (the catch below records it).
      if (lostBeforeStart) lostBeforeStart(err);
      else if (ctl) void this.#onWorkerLost(ctl, err).catch((e: Error) => this.#log(`cannot record the crash of "${config.name}": ${e.message}`));
    });
    const api = wrap<SandboxWorkerApi>(nodeEndpoint(control.port1 as never));
    const events$ = this.#bus.forSandbox(config.name);
    ctl = new WorkerLink(config, actor, api, events$, (link) => this.release(link));
    const own = ctl;
    this.#live.set(config.name, ctl);
    this.#heldBy.set(ctl, held);
    this.#uncommitted.get(config.name)?.close();
    this.#uncommitted.set(config.name, held);
    control.port1.on('message', (m: Partial<EventEnvelope & InspectionEnvelope>) => {
      if (m.inspection) return this.#inspect?.(m.inspection);
      const e = m.event;
      if (!e) return; // a comlink answer
      own.lastSeq = e.seq;
      if (this.#events) this.#publishedByWorker.add(e);
      this.#onEvent(e, held, m.log, m.replayFrom);
      // Handled: the worker counts what LMDB has not committed yet itself.
      if (e.type === 'exec.stdout' || e.type === 'exec.stderr') Atomics.sub(outputInFlight, 0, e.data.byteLength);
    });
    // Unref after adding listeners: adding a 'message' listener refs a port again. Calls
    // hold the process themselves (the link's busy()).
    control.port1.unref();

    const abort = () => void own.api.kill().catch((err: Error) => this.#log(`kill of "${config.name}" on abort failed: ${err.message}`));
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      // Aborted before the listener was there (while the name was claimed, say): no boot.
      if (options.signal?.aborted) throw new CorralError('E_ABORTED', `create of sandbox "${config.name}" was aborted`, { cause: options.signal.reason });
      // A worker that dies before answering (a module that fails to load) must not hang create.
      const died = new Promise<never>((_, reject) => {
        lostBeforeStart = (err) => reject(new CorralError('E_BOOT_FAILED', `sandbox "${config.name}" failed to boot: ${err.message}`, { cause: err }));
      });
      died.catch(() => {}); // raced below; unraced once start() settled
      const info = await ctl.busy(() => Promise.race([own.api.start(), died]));
      lostBeforeStart = undefined;
      // Durable before create resolves: whoever reads the store next sees it running.
      await this.#store.patchSandbox(config.name, { status: info.status, state: info.state, vmPid: info.pid });
      return ctl;
    } catch (err) {
      lostBeforeStart = undefined;
      await this.#letGo(ctl);
      if (this.#live.get(config.name) === ctl) this.#live.delete(config.name);
      await this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'boot-failed' }).catch((e: Error) => this.#log(`cannot record the boot failure of "${config.name}": ${e.message}`));
      throw err;
    } finally {
      options.signal?.removeEventListener('abort', abort);
    }
  }

  /** Throws E_NO_CAPACITY, before anything is recorded or booted, when `config` does not fit now. */
  #assertCapacity(config: SandboxConfig): void {
    const full = this.#capacityLeft(config);
    if (full) throw new CorralError('E_NO_CAPACITY', `cannot create sandbox "${config.name}": ${full}`, { details: { live: this.#live.size, maxSandboxes: this.maxSandboxes, memoryHeadroomMib: this.memoryHeadroomMib } });
  }

  /** Why a sandbox of `config` does not fit now, or undefined when it does. */
  #capacityLeft(config: SandboxConfig): string | undefined {
    if (this.#live.size >= this.maxSandboxes) return `this supervisor already runs ${this.#live.size} sandboxes (maxSandboxes ${this.maxSandboxes})`;
    if (this.memoryHeadroomMib === 0) return undefined;
    const available = memAvailableMib();
    if (available !== undefined && available - config.memoryMib < this.memoryHeadroomMib) {
      return `the host has ${available} MiB of memory available; a ${config.memoryMib} MiB guest would leave less than memoryHeadroomMib ${this.memoryHeadroomMib}`;
    }
    return undefined;
  }

  /**
   * The worker hosting `ctl` died: the sandbox is stopped (`crashed`) with the worker's
   * error, in the record and on the bus (`sandbox.failed`, `sandbox.stopped`); its calls in
   * flight reject; its VM, spawned from that thread, got SIGKILL (pdeathsig), and a qemu
   * that somehow outlived it is killed here.
   */
  async #onWorkerLost(ctl: WorkerLink, error: CorralError): Promise<void> {
    const name = ctl.config.name;
    if (this.#live.get(name) === ctl) this.#live.delete(name);
    this.#log(`sandbox "${name}": ${error.message}`);
    try {
      const rec = this.#store.closed ? undefined : this.#store.getSandbox(name);
      // Whatever this step meets, the crash's record and events still follow: a failure here
      // once kept them from ever being published.
      try {
        if (rec?.vmPid && processAlive(rec.vmPid) && isSandboxVm(rec.vmPid, sandboxDir(this.stateDir, name), name)) process.kill(rec.vmPid, 'SIGKILL');
      } catch (err) {
        this.#log(`cannot make sure the VM ${rec?.vmPid} of "${name}" is gone: ${(err as Error).message}`);
      }
      if (!rec || rec.status === 'stopped') return;
      const serialized = serializeError(error);
      const stamp = () => ({ name, seq: ++ctl.lastSeq, ts: Date.now() });
      const failed = { type: 'sandbox.failed', error: serialized, ...stamp() } as SandboxEvent;
      const stopped = { type: 'sandbox.stopped', reason: 'crashed', exitCode: null, signal: null, error: serialized, ...stamp() } as SandboxEvent;
      // Durable first: a caller whose call rejects below reads the record next.
      await this.#store.patchSandbox(name, { status: 'stopped', state: 'stopped', stopReason: 'crashed' });
      const held = this.#heldBy.get(ctl);
      this.#onEvent(failed, held);
      this.#onEvent(stopped, held);
    } finally {
      ctl.markLost(error);
      // Its events the worker did not commit, and these, from here.
      const held = this.#heldBy.get(ctl);
      if (held) await this.#writeHere(name, held);
    }
  }

  /** Reports a failure this supervisor handles but cannot pass to a caller. */
  #log(message: string): void {
    process.emitWarning(message, { code: 'CORRAL_SUPERVISOR' });
  }

  /**
   * Boots a sandbox in a host process of its own (detached): it survives this process and is
   * reachable by name from any other. Resolves with a link over the host's control socket.
   */
  async createDetached(rawConfig: SandboxConfig, options: Pick<CreateOptions, 'replace'> & { restart?: boolean } = {}): Promise<SandboxLink> {
    this.#assertOpen();
    const config = normalizeConfig(rawConfig);
    if (!options.restart && !options.replace && this.#live.has(config.name)) {
      throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${config.name}" is already running (use .replace() to replace it)`);
    }
    // The old sandbox ends here, before the new host starts: a host refuses a name whose
    // socket still answers.
    if (options.replace && !options.restart) await holding(() => this.#claimName(config.name, true));
    const bundled = distEntry('host');
    const launch = bundled ? [bundled] : ['--import', TSX_LOADER, HOST_MAIN];
    const flags = [...(options.replace ? ['--replace'] : []), ...(options.restart ? ['--restart'] : [])];
    const spares = sparesEnabled();
    // A spare host, started after an earlier create, takes this one with no process start.
    const spare = spares ? await takeSpare(spareSocketPath(this.stateDir, launch), { config, flags }) : undefined;
    const first = spare ? await this.#spareAnswer(config.name, spare) : await this.#startHost(config, [...launch, this.stateDir, ...flags]);
    const msg = JSON.parse(first) as { ready?: SandboxInfo; error?: SerializedError };
    if (msg.error) throw deserializeError(msg.error);
    // The next detached create's host, started now, off this one's path.
    if (spares) startSpare(this.stateDir, launch);
    return SocketLink.connect(config, controlSocketPath(this.stateDir, config.name));
  }

  async #spareAnswer(name: string, spare: TakenSpare): Promise<string> {
    const line = await spare.answer;
    if (line === undefined) throw new CorralError('E_BOOT_FAILED', `the host process of "${name}" (a spare, pid ${spare.pid}) ended before it was ready`);
    return line;
  }

  /** Starts a host process for `config` and resolves with its first line. */
  async #startHost(config: SandboxConfig, args: string[]): Promise<string> {
    // detached: true puts the host in a session of its own (setsid): no signal aimed at our
    // process group or terminal reaches it. The config goes on stdin, never in argv.
    const child = spawn(process.execPath, args, { detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
    child.stdin.end(JSON.stringify(config));
    const first = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (d: string) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl >= 0) resolve(buf.slice(0, nl));
      });
      child.once('exit', (code, signal) => reject(new CorralError('E_BOOT_FAILED', `the host process of "${config.name}" exited before it was ready (${signal ?? `exit code ${code}`})`)));
      child.once('error', (err) => reject(new CorralError('E_BOOT_FAILED', `cannot start the host process: ${err.message}`, { cause: err })));
    });
    child.stdout.destroy();
    child.unref();
    return first;
  }

  /**
   * A link to a live sandbox, wherever it runs: in this supervisor, or detached in a host
   * process (reached over its socket). Undefined when it is not running.
   */
  async open(name: string): Promise<SandboxLink | undefined> {
    const live = this.#live.get(name);
    if (live) return live;
    const rec = this.reconcile(name);
    if (!rec || rec.status === 'stopped') return undefined;
    if (rec.controlSocket) return SocketLink.connect(rec.config, rec.controlSocket);
    if (rec.ownerPid === process.pid) return undefined;
    throw new CorralError('E_ILLEGAL_STATE', `sandbox "${name}" is attached to process ${rec.ownerPid}; only that process can use it`, {
      details: { ownerPid: rec.ownerPid },
    });
  }

  /**
   * Reads a record and repairs it if its owner died: a sandbox left `running` by a process
   * that no longer exists is marked stopped with reason `crashed` (its VM, if somehow still
   * there, is killed). Returns the (repaired) record.
   */
  reconcile(name: string): SandboxRecord | undefined {
    const rec = this.#store.getSandbox(name);
    if (!rec || rec.status === 'stopped' || ownerAlive(rec) || this.#live.has(name)) return rec;
    if (rec.vmPid && isSandboxVm(rec.vmPid, sandboxDir(this.stateDir, name), name)) {
      try {
        process.kill(rec.vmPid, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // ESRCH: gone meanwhile
      }
    }
    const fixed: SandboxRecord = { ...rec, status: 'stopped', state: 'stopped', stopReason: 'crashed', updatedAt: Date.now() };
    this.#store.putSandboxSync(fixed);
    if (rec.controlSocket) rmSync(rec.controlSocket, { force: true });
    return fixed;
  }

  /** Every sandbox record (reconciled), optionally only those with all the given labels. */
  list(filter: { labels?: Readonly<Record<string, string>> } = {}): SandboxRecord[] {
    const want = Object.entries(filter.labels ?? {});
    return this.#store
      .listSandboxes()
      .map((r) => this.reconcile(r.name) ?? r)
      .filter((r) => want.every(([k, v]) => r.config.labels?.[k] === v));
  }

  /** The live controller of a sandbox of this supervisor, if any. */
  get(name: string): WorkerLink | undefined {
    return this.#live.get(name);
  }

  /**
   * Makes a stopped sandbox's end state durable: resolves once the store says stopped (the
   * record otherwise follows the worker's events asynchronously), so whoever reads the store
   * next — `remove()`, `list()`, another process — sees it stopped. A worker that is gone
   * took its VM with it: the record says crashed. No-op while the sandbox still runs.
   */
  async recordStopped(ctl: WorkerLink): Promise<SandboxInfo | undefined> {
    let info: SandboxInfo | undefined;
    try {
      info = await ctl.api.info();
    } catch (err) {
      if (!(err instanceof CorralError && (err.code === 'E_VM_CRASHED' || err.code === 'E_WORKER_CRASHED'))) throw err;
    }
    if (this.#store.closed) return info;
    if (!info) await this.#store.patchSandbox(ctl.config.name, { status: 'stopped', state: 'stopped', stopReason: 'crashed' });
    else if (info.status === 'stopped') await this.#store.patchSandbox(ctl.config.name, { status: 'stopped', state: 'stopped', stopReason: info.stopReason });
    return info;
  }

  /** Ends a controller's worker once its sandbox stopped (recorded as such), and forgets it. */
  async release(ctl: WorkerLink): Promise<void> {
    try {
      await this.recordStopped(ctl);
    } finally {
      if (this.#live.get(ctl.config.name) === ctl) this.#live.delete(ctl.config.name);
      await this.#letGo(ctl);
    }
  }

  /**
   * Lets go of a sandbox's actor once its worker committed the records of every event it
   * posted (a store read by another process then has them all); what it did not commit (its
   * worker died, or hangs) is written from here.
   */
  async #letGo(ctl: WorkerLink): Promise<void> {
    const held = this.#uncommitted.get(ctl.config.name);
    const own = held && this.#heldBy.get(ctl) === held ? held : undefined;
    if (own && !this.#store.closed) await own.settled(SETTLE_MS);
    await ctl.terminate();
    if (own) await this.#writeHere(ctl.config.name, own);
  }

  /**
   * Writes from this thread the events of `held` its worker did not commit (that worker is
   * gone), numbered as the worker numbered them; then `held` is done with.
   */
  async #writeHere(name: string, held: UncommittedEvents): Promise<void> {
    const rest = held.uncommitted();
    if (rest.length > 0 && !this.#store.closed) {
      const recorder = new EventRecorder(this.#store, name, this.#recordLimits, (seq) => held.markCommitted(seq));
      for (const { e, log } of rest) recorder.record(e, log);
      const written = recorder.flushed();
      this.#writingHere.set(name, written);
      try {
        await written;
      } finally {
        if (this.#writingHere.get(name) === written) this.#writingHere.delete(name);
      }
    }
    held.close();
    if (this.#uncommitted.get(name) === held) this.#uncommitted.delete(name);
  }

  /** Removes a stopped sandbox: its record and its disk. */
  async remove(name: string): Promise<void> {
    this.#assertOpen();
    const live = this.#live.get(name);
    if (live) throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is running in this process (stop it first)`);
    const rec = this.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    if (rec.status !== 'stopped') {
      throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is ${rec.status} (owned by pid ${rec.ownerPid})`);
    }
    await holding(async () => {
      await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
      if (rec.controlSocket) await rm(rec.controlSocket, { force: true });
      await this.#store.removeSandbox(name);
      await Promise.all([this.#replay.clear(name), this.#execLog.clear(name)]);
    });
  }

  /** Every complete snapshot in this supervisor's state dir, by name. */
  snapshots(): SnapshotMeta[] {
    return listSnapshots(this.stateDir);
  }

  /** Writes snapshot `name` to one archive file (src/snapshot/portable.ts). */
  exportSnapshot(name: string, file: string, signal?: AbortSignal): Promise<ExportResult> {
    return holding(() => exportSnapshot(this.stateDir, name, file, signal));
  }

  /** Reads a snapshot archive into this state dir, checked for integrity and for this host's kernel and image. */
  importSnapshot(file: string, options: { name?: string; signal?: AbortSignal } = {}): Promise<SnapshotMeta> {
    return holding(() => importSnapshot(this.stateDir, file, options));
  }

  /** Deletes snapshot `name` (E_SNAPSHOT_NOT_FOUND if there is none); sandboxes started from it are not affected. */
  async removeSnapshot(name: string): Promise<void> {
    await removeSnapshot(this.stateDir, name);
  }

  /**
   * Stops every live sandbox (gracefully, escalating to kill), ends the workers, closes the
   * store and completes the bus. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      // Workers, ports and the store's handles are unreferenced: hold the event loop until
      // the close is done, so a script ending in `await sup.close()` exits 0, not 13.
      const hold = setInterval(() => {}, 1 << 30);
      try {
        await this.#closeAll();
      } finally {
        clearInterval(hold);
      }
    })();
    return this.#closed;
  }

  async #closeAll(): Promise<void> {
    await Promise.allSettled(
      [...this.#live.values()].map(async (ctl) => {
        await endSandbox(ctl).catch((err: unknown) => {
          process.emitWarning(`corral: sandbox "${ctl.config.name}" did not stop at close (${(err as Error).message}); its worker is ended, and its VM with it`);
        });
        await this.#letGo(ctl);
      }),
    );
    this.#live.clear();
    await this.#pool.close();
    // The spares died with the workers (pdeathsig); their overlays go with them.
    await rm(sparesDir(this.stateDir), { recursive: true, force: true });
    // Let the last events (sandbox.stopped) arrive, then write what no worker committed
    // (destroy() ended them at once) before the store closes.
    await new Promise((r) => setImmediate(r));
    await Promise.all([...this.#uncommitted].map(([name, held]) => this.#writeHere(name, held)));
    await this.#store.close();
    this.#bus.close();
    openSupervisors.delete(this);
  }

  /** Forceful close: kills every VM at once. */
  destroy(): Promise<void> {
    // Held like close(): the pending calls it rejects were what held the process, and the
    // workers' answers to the releases arrive on unreferenced ports (a plain script ending in
    // `await sup.destroy()` exited 13 in about half the runs).
    return holding(async () => {
      // Calls pending on the sandboxes reject (E_CLOSED); ending the workers ends every VM
      // spawned from them at once.
      const live = [...this.#live.values()];
      this.#live.clear();
      await Promise.allSettled(live.map((ctl) => ctl.terminate()));
      await this.#pool.destroy();
      // Their VMs ended with the workers: say so in the store, as a process exit does (else the
      // records read running, owned by this live process, and a remove here refuses them).
      this.#recordKilled(live.map((ctl) => ctl.config.name));
      await this.close();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Makes `name` free for a new sandbox. Without `replace`, any record of that name fails
   * with E_SANDBOX_EXISTS. With it, a live sandbox of this process, or a detached one of any
   * process, is stopped (its stopTimeoutMs, then killed) and its record removed once it says
   * stopped; a sandbox attached to another live process cannot be: only that process can
   * stop it (E_ILLEGAL_STATE).
   */
  async #claimName(name: string, replace: boolean): Promise<void> {
    const live = this.#live.get(name);
    if (live) {
      if (!replace) throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${name}" is already running (use .replace() to replace it)`);
      await endSandbox(live);
      await this.release(live);
    }
    let rec = this.reconcile(name);
    if (!rec) return;
    if (rec.status !== 'stopped' && !replace) {
      throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${name}" is ${rec.status} in process ${rec.ownerPid}`, { details: { status: rec.status } });
    }
    if (rec.status !== 'stopped') {
      if (!rec.controlSocket) {
        throw new CorralError('E_ILLEGAL_STATE', `cannot replace sandbox "${name}": it is attached to process ${rec.ownerPid}; only that process can stop it`, {
          details: { ownerPid: rec.ownerPid, state: rec.status },
        });
      }
      await this.#endDetached(rec);
      rec = this.reconcile(name);
      if (rec && rec.status !== 'stopped') {
        throw new CorralError('E_ILLEGAL_STATE', `cannot replace sandbox "${name}": it is still ${rec.status} after its stop (owned by pid ${rec.ownerPid})`, { details: { state: rec.status } });
      }
    } else if (!replace) {
      throw new CorralError('E_SANDBOX_EXISTS', `a stopped sandbox named "${name}" exists (remove it, or use .replace())`, { details: { status: rec.status } });
    }
    // Replacing, or a leftover of a process that died: start afresh.
    await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
    await this.#store.removeSandbox(name);
  }

  /**
   * Stops a detached sandbox through its host and waits until that host has let go of its
   * control socket (it closes its clients, then removes the socket, in one go), so that a
   * new host of the same name can take the socket over.
   */
  async #endDetached(rec: SandboxRecord): Promise<void> {
    let link: SocketLink;
    try {
      link = await SocketLink.connect(rec.config, rec.controlSocket!);
    } catch (err) {
      // The host went away between the read and the connect: the record says so now.
      if (this.reconcile(rec.name)?.status === 'stopped') return;
      throw err;
    }
    try {
      await endSandbox(link);
      await link.hostGone(rec.config.stopTimeoutMs);
    } finally {
      await link.detach();
    }
  }

  /**
   * Records one event where it changes the sandbox's record, and publishes it. Its replay and
   * log records are the worker's to write (or #writeHere's): it is held with the uncommitted
   * ones first, so a subscriber that reads the buffer then goes live (events({ since }))
   * cannot miss it.
   */
  #onEvent(e: SandboxEvent, held: UncommittedEvents | undefined, log?: number, replayFrom?: number): void {
    const patch = recordPatch(e);
    // A state event must not move a stopped record back: a stop this supervisor recorded
    // itself (a boot failure, a crash) can precede events still queued on the port.
    if (patch) {
      void this.#store.patchSandbox(e.name, patch, { keepStopped: patch.status !== 'stopped' }).catch((err: unknown) => {
        process.emitWarning(`corral: cannot record ${e.type} of sandbox "${e.name}": ${(err as Error).message}`);
      });
    }
    held?.add(e, log, replayFrom ?? held.replayFrom);
    this.#bus.publish(e);
  }

  #assertOpen(): void {
    if (this.#closed) throw new CorralError('E_CLOSED', 'the supervisor is closed');
  }
}

function recordPatch(e: SandboxEvent): Partial<SandboxRecord> | undefined {
  switch (e.type) {
    case 'sandbox.vm.spawned':
      return { vmPid: e.pid };
    case 'sandbox.state':
      return { status: e.status, state: e.state };
    case 'sandbox.stopped':
      return { status: 'stopped', state: 'stopped', stopReason: e.reason };
    default:
      return undefined;
  }
}

/**
 * Ends a sandbox: a graceful stop (the worker escalates to kill after the sandbox's
 * stopTimeoutMs), and a kill if the stop itself fails. Resolves once it stopped; rejects
 * with the kill's error when even that fails.
 */
async function endSandbox(link: SandboxLink): Promise<void> {
  try {
    await link.api.stop();
  } catch (err) {
    // Its worker or host is gone, and the VM with it.
    if (err instanceof CorralError && (err.code === 'E_CLOSED' || err.code === 'E_VM_CRASHED' || err.code === 'E_WORKER_CRASHED')) return;
    await link.api.kill();
  }
}

const openSupervisors = new Set<Supervisor>();

function onProcessExit(): void {
  for (const sup of openSupervisors) {
    try {
      sup.markLiveAsKilled();
    } catch (err) {
      // The store may be closing: the next reader reconciles (the owner pid is dead).
      logFailure('recording live sandboxes as killed at exit')(err);
    }
  }
}

/** Whether the process that owns a record is still alive. */
export function ownerAlive(rec: SandboxRecord): boolean {
  if (!rec.ownerPid) return false;
  if (rec.ownerPid === process.pid) return true;
  return processAlive(rec.ownerPid);
}


export type { SandboxInfo };

export { processAlive };

/** The host's MemAvailable in MiB (/proc/meminfo), or undefined where the kernel has none. */
function memAvailableMib(): number | undefined {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Math.floor(Number(m[1]) / 1024) : undefined;
}
