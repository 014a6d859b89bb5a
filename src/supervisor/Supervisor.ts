/**
 * One Supervisor per process: it owns the sandbox workers, the event bus and the store.
 *
 * Each sandbox is an actor in a worker thread of its own (workers/sandbox.worker.ts),
 * driven over Comlink; its events arrive on a second port, are recorded in the store where
 * they change the record, and are published on the bus.
 */

import './comlinkErrors.ts';
import { wrap, releaseProxy, type Remote } from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { MessageChannel, Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { Observable } from 'rxjs';
import { EventBus } from '../bus/EventBus.ts';
import type { SandboxEvent } from '../bus/events.ts';
import { normalizeConfig, type SandboxConfig } from '../config.ts';
import { secretsFor } from '../image/secrets.ts';
import { CorralError, InvalidOptionError, deserializeError, type SerializedError } from '../errors.ts';
import { SocketLink } from '../host/SocketLink.ts';
import { controlSocketPath } from '../host/wire.ts';
import { sweepStaleRunDirs } from '../vm/Vm.ts';
import { defaultStateDir } from '../runtime/artifacts.ts';
import { processAlive } from '../runtime/process.ts';
import { sandboxDir } from '../runtime/rootfs.ts';
import { readSnapshot, snapshotDevices } from '../runtime/snapshots.ts';
import { snapshotGuestFields } from '../guest/guestConfig.ts';
import { Store, type SandboxRecord } from '../store/Store.ts';
import { ReplayLog, type ReplayLimits } from '../events/ReplayLog.ts';
import { supervisorEvents, type EventsOptions } from '../events/supervisorEvents.ts';
import { ExecLog, type ExecLogLimits, type LogEntry, type LogsOptions } from '../logs/ExecLog.ts';
import type { SandboxInfo, SandboxWorkerApi, SandboxWorkerData } from '../../workers/sandbox.worker.ts';
import type { SandboxLink } from './SandboxLink.ts';
import { logFailure } from '../runtime/log.ts';

const WORKER_BOOT = fileURLToPath(new URL('../../workers/boot.mjs', import.meta.url));
const WORKER_ENTRY = fileURLToPath(new URL('../../workers/sandbox.worker.ts', import.meta.url));
const HOST_MAIN = fileURLToPath(new URL('../host/hostMain.ts', import.meta.url));
/** tsx's loader, resolved from here so the host starts whatever the caller's cwd. */
const TSX_LOADER = import.meta.resolve('tsx');

/** Options of a {@link Supervisor}. */
export interface SupervisorOptions {
  /** Where LMDB and sandbox disks live. Default `CORRAL_STATE_DIR` or `~/.local/state/corral`. */
  readonly stateDir?: string;
  /** Most sandboxes this supervisor runs at once. Default 64. */
  readonly maxSandboxes?: number;
  /** Bounds of the per-sandbox event replay buffer (see {@link Supervisor.events}). */
  readonly replay?: ReplayLimits;
  /** Bounds of the per-sandbox exec logs (see {@link Supervisor.logs}). */
  readonly logs?: ExecLogLimits;
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
 * The supervisor's handle on one sandbox worker. The SDK's `Sandbox` wraps it.
 * Internal: not exported from the package entry.
 */
export class SandboxController implements SandboxLink {
  readonly #worker: Worker;
  readonly api: Remote<SandboxWorkerApi>;
  readonly detached = false;
  readonly events$: Observable<SandboxEvent>;
  #busy = 0;
  #terminated: Promise<void> | undefined;

  constructor(
    readonly config: SandboxConfig,
    worker: Worker,
    api: Remote<SandboxWorkerApi>,
    events$: Observable<SandboxEvent>,
    readonly supervisor: Supervisor,
  ) {
    this.#worker = worker;
    this.api = api;
    this.events$ = events$;
    worker.unref();
  }

  /**
   * Runs `fn` while keeping the worker referenced, so the process does not exit with a call
   * pending. An idle attached sandbox does not keep the process alive: when the process
   * ends, its VMs end with it.
   */
  async busy<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#busy++ === 0) this.#worker.ref();
    try {
      return await fn();
    } finally {
      if (--this.#busy === 0) this.#worker.unref();
    }
  }

  release(): Promise<void> {
    return this.supervisor.release(this);
  }

  /** An attached sandbox stays with its supervisor: dropping a handle changes nothing. */
  async detach(): Promise<void> {}

  /** Ends the worker thread (the VM, spawned from it, dies with it). Idempotent. */
  terminate(): Promise<void> {
    this.#terminated ??= (async () => {
      this.api[releaseProxy]();
      // Referenced while it ends: an unreferenced worker's exit does not keep the event loop
      // alive, so a top-level `await sup.close()` could end the process (exit code 13) first.
      this.#worker.ref();
      await this.#worker.terminate();
    })();
    return this.#terminated;
  }
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
  readonly #bus = new EventBus();
  readonly #store: Store;
  readonly #replay: ReplayLog;
  readonly #execLog: ExecLog;
  readonly #live = new Map<string, SandboxController>();
  #closed: Promise<void> | undefined;
  /** A worker started ahead of need, idle until a create hands it a sandbox. */
  #spare: Worker | undefined;
  #spareTimer: NodeJS.Timeout | undefined;

  /** Every event of every sandbox of this supervisor. */
  readonly events$: Observable<SandboxEvent>;

  constructor(options: SupervisorOptions = {}) {
    this.stateDir = options.stateDir ?? defaultStateDir();
    this.maxSandboxes = options.maxSandboxes ?? 64;
    if (!Number.isInteger(this.maxSandboxes) || this.maxSandboxes < 1) {
      throw new InvalidOptionError('maxSandboxes', 'a positive integer', options.maxSandboxes);
    }
    this.#store = Store.open(this.stateDir);
    this.#replay = new ReplayLog(this.#store, options.replay);
    this.#execLog = new ExecLog(this.#store, options.logs);
    this.events$ = this.#bus.events$;
    sweepStaleRunDirs();
    openSupervisors.add(this);
    // 'beforeExit', not 'exit': in an 'exit' hook lmdb-js 3.5 can no longer read ("No
    // current read transaction available") and a write there crashed the process (SIGSEGV).
    // An explicit process.exit() or a signal skips this; the next reader reconciles then
    // (the owner pid is dead).
    if (openSupervisors.size === 1) process.once('beforeExit', onProcessExit);
  }

  /** @internal when the process is about to exit: the VMs die with it; say so in the store. */
  markLiveAsKilled(): void {
    for (const name of this.#live.keys()) {
      const rec = this.#store.getSandbox(name);
      if (rec && rec.status !== 'stopped') {
        this.#store.putSandboxSync({ ...rec, status: 'stopped', state: 'stopped', stopReason: 'killed', updatedAt: Date.now() });
      }
    }
  }

  /** The bus, for typed filtering (`supervisor.bus.on('exec.exited')`). */
  get bus(): Pick<EventBus, 'on' | 'forSandbox' | 'events$'> {
    return this.#bus;
  }

  /** The store (read-only use by the SDK). */
  get store(): Store {
    return this.#store;
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
  async create(rawConfig: SandboxConfig, options: CreateOptions = {}): Promise<SandboxController> {
    this.#assertOpen();
    const config = this.#withSnapshotShape(normalizeConfig(rawConfig));
    await this.#claimName(config.name, options.replace ?? false);
    await this.#putCreating({ name: config.name, config, createdAt: Date.now() }, options.controlSocket);
    return this.#boot(config, options);
  }

  /**
   * Boots a stopped sandbox again from its persisted config and upper disk (files written
   * before the stop are still there).
   */
  async restart(name: string, options: Pick<CreateOptions, 'signal' | 'controlSocket'> = {}): Promise<SandboxController> {
    this.#assertOpen();
    const rec = this.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    if (rec.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot start sandbox "${name}": it is ${rec.status}`, { details: { state: rec.status } });
    await this.#putCreating(rec, options.controlSocket);
    return this.#boot(rec.config, options);
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
   * so do its volumes, network and ports where it sets them (src/guest/guestConfig.ts).
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

  async #boot(config: SandboxConfig, options: Pick<CreateOptions, 'signal'>): Promise<SandboxController> {
    if (this.#live.size >= this.maxSandboxes) {
      await this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'boot-failed' });
      throw new CorralError('E_INVALID_OPTION', `this supervisor already runs ${this.#live.size} sandboxes (maxSandboxes ${this.maxSandboxes})`);
    }
    const control = new MessageChannel();
    const events = new MessageChannel();
    // Secrets (registryAuth.secret) go to the worker in memory, never in the config or argv.
    const env = Object.fromEntries(RUNTIME_ENV.map((k) => [k, process.env[k]]));
    // Exec output bytes posted by the worker and not yet handled here: the worker stops
    // reading from the guest while too many are in flight (see OUTPUT_HIGH_WATER there).
    const outputInFlight = new Int32Array(new SharedArrayBuffer(4));
    const data: SandboxWorkerData = { config, stateDir: this.stateDir, control: control.port2, events: events.port2, secrets: secretsFor(config), env, outputInFlight };
    // A warm spare has its modules loaded already (starting a worker and loading them costs
    // most of a restored create); hand it this sandbox and start the next spare.
    const spare = this.#spare;
    this.#spare = undefined;
    const worker = spare && !exitedWorkers.has(spare) ? spare : spawnWorker();
    worker.postMessage(data, [control.port2, events.port2]);
    const api = wrap<SandboxWorkerApi>(nodeEndpoint(control.port1 as never));
    const events$ = this.#bus.forSandbox(config.name);
    const ctl = new SandboxController(config, worker, api, events$, this);
    this.#live.set(config.name, ctl);
    events.port1.on('message', (e: SandboxEvent) => {
      const written = this.#onEvent(e);
      // Output stays in flight until its replay and log writes commit: LMDB queues writes
      // in memory, so releasing earlier lets a flood grow that queue with its size.
      if (e.type === 'exec.stdout' || e.type === 'exec.stderr') void written.then(() => Atomics.sub(outputInFlight, 0, e.data.byteLength));
    });
    // Unref after adding listeners: adding a 'message' listener refs a port again. Comlink
    // adds one per pending call, so the control port holds the process only during calls.
    events.port1.unref();
    control.port1.unref();
    worker.on('error', () => {
      // A worker that throws at top level never answers again: fail its record.
      void this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'crashed' }).catch(logFailure(`recording sandbox "${config.name}" as crashed`));
      this.#live.delete(config.name);
    });

    const abort = () => void ctl.api.kill().catch(logFailure(`killing sandbox "${config.name}" on abort`));
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      // A worker that dies before answering (a module that fails to load) must not hang create.
      const died = new Promise<never>((_, reject) =>
        worker.once('exit', (code) => reject(new CorralError('E_BOOT_FAILED', `the worker of sandbox "${config.name}" exited with code ${code} before it started`))),
      );
      died.catch(() => {}); // observed by the race below; this only marks it handled when start() wins
      const info = await ctl.busy(() => Promise.race([ctl.api.start(), died]));
      // Durable before create resolves: whoever reads the store next sees it running.
      await this.#store.patchSandbox(config.name, { status: info.status, state: info.state, vmPid: info.pid });
      this.#scheduleSpare();
      return ctl;
    } catch (err) {
      await ctl.terminate();
      this.#live.delete(config.name);
      await this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'boot-failed' }).catch(logFailure(`recording sandbox "${config.name}" as boot-failed`));
      throw err;
    } finally {
      options.signal?.removeEventListener('abort', abort);
    }
  }

  /**
   * Starts the next spare worker a little after a create: loading its modules takes a core
   * for most of a second on a 2-core host, which must not land on a boot or a first exec.
   */
  #scheduleSpare(): void {
    clearTimeout(this.#spareTimer);
    this.#spareTimer = setTimeout(() => {
      if (!this.#closed && !this.#spare) this.#spare = spawnWorker();
    }, 1000);
    this.#spareTimer.unref();
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
    const args = ['--import', TSX_LOADER, HOST_MAIN, this.stateDir];
    if (options.replace) args.push('--replace');
    if (options.restart) args.push('--restart');
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
    const msg = JSON.parse(first) as { ready?: SandboxInfo; error?: SerializedError };
    if (msg.error) throw deserializeError(msg.error);
    return SocketLink.connect(config, controlSocketPath(this.stateDir, config.name));
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
    if (rec.vmPid && isOurVm(rec.vmPid, name)) {
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
  get(name: string): SandboxController | undefined {
    return this.#live.get(name);
  }

  /** Ends a controller's worker once its sandbox stopped, and forgets it. */
  async release(ctl: SandboxController): Promise<void> {
    // The record follows events asynchronously; make the final state durable before the
    // caller (stop(), kill()…) returns, so an immediate start() or list() reads it.
    const info = await ctl.api.info().catch(() => undefined);
    if (info?.status === 'stopped' && !this.#store.closed) {
      await this.#store.patchSandbox(ctl.config.name, { status: 'stopped', state: 'stopped', stopReason: info.stopReason }).catch(logFailure(`recording sandbox "${ctl.config.name}" as stopped`));
    }
    if (this.#live.get(ctl.config.name) === ctl) this.#live.delete(ctl.config.name);
    await ctl.terminate();
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
    await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
    if (rec.controlSocket) await rm(rec.controlSocket, { force: true });
    await this.#store.removeSandbox(name);
    await Promise.all([this.#replay.clear(name), this.#execLog.clear(name)]);
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
        await ctl.api.stop().catch(() => ctl.api.kill()).catch(logFailure(`stopping sandbox "${ctl.config.name}" on close`));
        await ctl.terminate();
      }),
    );
    this.#live.clear();
    clearTimeout(this.#spareTimer);
    this.#spare?.ref();
    await this.#spare?.terminate();
    this.#spare = undefined;
    // Let the last events (sandbox.stopped) reach the store before it closes.
    await new Promise((r) => setImmediate(r));
    await this.#store.close();
    this.#bus.close();
    openSupervisors.delete(this);
  }

  /** Forceful close: kills every VM at once. */
  async destroy(): Promise<void> {
    await Promise.allSettled([...this.#live.values()].map((ctl) => ctl.terminate()));
    this.#live.clear();
    await this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #claimName(name: string, replace: boolean): Promise<void> {
    const live = this.#live.get(name);
    if (live) {
      if (!replace) throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${name}" is already running (use .replace() to replace it)`);
      await live.api.stop().catch(() => live.api.kill()).catch(logFailure(`stopping sandbox "${name}" to replace it`));
      await this.release(live);
    }
    const rec = this.reconcile(name);
    if (!rec) return;
    if (rec.status !== 'stopped') {
      throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${name}" is ${rec.status} in process ${rec.ownerPid}`, { details: { status: rec.status } });
    }
    if (!replace && rec.status === 'stopped') {
      throw new CorralError('E_SANDBOX_EXISTS', `a stopped sandbox named "${name}" exists (remove it, or use .replace())`, { details: { status: rec.status } });
    }
    // Replacing, or a leftover of a process that died: start afresh.
    await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
    await this.#store.removeSandbox(name);
  }

  /** Records and publishes one event; resolves when its replay and log writes commit. */
  #onEvent(e: SandboxEvent): Promise<unknown> {
    const patch = recordPatch(e);
    if (patch) void this.#store.patchSandbox(e.name, patch).catch(logFailure(`recording ${e.type} of sandbox "${e.name}"`));
    // Buffered before it is published: a subscriber that reads the buffer then goes live
    // (events({ since })) cannot miss it.
    const written = Promise.all([this.#replay.append(e), this.#execLog.record(e)]);
    this.#bus.publish(e);
    return written;
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

/** Starts a sandbox worker that waits (unref'd: it holds no process alive) for its sandbox. */
const exitedWorkers = new WeakSet<Worker>();

/** Variables a sandbox worker reads, passed at create time (a spare started earlier). */
const RUNTIME_ENV = ['CORRAL_QEMU', 'CORRAL_FAKE_GUEST', 'CORRAL_FAKE_FLOOD_MIB', 'CORRAL_ACCEL', 'CORRAL_CACHE_DIR', 'XDG_CACHE_HOME', 'CORRAL_GUEST_RESOLV_CONF'];

function spawnWorker(): Worker {
  const worker = new Worker(WORKER_BOOT, { workerData: { entry: WORKER_ENTRY }, name: 'corral:sandbox' });
  worker.unref();
  worker.once('exit', () => exitedWorkers.add(worker));
  // An idle spare that fails to start is replaced on the next create.
  worker.on('error', logFailure('starting a spare sandbox worker'));
  return worker;
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

/** Whether `pid` is a qemu that corral started for sandbox `name`. */
function isOurVm(pid: number, name: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.includes('qemu-system')) && argv.some((a) => a.includes(`corral.hostname=${name}`));
  } catch {
    return false;
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
