/**
 * The sandbox workers of one Supervisor: worker threads, each hosting many sandbox actors
 * (workers/sandbox.worker.ts, src/actor), or one each in strict isolation.
 *
 * A worker thread costs a V8 heap and a module graph (~35 MiB of RSS, most of a second of
 * a core to start); an actor costs a machine, a QMP client and an agent link. So by default
 * a few workers (one per core) host every sandbox, each create going to the least-loaded
 * one, and a create needs no new worker once the pool is warm. A worker that dies takes
 * only its own actors (and their VMs: qemu is spawned from the worker's thread under
 * `setpriv --pdeathsig KILL`) with it; the pool says so to each actor's owner and starts a
 * replacement.
 *
 * The pool never imports the supervisor, and the worker entry never imports the pool.
 */

import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { ROOT, distEntry } from '../runtime/dist.ts';
import { workerExecArgv } from '../runtime/execArgv.ts';
import { logFailure, runtimeLog } from '../runtime/log.ts';
import type { PoolMessage, SandboxWorkerData, WorkerLoaded } from '../actor/contract.ts';

// From the repository's root, so that the precompiled runtime (whose module URL is its
// bundle's: src/runtime/dist.ts) starts the same files.
const WORKER_BOOT = join(ROOT, 'workers', 'boot.mjs');
const WORKER_ENTRY = join(ROOT, 'workers', 'sandbox.worker.ts');

/**
 * How sandboxes share worker threads: `'shared'` (default) many actors per worker of a
 * pool; `'worker'` one worker per sandbox (a thread boundary per sandbox, ~35 MiB each).
 */
export type Isolation = 'shared' | 'worker';

/** Options of a {@link SandboxPool}. */
export interface SandboxPoolOptions {
  /** Workers of a shared pool. Default `os.availableParallelism()`. Ignored in `'worker'` isolation. */
  readonly workers?: number;
  /** Default `'shared'`. */
  readonly isolation?: Isolation;
  /** ms after a create before the pool starts the workers it still lacks (or a strict spare). Default 1000. */
  readonly warmDelayMs?: number;
  /**
   * ms a worker asked to end may take to end by itself (finish loading, dispose its actors,
   * close its LMDB) before it is terminated, which is logged. Default 30000.
   */
  readonly endTimeoutMs?: number;
}

/** Validates the pool options of `new Supervisor(…)`, naming the bad option. */
export function validatePoolOptions(options: SandboxPoolOptions): Required<SandboxPoolOptions> {
  const workers = options.workers ?? availableParallelism();
  if (!Number.isInteger(workers) || workers < 1) throw new InvalidOptionError('workers', 'a positive integer', options.workers);
  const isolation = options.isolation ?? 'shared';
  if (isolation !== 'shared' && isolation !== 'worker') throw new InvalidOptionError('isolation', 'one of "shared", "worker"', options.isolation);
  const warmDelayMs = options.warmDelayMs ?? 1000;
  if (!Number.isFinite(warmDelayMs) || warmDelayMs < 0) throw new InvalidOptionError('warmDelayMs', 'a number of ms ≥ 0', options.warmDelayMs);
  const endTimeoutMs = options.endTimeoutMs ?? 30_000;
  if (!Number.isFinite(endTimeoutMs) || endTimeoutMs < 0) throw new InvalidOptionError('endTimeoutMs', 'a number of ms ≥ 0', options.endTimeoutMs);
  return { workers, isolation, warmDelayMs, endTimeoutMs };
}

/** Called once when the worker hosting an actor ends without being asked to. */
export type OnWorkerLost = (error: CorralError) => void;

/**
 * A sandbox worker thread with the process's node options where a worker accepts them.
 * Node refuses a worker some per-process options (`--expose-gc`…: V8 flags already apply
 * to every thread); the worker then starts without any, and says which it went without.
 */
function startWorker(): Worker {
  const execArgv = workerExecArgv();
  // The precompiled worker where it is fresh (src/runtime/dist.ts): no tsx loader to start.
  const bundled = distEntry('sandbox.worker');
  const start = (argv: string[]) => new Worker(bundled ?? WORKER_BOOT, { workerData: { entry: bundled ?? WORKER_ENTRY }, name: 'corral:sandbox', execArgv: argv });
  try {
    return start(execArgv);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw err;
    if (!warnedExecArgv) process.emitWarning(`corral: sandbox workers start without the node options ${execArgv.join(' ')} (${(err as Error).message})`, { code: 'CORRAL_EXEC_ARGV' });
    warnedExecArgv = true;
    return start([]);
  }
}
let warnedExecArgv = false;

