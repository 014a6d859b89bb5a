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
import { rm } from 'node:fs/promises';
import { MessageChannel, Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Observable } from 'rxjs';
import { EventBus } from '../bus/EventBus.ts';
import type { SandboxEvent } from '../bus/events.ts';
import { normalizeConfig, type SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { defaultStateDir } from '../runtime/artifacts.ts';
import { sandboxDir } from '../runtime/rootfs.ts';
import { Store, type SandboxRecord } from '../store/Store.ts';
import type { SandboxInfo, SandboxWorkerApi, SandboxWorkerData } from '../../workers/sandbox.worker.ts';

const WORKER_BOOT = fileURLToPath(new URL('../../workers/boot.mjs', import.meta.url));
const WORKER_ENTRY = fileURLToPath(new URL('../../workers/sandbox.worker.ts', import.meta.url));

/** Options of a {@link Supervisor}. */
export interface SupervisorOptions {
  /** Where LMDB and sandbox disks live. Default `CORRAL_STATE_DIR` or `~/.local/state/corral`. */
  readonly stateDir?: string;
  /** Most sandboxes this supervisor runs at once. Default 64. */
  readonly maxSandboxes?: number;
}

/** Options of {@link Supervisor.create}. */
export interface CreateOptions {
  /** Stop and remove a same-named sandbox first instead of failing. */
  readonly replace?: boolean;
  readonly signal?: AbortSignal;
}

/**
 * The supervisor's handle on one sandbox worker. The SDK's `Sandbox` wraps it.
 * Internal: not exported from the package entry.
 */
export class SandboxController {
  readonly #worker: Worker;
  readonly api: Remote<SandboxWorkerApi>;
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

  /** Ends the worker thread (the VM, spawned from it, dies with it). Idempotent. */
  terminate(): Promise<void> {
    this.#terminated ??= (async () => {
      this.api[releaseProxy]();
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
  readonly #live = new Map<string, SandboxController>();
  #closed: Promise<void> | undefined;

  /** Every event of every sandbox of this supervisor. */
  readonly events$: Observable<SandboxEvent>;

  constructor(options: SupervisorOptions = {}) {
    this.stateDir = options.stateDir ?? defaultStateDir();
    this.maxSandboxes = options.maxSandboxes ?? 64;
    if (!Number.isInteger(this.maxSandboxes) || this.maxSandboxes < 1) {
      throw new RangeError(`maxSandboxes must be a positive integer (got ${options.maxSandboxes})`);
    }
    this.#store = Store.open(this.stateDir);
    this.events$ = this.#bus.events$;
  }

  /** The bus, for typed filtering (`supervisor.bus.on('exec.exited')`). */
  get bus(): Pick<EventBus, 'on' | 'forSandbox' | 'events$'> {
    return this.#bus;
  }

  /** The store (read-only use by the SDK). */
  get store(): Store {
    return this.#store;
  }

  /** Live sandboxes of this supervisor. */
  get size(): number {
    return this.#live.size;
  }

  /**
   * Boots a sandbox in a new worker; resolves once it runs. On a boot failure the worker is
   * gone and the error says why.
   */
  async create(rawConfig: SandboxConfig, options: CreateOptions = {}): Promise<SandboxController> {
    this.#assertOpen();
    const config = normalizeConfig(rawConfig);
    await this.#claimName(config.name, options.replace ?? false);
    if (this.#live.size >= this.maxSandboxes) {
      throw new CorralError('E_INVALID_OPTION', `this supervisor already runs ${this.#live.size} sandboxes (maxSandboxes ${this.maxSandboxes})`);
    }
    const now = Date.now();
    await this.#store.putSandbox({
      name: config.name,
      config,
      status: 'creating',
      state: 'creating',
      ownerPid: process.pid,
      vmPid: null,
      stopReason: null,
      createdAt: now,
      updatedAt: now,
    });

    const control = new MessageChannel();
    const events = new MessageChannel();
    const data: SandboxWorkerData = { config, stateDir: this.stateDir, control: control.port2, events: events.port2 };
    const worker = new Worker(WORKER_BOOT, {
      workerData: { entry: WORKER_ENTRY, ...data },
      transferList: [control.port2, events.port2],
      name: `corral:${config.name}`,
    });
    const api = wrap<SandboxWorkerApi>(nodeEndpoint(control.port1 as never));
    const events$ = this.#bus.forSandbox(config.name);
    const ctl = new SandboxController(config, worker, api, events$, this);
    this.#live.set(config.name, ctl);
    events.port1.on('message', (e: SandboxEvent) => this.#onEvent(e));
    // Unref after adding listeners: adding a 'message' listener refs a port again. Comlink
    // adds one per pending call, so the control port holds the process only during calls.
    events.port1.unref();
    control.port1.unref();
    worker.on('error', (err) => {
      // A worker that throws at top level never answers again: fail its record.
      void this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'crashed' }).catch(() => {});
      this.#live.delete(config.name);
      void err;
    });

    const abort = () => void ctl.api.kill().catch(() => {});
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      await ctl.busy(() => ctl.api.start());
      return ctl;
    } catch (err) {
      await ctl.terminate();
      this.#live.delete(config.name);
      await this.#store.patchSandbox(config.name, { status: 'stopped', state: 'stopped', stopReason: 'boot-failed' }).catch(() => {});
      throw err;
    } finally {
      options.signal?.removeEventListener('abort', abort);
    }
  }

  /** The live controller of a sandbox of this supervisor, if any. */
  get(name: string): SandboxController | undefined {
    return this.#live.get(name);
  }

  /** Ends a controller's worker once its sandbox stopped, and forgets it. */
  async release(ctl: SandboxController): Promise<void> {
    if (this.#live.get(ctl.config.name) === ctl) this.#live.delete(ctl.config.name);
    await ctl.terminate();
  }

  /** Removes a stopped sandbox: its record and its disk. */
  async remove(name: string): Promise<void> {
    this.#assertOpen();
    const live = this.#live.get(name);
    if (live) throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is running in this process (stop it first)`);
    const rec = this.#store.getSandbox(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    if (rec.status !== 'stopped' && ownerAlive(rec)) {
      throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is ${rec.status} (owned by pid ${rec.ownerPid})`);
    }
    await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
    await this.#store.removeSandbox(name);
  }

  /**
   * Stops every live sandbox (gracefully, escalating to kill), ends the workers, closes the
   * store and completes the bus. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await Promise.allSettled(
        [...this.#live.values()].map(async (ctl) => {
          await ctl.api.stop().catch(() => ctl.api.kill()).catch(() => {});
          await ctl.terminate();
        }),
      );
      this.#live.clear();
      // Let the last events (sandbox.stopped) reach the store before it closes.
      await new Promise((r) => setImmediate(r));
      await this.#store.close();
      this.#bus.close();
    })();
    return this.#closed;
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
      await live.api.stop().catch(() => live.api.kill()).catch(() => {});
      await this.release(live);
    }
    const rec = this.#store.getSandbox(name);
    if (!rec) return;
    const alive = rec.status !== 'stopped' && ownerAlive(rec);
    if (alive) {
      throw new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${name}" is ${rec.status} in process ${rec.ownerPid}`, { details: { status: rec.status } });
    }
    if (!replace && rec.status === 'stopped') {
      throw new CorralError('E_SANDBOX_EXISTS', `a stopped sandbox named "${name}" exists (remove it, or use .replace())`, { details: { status: rec.status } });
    }
    // Replacing, or a leftover of a process that died: start afresh.
    await rm(sandboxDir(this.stateDir, name), { recursive: true, force: true });
    await this.#store.removeSandbox(name);
  }

  #onEvent(e: SandboxEvent): void {
    const patch = recordPatch(e);
    if (patch) void this.#store.patchSandbox(e.name, patch).catch(() => {});
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

/** Whether the process that owns a record is still alive. */
export function ownerAlive(rec: SandboxRecord): boolean {
  if (!rec.ownerPid) return false;
  if (rec.ownerPid === process.pid) return true;
  try {
    process.kill(rec.ownerPid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export type { SandboxInfo };