/** One sandbox worker thread and the actors it hosts. */
class PoolWorker {
  readonly worker = startWorker();
  readonly actors = new Map<number, OnWorkerLost>();
  /** Set once the worker is asked to end (close, strict release): its exit is no crash. */
  ending = false;
  exited = false;
  readonly done: Promise<void>;
  #holds = 0;
  /** Until the thread has loaded its modules it holds the process (see the constructor). */
  #loading = true;
  #error: Error | undefined;
  #ended: Promise<void> | undefined;

  constructor(onCrash: (w: PoolWorker, reason: string) => void) {
    // Idle workers hold no process alive: calls in flight hold it (hold()). A loading one
    // does, until it has loaded: a process that exits tears its workers down, and one torn
    // down while it registers LMDB's addon aborts the process (FATAL ERROR napi_throw) in
    // place of its exit code. A script that ends without closing its supervisor while the
    // pool warms a worker waits for that load (~0.1 s bundled), then exits.
    this.worker.on('message', (m: Partial<WorkerLoaded>) => {
      if (m?.type !== 'loaded' || !this.#loading) return;
      this.#loading = false;
      if (this.#holds === 0 && !this.ending) this.worker.unref();
    });
    this.worker.on('error', (err) => (this.#error = err));
    this.done = new Promise((resolve) =>
      this.worker.once('exit', (code) => {
        this.exited = true;
        if (!this.ending) onCrash(this, this.#error ? `it threw: ${this.#error.message}` : `it exited with code ${code}`);
        resolve();
      }),
    );
  }

  hold(): void {
    if (this.#holds++ === 0) this.worker.ref();
  }

  unhold(): void {
    if (--this.#holds === 0 && !this.#loading && !this.ending) this.worker.unref();
  }

  post(msg: PoolMessage, transfer: readonly TransferListItem[] = []): void {
    this.worker.postMessage(msg, transfer);
  }

  /**
   * Ends the thread (and every VM spawned from it): asks it to end, and it ends by itself
   * (workers/sandbox.worker.ts); terminated, and said so, only if it has not within
   * `timeoutMs`. Never by terminate() first: a thread terminated while it loads LMDB's addon
   * aborts the whole process (node's FATAL ERROR napi_throw), one terminated while it writes
   * breaks the store of every process sharing it. A worker still loading reads the request
   * once loaded. Idempotent.
   */
  end(timeoutMs: number): Promise<void> {
    this.#ended ??= (async () => {
      this.ending = true;
      // Referenced while it ends: an unreferenced worker's exit does not keep the event loop
      // alive, so a top-level `await sup.close()` could end the process (exit code 13) first.
      this.worker.ref();
      if (this.exited) return;
      this.post({ type: 'end' });
      const deadline = setTimeout(() => {
        runtimeLog.warn(`sandbox worker ${this.worker.threadId} did not end within ${timeoutMs} ms of being asked to: terminated`);
        this.worker.terminate().catch(logFailure(`terminating sandbox worker ${this.worker.threadId}`));
      }, timeoutMs);
      try {
        await this.done;
      } finally {
        clearTimeout(deadline);
      }
    })();
    return this.#ended;
  }
}

/** An actor's place in the pool, as its owner (a WorkerLink) holds it. */
export interface HostedActor {
  readonly id: number;
  /** The worker's thread id (tests and metrics). */
  readonly threadId: number;
  /** Keeps the worker referenced while `fn` runs (a call in flight holds the process). */
  hold<T>(fn: () => Promise<T>): Promise<T>;
  /** Drops the actor from its worker (strict isolation: ends the worker). Idempotent. */
  release(): Promise<void>;
  /** Test-only: makes the actor's worker throw at top level, as a bug would; resolves once it exited. */
  crashWorker(): Promise<void>;
  /** Test-only: keeps the actor's worker busy for `ms`, as a hung worker would. */
  stallWorker(ms: number): void;
}

/**
 * @example
 * const pool = new SandboxPool({ workers: 2 });
 * const actor = pool.host(data, [data.control], (err) => markCrashed(err));
 * await actor.release();
 * await pool.close();
 */
export class SandboxPool {
  readonly size: number;
  readonly isolation: Isolation;
  readonly #warmDelayMs: number;
  readonly #endTimeoutMs: number;
  readonly #workers = new Set<PoolWorker>();
  /** Strict isolation: a worker started ahead, hosting nothing yet. */
  #spare: PoolWorker | undefined;
  #warmTimer: NodeJS.Timeout | undefined;
  #nextId = 0;
  #closed: Promise<void> | undefined;

  constructor(options: SandboxPoolOptions = {}) {
    const o = validatePoolOptions(options);
    this.size = o.workers;
    this.isolation = o.isolation;
    this.#warmDelayMs = o.warmDelayMs;
    this.#endTimeoutMs = o.endTimeoutMs;
  }

  /** Live worker threads. */
  get workerCount(): number {
    return this.#workers.size;
  }

  /** Actors per live worker, for metrics and tests. */
  get loads(): number[] {
    return [...this.#workers].map((w) => w.actors.size);
  }

  /**
   * Hands a sandbox to a worker: the least-loaded one of the pool (strict: a fresh one).
   * `transfer` lists the ports in `data`. `onLost` is called if the worker dies under it.
   */
  host(data: SandboxWorkerData, transfer: readonly TransferListItem[], onLost: OnWorkerLost): HostedActor {
    if (this.#closed) throw new CorralError('E_CLOSED', 'the sandbox pool is closed');
    const w = this.isolation === 'worker' ? this.#takeSpare() : this.#leastLoaded();
    const id = ++this.#nextId;
    w.actors.set(id, onLost);
    w.post({ type: 'host', id, data }, transfer);
    this.#scheduleWarm();
    let released: Promise<void> | undefined;
    return {
      id,
      threadId: w.worker.threadId,
      hold: async (fn) => {
        w.hold();
        try {
          return await fn();
        } finally {
          w.unhold();
        }
      },
      release: () =>
        (released ??= (async () => {
          w.actors.delete(id);
          if (this.isolation === 'worker') {
            this.#workers.delete(w);
            await w.end(this.#endTimeoutMs);
          } else if (!w.exited) w.post({ type: 'dispose', id });
        })()),
      crashWorker: async () => {
        w.post({ type: 'crash', message: `test-only crash of worker ${w.worker.threadId}` });
        await w.done;
      },
      stallWorker: (ms) => w.post({ type: 'stall', ms }),
    };
  }

  #leastLoaded(): PoolWorker {
    let best: PoolWorker | undefined;
    for (const w of this.#workers) if (!best || w.actors.size < best.actors.size) best = w;
    // A worker with nothing on it is as good as a new one; a new one only while the pool lacks workers.
    if (best && (best.actors.size === 0 || this.#workers.size >= this.size)) return best;
    return this.#spawn();
  }

  #takeSpare(): PoolWorker {
    const spare = this.#spare;
    this.#spare = undefined;
    if (spare && !spare.exited) return spare;
    return this.#spawn();
  }

  #spawn(): PoolWorker {
    const w = new PoolWorker((dead, reason) => this.#onCrash(dead, reason));
    this.#workers.add(w);
    return w;
  }

  /**
   * Starts what the pool lacks a little after a create: loading a worker's modules takes a
   * core for most of a second on a 2-core host, which must not land on a boot or first exec.
   */
  #scheduleWarm(): void {
    clearTimeout(this.#warmTimer);
    this.#warmTimer = setTimeout(() => this.warm(), this.#warmDelayMs);
    this.#warmTimer.unref();
  }

  /** Starts the workers the pool lacks now (strict isolation: one spare), so no create waits for one. */
  warm(): void {
    if (this.#closed) return;
    if (this.isolation === 'worker') {
      if (!this.#spare || this.#spare.exited) this.#spare = this.#spawn();
      return;
    }
    while (this.#workers.size < this.size) this.#spawn();
  }

  #onCrash(w: PoolWorker, reason: string): void {
    this.#workers.delete(w);
    if (this.#spare === w) this.#spare = undefined;
    const lost = [...w.actors.values()];
    w.actors.clear();
    for (const onLost of lost) {
      onLost(new CorralError('E_WORKER_CRASHED', `the worker thread hosting this sandbox ended (${reason}); its VM ended with it`, { details: { threadId: w.worker.threadId } }));
    }
    // The replacement starts later, not in the middle of the crash's own clean-up.
    if (lost.length > 0) this.#scheduleWarm();
  }

  /**
   * Ends every worker (and so every VM still spawned from one), each by itself within the
   * pool's `endTimeoutMs` (see PoolWorker.end). Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearTimeout(this.#warmTimer);
      const all = [...this.#workers];
      this.#workers.clear();
      this.#spare = undefined;
      await Promise.all(all.map((w) => w.end(this.#endTimeoutMs)));
    })();
    return this.#closed;
  }

  /** Same as {@link close}: an ending worker kills its VMs at once. */
  destroy(): Promise<void> {
    return this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
