/**
 * The public handle on one sandbox.
 *
 * @example
 * await using sb = await Sandbox.builder('worker').memory(256).create();
 * const out = await sb.exec('sh', ['-c', 'echo hi']);
 */

import { randomInt, randomUUID } from 'node:crypto';
import { EMPTY, filter, takeWhile, type Observable, type Subscription } from 'rxjs';
import { isExecEvent, type SandboxEvent, type SandboxStatus, type StopReason } from '../bus/events.ts';
import { LIMITS, normalizeConfig, type SandboxConfig } from '../config.ts';
import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import { fork, forkNames } from '../snapshot/fork.ts';
import { CorralError, InvalidOptionError } from '../errors.ts';
import type { SandboxLink } from '../link/SandboxLink.ts';
import { recordedInfo, STDIN_WITH_REQUEST_BYTES, type ExecAccepted, type ExecInfo, type ProbeRequest, type ProbeResult } from '../actor/contract.ts';
import type { SandboxInfo } from '../supervisor/Supervisor.ts';
import { Supervisor, type CreateOptions } from '../supervisor/Supervisor.ts';
import { ExecResult, ExecStream, routeExecEvent, type ExecControl, type ExecOptions, type ExecStreamItem } from './exec.ts';
import { ttyOption, userOption, validateExec } from './execOptions.ts';
import { SandboxFs } from './SandboxFs.ts';
import { feedStdin, isStdinSource, stdinOption, type StdinSource } from './execStdin.ts';
import { SandboxBuilder } from './SandboxBuilder.ts';
import { imageCommandRequest, type ImageCommandRequest } from '../image/imageCommand.ts';
import type { LogEntry, LogsOptions } from '../logs/ExecLog.ts';
import type { SinceCursor } from '../events/resumeStream.ts';
import { metricsStream } from '../metrics/metricsStream.ts';
import { linkSampler, type MetricsSampler, type SandboxMetrics } from '../metrics/MetricsSampler.ts';
import { logFailure } from '../runtime/log.ts';
import { bounded, validateCallOptions, type CallOptions } from '../runtime/callOptions.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import { catalogInfo, createInCluster, followLogsInCluster, logsInCluster, openInCluster, removeInCluster, startInCluster } from './clusterSandboxes.ts';
import type { PlacementOptions } from './SandboxBuilder.ts';

export type { CallOptions };

let defaultSupervisor: Supervisor | undefined;

/** The process-wide supervisor used when none is given. Created on first use. */
export function getDefaultSupervisor(): Supervisor {
  return (defaultSupervisor ??= new Supervisor());
}

/** Options of {@link Sandbox.stop}. */
export interface StopOptions {
  /** Graceful stop budget before escalating to kill. Default: the sandbox's stopTimeoutMs. */
  readonly timeoutMs?: number;
  /** Aborting it escalates the stop to a kill at once. */
  readonly signal?: AbortSignal;
}

/** Options of {@link Sandbox.execStream}. */
export interface ExecStreamOptions extends Omit<ExecOptions, 'stdin'> {
  /** `'pipe'` keeps stdin open for {@link ExecStream.write}; a value is written then closed; a stream is copied in. */
  readonly stdin?: 'pipe' | string | Uint8Array | StdinSource;
  /**
   * Runs on whoever holds (or drops) the handle, as E2B's `commands.run({ background })`:
   * the handle does not keep this process alive, and its output is not held back for a
   * reader: it is kept in the sandbox's replay buffer (bounded), from which the handle, or
   * `sandbox.attach(stream.id)` from any process later, reads it. No `timeoutMs` (end it
   * with `kill()`).
   */
  readonly background?: boolean;
}

/** Options of {@link Sandbox.run}: those of exec, and an entrypoint override. */
export interface RunOptions extends ExecOptions {
  /** Replaces the image's entrypoint and drops its cmd (`docker run --entrypoint`). */
  readonly entrypoint?: readonly string[];
}

/** Options of {@link Sandbox.runStream}. */
export interface RunStreamOptions extends ExecStreamOptions {
  readonly entrypoint?: readonly string[];
}

/** Allows `for await (const x of sb.execStream(…))` without an extra await. */
function iterable(p: Promise<ExecStream>): Promise<ExecStream> & AsyncIterable<ExecStreamItem> {
  return Object.assign(p, {
    async *[Symbol.asyncIterator]() {
      yield* await p;
    },
  });
}

/** How long an exec killed for its timeoutMs may take to report its exit before the host gives up on it. */
const KILL_GRACE_MS = 5000;
const encoder = new TextEncoder();

/** One row of {@link Sandbox.list}. */
export interface SandboxSummary {
  readonly name: string;
  readonly status: SandboxStatus;
  readonly image: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly detached: boolean;
  readonly stopReason: StopReason | null;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** The cluster node it runs (or ran) on (cluster lists only). */
  readonly node?: string;
}

/** Options of {@link Sandbox.list}. */
export interface ListOptions extends CallOptions {
  /** Only sandboxes that carry all these labels. */
  readonly labels?: Readonly<Record<string, string>>;
  /** Page size. Default: all. */
  readonly limit?: number;
  /** Rows to skip (names are sorted). */
  readonly offset?: number;
  readonly supervisor?: Supervisor;
  /** List the cluster's catalog instead: every sandbox on every node. */
  readonly cluster?: Cluster;
}

/** Options of the static lookups. */
export interface LookupOptions extends CallOptions {
  readonly supervisor?: Supervisor;
  /** Look the sandbox up in this cluster's catalog, wherever it runs. */
  readonly cluster?: Cluster;
}

export class Sandbox {
  readonly #link: SandboxLink | undefined;
  /** The supervisor of a local sandbox (undefined for one of a cluster). */
  readonly #localSup: Supervisor | undefined;
  /** The cluster of a sandbox that runs on a cluster node. */
  readonly #cluster: Cluster | undefined;
  readonly #config: SandboxConfig;
  #released = false;
  #sampler: Pick<MetricsSampler, 'sample'> | undefined;

  /**
   * This sandbox's events, in order, until (and including) `sandbox.stopped`. For a handle
   * on a stopped sandbox it completes at once.
   */
  readonly events$: Observable<SandboxEvent>;

  private constructor(sup: Supervisor | undefined, config: SandboxConfig, link: SandboxLink | undefined, cluster?: Cluster) {
    this.#localSup = sup;
    this.#cluster = cluster;
    this.#config = config;
    this.#link = link;
    this.#released = link === undefined;
    this.events$ = link ? link.events$.pipe(takeWhile((e) => e.type !== 'sandbox.stopped', true)) : EMPTY;
  }

  /** Starts building a sandbox. */
  static builder(name: string): SandboxBuilder<Sandbox> {
    return new SandboxBuilder(name, (config, opts) =>
      opts.cluster ? Sandbox.#createInCluster(config, opts.cluster, opts.placement, opts) : opts.detached ? Sandbox.createDetached(config, opts) : Sandbox.create(config, opts),
    );
  }

  /** The supervisor of a local sandbox; a cluster sandbox has none here. */
  get #sup(): Supervisor {
    if (!this.#localSup) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${this.name}" runs on a cluster node: this call is for local sandboxes only (not built through the cluster yet)`, { details: { state: 'remote' } });
    return this.#localSup;
  }

  static async #createInCluster(config: SandboxConfig, cluster: Cluster, placement: PlacementOptions | undefined, options: CallOptions & { replace?: boolean }, node?: string): Promise<Sandbox> {
    const link = await bounded(
      `create of sandbox "${config?.name}" in the cluster`,
      options,
      async (signal) => {
        const made = await createInCluster(cluster, config, placement, options.replace ?? false, node);
        // A caller that gave up leaves nothing running, nor its name taken.
        if (signal?.aborted) {
          await made.api.kill();
          await made.release();
          await removeInCluster(cluster, config.name);
        }
        return made;
      },
      true,
    );
    return new Sandbox(undefined, link.config, link, cluster);
  }

  /**
   * Boots a sandbox from a config (as `builder.build()` returns it, or parsed from JSON).
   * An abort or `timeoutMs` kills the VM being booted; the call rejects once it is gone (the
   * record says `boot-failed`).
   */
  static async create(config: SandboxConfig, options: CreateOptions & CallOptions & { supervisor?: Supervisor; cluster?: Cluster; placement?: PlacementOptions } = {}): Promise<Sandbox> {
    // Placed on a node of the cluster, as `builder(…).cluster(cluster).create()`.
    if (options.cluster) return Sandbox.#createInCluster(normalizeConfig(config), options.cluster, options.placement, options);
    const sup = options.supervisor ?? getDefaultSupervisor();
    const ctl = await bounded(`create of sandbox "${config?.name}"`, options, (signal) => undoneOnAbort(sup.create(config, { ...options, ...(signal ? { signal } : {}) }), signal), true);
    return new Sandbox(sup, ctl.config, ctl);
  }

  /**
   * Boots a detached sandbox: it runs in a host process of its own, survives this process,
   * and any process reaches it with {@link Sandbox.get}.
   */
  static async createDetached(config: SandboxConfig, options: Pick<CreateOptions, 'replace'> & CallOptions & { supervisor?: Supervisor } = {}): Promise<Sandbox> {
    const sup = options.supervisor ?? getDefaultSupervisor();
    const link = await bounded(`create of sandbox "${config?.name}"`, options, (signal) => undoneOnAbort(sup.createDetached(config, options), signal), true);
    return new Sandbox(sup, link.config, link);
  }

  /**
   * A handle on an existing sandbox by name: connected if it runs (in this process, or
   * detached), else a stopped handle whose {@link start} boots it again.
   */
  static async get(name: string, options: LookupOptions = {}): Promise<Sandbox> {
    if (options.cluster) {
      const cluster = options.cluster;
      const found = await bounded(`lookup of sandbox "${name}" in the cluster`, options, () => openInCluster(cluster, name));
      if (!found) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" in the cluster`);
      const config = found.link?.config ?? ({ name, image: found.entry.image, memoryMib: found.entry.memoryMib, labels: found.entry.labels } as SandboxConfig);
      return new Sandbox(undefined, config, found.link, cluster);
    }
    const sup = options.supervisor ?? getDefaultSupervisor();
    const link = await bounded(`lookup of sandbox "${name}"`, options, (signal) => undoneOnAbort(sup.open(name), signal, (l) => l.detach()), true);
    if (link) return new Sandbox(sup, link.config, link);
    const rec = sup.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    return new Sandbox(sup, rec.config, undefined);
  }

  /** Boots a stopped sandbox again from its persisted config and upper disk. */
  static async start(name: string, options: LookupOptions & { detached?: boolean } = {}): Promise<Sandbox> {
    if (options.cluster) {
      const cluster = options.cluster;
      const link = await bounded(`start of sandbox "${name}" in the cluster`, options, () => startInCluster(cluster, name));
      return new Sandbox(undefined, link.config, link, cluster);
    }
    const sup = options.supervisor ?? getDefaultSupervisor();
    const link = await bounded(
      `start of sandbox "${name}"`,
      options,
      async (signal): Promise<SandboxLink> => {
        if (!options.detached) return undoneOnAbort(sup.restart(name, signal ? { signal } : {}), signal);
        const rec = sup.reconcile(name);
        if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
        if (rec.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot start sandbox "${name}": it is ${rec.status}`);
        return undoneOnAbort(sup.createDetached(rec.config, { restart: true }), signal);
      },
      true,
    );
    return new Sandbox(sup, link.config, link);
  }

  /**
   * Writes snapshot `name` (taken with `sb.snapshot(name)`) to one archive file that
   * another host or state dir can import: the guest's memory and devices, its disk
   * (flattened), its config, and each file's sha256 (microsandbox's `snapshot save`).
   *
   * @example
   * await sb.snapshot('ready');
   * const { bytes } = await Sandbox.exportSnapshot('ready', '/backups/ready.corral');
   */
  static async exportSnapshot(name: string, file: string, options: LookupOptions = {}): Promise<{ file: string; bytes: number; ms: number }> {
    if (typeof file !== 'string' || file === '') throw new InvalidOptionError('file', 'a path to write the archive to', file);
    const sup = options.supervisor ?? getDefaultSupervisor();
    return bounded(`export of snapshot "${name}"`, options, (signal) => sup.exportSnapshot(name, file, signal), true);
  }

  /**
   * Reads an archive made by {@link exportSnapshot} as snapshot `name` (the archive's own by
   * default); start sandboxes from it with `builder.fromSnapshot(name)`. Refused with
   * E_SNAPSHOT_CORRUPT when a file does not match its digest, and E_SNAPSHOT_INCOMPATIBLE
   * when this host lacks the kernel, initramfs or image layers it was taken on.
   *
   * @example
   * await Sandbox.importSnapshot('/backups/ready.corral', { name: 'ready' });
   * const sb = await Sandbox.builder('again').fromSnapshot('ready').create();
   */
  static async importSnapshot(file: string, options: LookupOptions & { name?: string } = {}): Promise<SnapshotMeta> {
    if (typeof file !== 'string' || file === '') throw new InvalidOptionError('file', 'the path of a snapshot archive', file);
    const sup = options.supervisor ?? getDefaultSupervisor();
    return bounded(`import of snapshot archive ${file}`, options, (signal) => sup.importSnapshot(file, { ...(options.name !== undefined ? { name: options.name } : {}), ...(signal ? { signal } : {}) }), true);
  }

  /** Every known sandbox, with its status (records left by dead processes are repaired). */
  static async list(options: ListOptions = {}): Promise<SandboxSummary[]> {
    if (options.cluster) {
      const cluster = options.cluster;
      return bounded('list of sandboxes in the cluster', options, async () => {
        const want = Object.entries(options.labels ?? {});
        const rows = (await cluster.catalog())
          .filter((e) => want.every(([k, v]) => e.labels[k] === v))
          .map((e) => ({ name: e.name, status: e.status, image: e.image, labels: e.labels, detached: true, stopReason: e.stopReason, createdAt: e.createdAt, updatedAt: e.updatedAt, node: e.node }));
        const offset = options.offset ?? 0;
        return rows.slice(offset, options.limit === undefined ? undefined : offset + options.limit);
      });
    }
    return bounded('list of sandboxes', options, async () => Sandbox.#list(options));
  }

  static #list(options: ListOptions): SandboxSummary[] {
    const sup = options.supervisor ?? getDefaultSupervisor();
    const rows = sup
      .list(options.labels ? { labels: options.labels } : {})
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((r) => ({
        name: r.name,
        status: r.status,
        image: r.config.image,
        labels: r.config.labels ?? {},
        detached: Boolean(r.controlSocket),
        stopReason: r.stopReason,
        createdAt: r.createdAt,
        updatedAt: r.updatedAt,
      }));
    const offset = options.offset ?? 0;
    return rows.slice(offset, options.limit === undefined ? undefined : offset + options.limit);
  }

  /**
   * The recorded exec output of a sandbox by name, also after it stopped (until removed).
   *
   * @example
   * const last = await Sandbox.logs('worker', { tail: 5 });
   */
  static async logs(name: string, options: LogsOptions & LookupOptions = {}): Promise<LogEntry[]> {
    const { supervisor, cluster, signal, timeoutMs, ...rest } = options;
    if (cluster) return bounded(`logs of sandbox "${name}" in the cluster`, { signal, timeoutMs }, () => logsInCluster(cluster, name, rest));
    return bounded(`logs of sandbox "${name}"`, { signal, timeoutMs }, async () => (supervisor ?? getDefaultSupervisor()).logs(name, rest));
  }

  /**
   * The recorded output, then new output as it arrives (from this or another process), until
   * the sandbox stops: `tail -f` for a sandbox.
   *
   * @example
   * Sandbox.followLogs('worker', { tail: 10 }).subscribe((e) => process.stdout.write(e.data));
   */
  static followLogs(name: string, options: LogsOptions & { supervisor?: Supervisor; cluster?: Cluster; intervalMs?: number } = {}): Observable<LogEntry> {
    const { supervisor, cluster, ...rest } = options;
    // In a cluster: the record from the sandbox's node, then the cluster's event stream.
    if (cluster) return followLogsInCluster(cluster, name, rest);
    return (supervisor ?? getDefaultSupervisor()).followLogs(name, rest);
  }

  /** Removes a stopped sandbox: its record, upper disk and sockets. Refuses a running one. */
  static async remove(name: string, options: LookupOptions = {}): Promise<void> {
    if (options.cluster) {
      const cluster = options.cluster;
      return bounded(`removal of sandbox "${name}" from the cluster`, options, () => removeInCluster(cluster, name));
    }
    const sup = options.supervisor ?? getDefaultSupervisor();
    await bounded(`removal of sandbox "${name}"`, options, () => sup.remove(name));
  }

  get name(): string {
    return this.#config.name;
  }

  /** The config the sandbox was created from. */
  get config(): SandboxConfig {
    return this.#config;
  }

  /** True when the sandbox lives in a host process of its own. */
  get detached(): boolean {
    return this.#link?.detached ?? false;
  }

  /** Current facts: status, state, pid, accel, boot timings, stop reason. */
  async info(options: CallOptions = {}): Promise<SandboxInfo> {
    const link = this.#link;
    validateCallOptions(options);
    if (!link || this.#released) return this.#recordInfo();
    return bounded(`info of sandbox "${this.name}"`, options, () => link.busy(() => link.api.info())).catch((err: unknown) => {
      // A closed supervisor, or a worker that died under the sandbox: the record says how it ended.
      if (err instanceof CorralError && (err.code === 'E_CLOSED' || err.code === 'E_WORKER_CRASHED' || err.code === 'E_NODE_LOST')) return this.#recordInfo();
      throw err;
    });
  }

  /** Boots this (stopped) sandbox again; resolves with a handle on the running sandbox. */
  start(options: { detached?: boolean } & CallOptions = {}): Promise<Sandbox> {
    if (this.#cluster) return Sandbox.start(this.name, { ...options, cluster: this.#cluster });
    return Sandbox.start(this.name, { ...options, supervisor: this.#sup });
  }

  /**
   * Runs a command to completion and collects its output.
   *
   * @example
   * const r = await sb.exec('sh', ['-c', 'echo hi; exit 3']); // r.code === 3, r.stdout === 'hi\n'
   */
  async exec(command: string, args: readonly string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    return this.#collect(await this.#start([command, ...args], { ...options, stdin: options.stdin }, true));
  }

  /**
   * Runs the image's own command, as `docker run IMAGE [ARGS…]` would: its entrypoint
   * followed by `args`, or by its cmd when `args` is empty. `options.entrypoint` replaces the
   * entrypoint and drops the cmd. Fails with E_NO_COMMAND when that leaves nothing to run.
   *
   * @example
   * const r = await sb.run();                    // entrypoint + cmd
   * const v = await sb.run(['--version']);       // entrypoint + --version
   * const s = await sb.run(['-c', 'id'], { entrypoint: ['/bin/sh'] });
   */
  async run(args: readonly string[] = [], options: RunOptions = {}): Promise<ExecResult> {
    const { entrypoint, ...rest } = options;
    return this.#collect(await this.#start({ args, entrypoint }, rest, true));
  }

  /** {@link run}, streamed like {@link execStream}. */
  runStream(args: readonly string[] = [], options: RunStreamOptions = {}): Promise<ExecStream> & AsyncIterable<ExecStreamItem> {
    const { entrypoint, ...rest } = options;
    return iterable(this.#start({ args, entrypoint }, rest));
  }

  async #collect(stream: ExecStream): Promise<ExecResult> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    const sub = stream.items$.subscribe({
      next: (item) => {
        if (item.type === 'stdout') out.push(item.data);
        else if (item.type === 'stderr') err.push(item.data);
      },
      error: () => {},
    });
    try {
      const x = await stream.exited;
      return new ExecResult(stream.execId, x.code, x.signal, Buffer.concat(out), Buffer.concat(err), x.durationMs, x.timedOut, x.oomKilled);
    } finally {
      sub.unsubscribe();
    }
  }

  /** Runs a script with the sandbox's shell (`shell -c script`). */
  shell(script: string, options: ExecOptions = {}): Promise<ExecResult> {
    return this.exec(this.#config.shell, ['-c', script], options);
  }

  /**
   * Runs a command and streams what happens: `started`, `stdout`, `stderr`, `exited`.
   * Iterate it (`for await`) or subscribe to `items$`.
   */
  execStream(command: string, args: readonly string[] = [], options: ExecStreamOptions = {}): Promise<ExecStream> & AsyncIterable<ExecStreamItem> {
    return iterable(this.#start([command, ...args], options));
  }

  /**
   * The guest's filesystem: read, write (bytes, text, streams), list, stat, mkdir, remove,
   * rename, copy in from and out to the host. Works for detached sandboxes too.
   *
   * @example
   * await sb.fs().write('/tmp/a.txt', 'hi');
   * const text = await sb.fs().readText('/tmp/a.txt');
   */
  fs(options: CallOptions = {}): SandboxFs {
    validateCallOptions(options);
    return new SandboxFs(
      this.name,
      (call) => {
        const link = this.#requireLink('use files of');
        return bounded(`file call ${call.op} in sandbox "${this.name}"`, options, () => link.busy(() => link.api.fs(call)));
      },
      {
        link: () => {
          const link = this.#requireLink('watch files of');
          return {
            events$: link.events$,
            start: (id, req) => link.busy(() => link.api.watchStart(id, req)),
            stop: (id) => (this.#released ? Promise.resolve() : link.api.watchStop(id)),
            hold: (fn) => link.busy(fn),
          };
        },
        // The watch's own options win over the handle's.
        bound: (what, own, fn) => bounded(what, { ...options, ...own }, fn),
      },
    );
  }

  /** Freezes the VM's CPUs: no guest code runs and the VM process uses no CPU. */
  pause(options: CallOptions = {}): Promise<void> {
    const link = this.#requireLink('pause');
    return bounded(`pause of sandbox "${this.name}"`, options, () => link.busy(() => link.api.pause()));
  }

  /** Thaws the VM's CPUs; running execs carry on. */
  resume(options: CallOptions = {}): Promise<void> {
    const link = this.#requireLink('resume');
    return bounded(`resume of sandbox "${this.name}"`, options, () => link.busy(() => link.api.resume()));
  }

  /**
   * Sets the sandbox's lifetime limit again, counted from now: `seconds` from this call it
   * drains and stops with reason `max-duration`, replacing any earlier limit (the builder's
   * `.maxDuration()` or an earlier call). Like E2B's `setTimeout`: a service extends a
   * sandbox that is still in use. The timer is the host's; the guest cannot move it.
   *
   * @example
   * await sb.setMaxDuration(600); // ten more minutes from now
   */
  async setMaxDuration(seconds: number, options: CallOptions = {}): Promise<void> {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds * 1000 < LIMITS.policyMs.min || seconds * 1000 > LIMITS.policyMs.max) {
      throw new InvalidOptionError('maxDuration', `a number of seconds from ${LIMITS.policyMs.min / 1000} to ${LIMITS.policyMs.max / 1000}`, seconds);
    }
    const link = this.#requireLink('set the max duration of');
    await bounded(`setMaxDuration of sandbox "${this.name}"`, options, () => link.busy(async () => link.api.setMaxDuration(Math.round(seconds * 1000))));
  }

  /** Refuses new execs, lets running ones finish, then stops (reason `drained`). */
  async drain(options: CallOptions = {}): Promise<SandboxInfo> {
    const link = this.#requireLink('drain');
    const info = await bounded(`drain of sandbox "${this.name}"`, options, () => link.busy(() => link.api.drain()));
    await this.#release();
    return info;
  }

  /**
   * Graceful stop: the agent syncs and the guest shuts down; after `timeoutMs` it escalates
   * to kill by itself.
   */
  async stop(options: StopOptions = {}): Promise<SandboxInfo> {
    if (this.#released || !this.#link) return this.#recordInfo();
    const link = this.#link;
    // An abort turns the graceful stop into a kill (the "timeout fallback" pattern).
    const onAbort = () => void link.api.kill().catch(logFailure(`killing sandbox "${this.name}" on abort`));
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const info = await link.busy(() => link.api.stop(options.timeoutMs));
      await this.#release();
      return info;
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Forceful stop: SIGKILL to the VM. */
  async kill(options: CallOptions = {}): Promise<SandboxInfo> {
    validateCallOptions(options);
    if (this.#released || !this.#link) return this.#recordInfo();
    const link = this.#link;
    const info = await bounded(`kill of sandbox "${this.name}"`, options, () => link.busy(() => link.api.kill()));
    await this.#release();
    return info;
  }

  /** Resolves when the sandbox stops on its own (or by another caller), without stopping it. */
  async wait(options: CallOptions = {}): Promise<SandboxInfo> {
    validateCallOptions(options);
    if (this.#released || !this.#link) return this.#recordInfo();
    const link = this.#link;
    const info = await bounded(`wait for sandbox "${this.name}"`, options, () => link.busy(() => link.api.stopped())).catch((err: unknown) => {
      // Its worker died: the sandbox is stopped (crashed), as its record says.
      if (err instanceof CorralError && err.code === 'E_WORKER_CRASHED') return undefined;
      throw err;
    });
    await this.#release();
    return info ?? this.#recordInfo();
  }

  /**
   * Lets go of this handle without stopping the sandbox. A detached sandbox keeps running in
   * its host process; an attached one keeps running in this process's supervisor (until
   * this process exits). `Sandbox.get(name)` gives a new handle.
   */
  async detach(options: CallOptions = {}): Promise<void> {
    validateCallOptions(options);
    if (this.#released) return;
    this.#released = true;
    const link = this.#link;
    if (link) await bounded(`detach from sandbox "${this.name}"`, options, () => link.detach());
  }

  /**
   * Saves this sandbox's memory and upper disk as snapshot `name` (the VM is frozen for the
   * save, then runs on). `Sandbox.builder(n).fromSnapshot(name).create()` starts from it.
   */
  async snapshot(name: string, options: CallOptions = {}): Promise<SnapshotMeta> {
    const link = this.#requireLink('snapshot');
    return bounded(`snapshot of sandbox "${this.name}"`, options, () => link.busy(() => link.api.snapshot(name)));
  }

  /**
   * Running copies of this sandbox that share its state up to now and diverge after. Each
   * gets its own name, disk, hostname and entropy; this sandbox runs on.
   *
   * @example
   * const child = await sb.fork('child');
   * const kids = await sb.fork({ count: 3 });   // names `${sb.name}-fork-1` …
   */
  fork(name: string, options?: CallOptions): Promise<Sandbox>;
  fork(options: { count: number; prefix?: string } & CallOptions): Promise<Sandbox[]>;
  async fork(arg: string | ({ count: number; prefix?: string } & CallOptions), callOptions: CallOptions = {}): Promise<Sandbox | Sandbox[]> {
    const { signal, timeoutMs } = typeof arg === 'string' ? callOptions : arg;
    // Abortable: forks already made when the call gives up are killed and removed.
    return bounded(`fork of sandbox "${this.name}"`, { signal, timeoutMs }, (s) => this.#fork(arg, s), true);
  }

  async #fork(arg: string | { count: number; prefix?: string }, signal: AbortSignal | undefined): Promise<Sandbox | Sandbox[]> {
    const names = forkNames(this.name, arg);
    const cluster = this.#cluster;
    // In a cluster the snapshot is taken on the sandbox's node: its forks start there.
    const node = cluster ? (await this.info()).node : undefined;
    const forks = await fork<Sandbox>(
      this.name,
      names,
      cluster && node
        ? {
            snapshot: (snap) => this.snapshot(snap),
            create: (n, fromSnapshot, s) => Sandbox.#createInCluster({ ...this.#config, name: n, fromSnapshot }, cluster, undefined, { ...(s ? { signal: s } : {}) }, node),
            discard: async (f) => {
              await f.kill();
              await Sandbox.remove(f.name, { cluster });
            },
            removeSnapshot: async (snap) => void (await cluster.request(node, 'snapshot.remove', { name: snap })),
          }
        : {
            snapshot: (snap) => this.snapshot(snap),
            create: (n, fromSnapshot, s) => Sandbox.create({ ...this.#config, name: n, fromSnapshot }, { supervisor: this.#sup, ...(s ? { signal: s } : {}) }),
            discard: async (f) => {
              await f.kill();
              await Sandbox.remove(f.name, { supervisor: this.#sup });
            },
            removeSnapshot: (snap) => this.#sup.removeSnapshot(snap),
          },
      signal,
      (err, snap) => logFailure(`removing the fork snapshot ${snap}`)(err),
    );
    return typeof arg === 'string' ? forks[0]! : forks;
  }

  /** Raw agent round trip (PING/PONG), ms. For benchmarks. */
  ping(bytes = 64, options: CallOptions = {}): Promise<number> {
    const link = this.#requireLink('ping');
    return bounded(`ping of sandbox "${this.name}"`, options, () => link.busy(() => link.api.ping(bytes)));
  }

  /**
   * A floor measurement through the guest agent, for benchmarks: `spawn` times runs of a
   * command as the agent sees them (vfork to reaped, stdio on /dev/null), `sink` has the
   * agent send bytes of its own over the port (no child, no pipe). Needs agent protocol 5.
   *
   * @example
   * const { ms } = await sb.probe({ op: 'spawn', argv: ['true'], count: 50 });
   */
  probe(req: ProbeRequest, options: CallOptions = {}): Promise<ProbeResult> {
    const link = this.#requireLink('probe');
    return bounded(`probe of sandbox "${this.name}"`, options, () => link.busy(() => link.api.probe(req)));
  }

  /**
   * The next event of `type` from this sandbox (that `where` accepts), as a call: while it
   * waits it keeps the process alive, as every call does (a subscription to `events$` does
   * not, so a script that awaits an event through it alone may end with exit code 13).
   * Rejects with E_ILLEGAL_STATE if the sandbox stops first, and with E_TIMEOUT / E_ABORTED
   * past `timeoutMs` / on `signal`.
   *
   * @example
   * const sb = await Sandbox.builder('napper').idleTimeout(30, { action: 'pause' }).create();
   * await sb.waitForEvent('sandbox.paused', { where: (e) => e.reason === 'idle' });
   */
  waitForEvent<T extends SandboxEvent['type']>(
    type: T,
    options: CallOptions & { where?: (e: Extract<SandboxEvent, { type: T }>) => boolean } = {},
  ): Promise<Extract<SandboxEvent, { type: T }>> {
    if (typeof type !== 'string' || !type.includes('.')) throw new InvalidOptionError('type', 'an event type such as "sandbox.paused"', type);
    if (options.where !== undefined && typeof options.where !== 'function') throw new InvalidOptionError('where', 'a function of the event', options.where);
    const link = this.#requireLink('wait for an event of');
    const where = options.where;
    type Wanted = Extract<SandboxEvent, { type: T }>;
    return bounded(`wait for ${type} of sandbox "${this.name}"`, options, (signal) =>
      link.busy(
        () =>
          new Promise<Wanted>((resolve, reject) => {
            let sub: Subscription | undefined;
            const done = () => {
              signal?.removeEventListener('abort', onAbort);
              // An event delivered during subscribe() comes before `sub` is assigned.
              queueMicrotask(() => sub?.unsubscribe());
            };
            const onAbort = () => {
              done();
              reject(signal?.reason);
            };
            signal?.addEventListener('abort', onAbort, { once: true });
            sub = link.events$.subscribe({
              next: (e) => {
                if (e.type === type && (!where || where(e as Wanted))) {
                  done();
                  resolve(e as Wanted);
                } else if (e.type === 'sandbox.stopped') {
                  done();
                  reject(new CorralError('E_ILLEGAL_STATE', `sandbox "${this.name}" stopped (${e.reason}) before ${type}`, { details: { state: 'stopped' } }));
                }
              },
              complete: () => {
                done();
                reject(new CorralError('E_ILLEGAL_STATE', `the events of sandbox "${this.name}" ended before ${type}`));
              },
            });
          }),
      ), true);
  }

  /**
   * This sandbox's events with resume: everything buffered after `since` exactly once, then
   * live events, completing after `sandbox.stopped`. A `stream.gap` event first says so when
   * the buffer no longer reaches back to `since`. Works for detached sandboxes too.
   *
   * @example
   * let last = 0;
   * sb.events({ since: last }).subscribe((e) => (last = e.seq));
   */
  events(options: { since?: number } = {}): Observable<SandboxEvent> {
    // A cluster's seqs are its event stream's sequences.
    if (this.#cluster) return this.#cluster.events({ name: this.name, since: options.since ?? 0, untilStopped: true });
    return this.#sup.events({ name: this.name, ...(options.since !== undefined ? { since: options.since as SinceCursor } : {}) });
  }

  /**
   * The recorded output of this sandbox's execs, oldest first (bounded: the oldest goes
   * first). Readable after the sandbox stopped.
   *
   * @example
   * const text = (await sb.logs({ tail: 10 })).map((e) => Buffer.from(e.data).toString()).join('');
   */
  async logs(options: LogsOptions & CallOptions = {}): Promise<LogEntry[]> {
    if (this.#cluster) return Sandbox.logs(this.name, { ...options, cluster: this.#cluster });
    return Sandbox.logs(this.name, { ...options, supervisor: this.#sup });
  }

  /** {@link Sandbox.followLogs} for this sandbox. */
  logs$(options: LogsOptions & { intervalMs?: number } = {}): Observable<LogEntry> {
    if (this.#cluster) return followLogsInCluster(this.#cluster, this.name, options);
    return this.#sup.followLogs(this.name, options);
  }

  /**
   * One sample of resource use, taken on the host: CPU % of the VM process (since the
   * previous call on this handle; the first call measures over 250 ms), its RSS/PSS,
   * qemu's disk byte counters, and the network bytes of its NIC (null without one).
   *
   * @example
   * const m = await sb.metrics(); // m.cpuPercent, m.memory.pssBytes, m.disk.writeBytes
   */
  metrics(options: CallOptions = {}): Promise<SandboxMetrics> {
    try {
      this.#sampler ??= this.#newSampler();
    } catch (err) {
      return Promise.reject(err);
    }
    const sampler = this.#sampler;
    return bounded(`metrics of sandbox "${this.name}"`, options, () => sampler.sample());
  }

  /**
   * A sample every `intervalMs` (default 1000), CPU % over each interval; completes when the
   * sandbox stops. Each subscription samples on its own.
   *
   * @example
   * sb.metrics$({ intervalMs: 500 }).subscribe((m) => console.log(m.cpuPercent));
   */
  metrics$(options: { intervalMs?: number } = {}): Observable<SandboxMetrics> {
    return metricsStream(() => this.#newSampler(), options.intervalMs ?? 1000);
  }

  #newSampler(): Pick<MetricsSampler, 'sample'> {
    // The VM's pid and /proc are its node's: sampled there, by a sampler of this handle's own.
    const cluster = this.#cluster;
    if (cluster) {
      const sampler = randomUUID();
      return {
        sample: async () => {
          const info = await this.info();
          if (info.status === 'stopped' || !info.node) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${this.name}" has no running VM`, { details: { state: 'stopped' } });
          return cluster.request<SandboxMetrics>(info.node, 'metrics', { name: this.name, sampler });
        },
      };
    }
    return linkSampler(this.name, this.#config.memoryMib, () => this.#requireLink('read metrics of'), () => this.info());
  }

  /** Graceful end: {@link stop}. Idempotent (a stopped sandbox answers its record). */
  close(options: StopOptions = {}): Promise<SandboxInfo> {
    return this.stop(options);
  }

  /** Forceful end: {@link kill}. Idempotent. */
  destroy(): Promise<SandboxInfo> {
    return this.kill();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Publishes a guest TCP port on the running sandbox: `127.0.0.1:hostPort` on the host
   * forwards to the guest's `guestPort` from now on, as `.port()` does at create (loopback
   * only; replies pass the network policy as established traffic). The sandbox needs a
   * network device (`.network(…)` or a `.port(…)` at create): E_ILLEGAL_STATE otherwise; a
   * host port in use is E_INVALID_OPTION. Forwards made here last as long as the VM.
   *
   * @example
   * await sb.shell('httpd -p 8080 -h /www');
   * await sb.publish(18080, 8080); // curl http://127.0.0.1:18080/
   */
  async publish(hostPort: number, guestPort: number, options: CallOptions = {}): Promise<void> {
    const link = this.#requireLink('publish a port of');
    await bounded(`publish of port ${hostPort} of sandbox "${this.name}"`, options, () => link.busy(() => link.api.publish(hostPort, guestPort)));
  }

  /** Stops forwarding `hostPort` (published at create or with {@link publish}); E_INVALID_OPTION if it is not. */
  async unpublish(hostPort: number, options: CallOptions = {}): Promise<void> {
    const link = this.#requireLink('unpublish a port of');
    await bounded(`unpublish of port ${hostPort} of sandbox "${this.name}"`, options, () => link.busy(() => link.api.unpublish(hostPort)));
  }

  /**
   * The commands running in the sandbox now (background ones and any other), oldest first:
   * `id` (what {@link attach} takes), `argv`, `pid`, `startedAt`, `background`.
   *
   * @example
   * for (const c of await sb.execs()) console.log(c.id, c.argv.join(' '));
   */
  async execs(options: CallOptions = {}): Promise<ExecInfo[]> {
    const link = this.#requireLink('list the commands of');
    return bounded(`execs of sandbox "${this.name}"`, options, () => link.busy(async () => link.api.execs()));
  }

  /**
   * Reconnects to a running command by id, from this or any process (a detached sandbox's
   * commands outlive the process that started them): an {@link ExecStream} that reads its
   * output from the start, or after `since` (a stream's `lastSeq`), as far back as the
   * sandbox's replay buffer reaches, then live; `write`, `end`, `kill` and `resize` act on
   * the command. E_EXEC_NOT_FOUND when no command of that id runs.
   *
   * @example
   * const job = await sb.execStream('sh', ['-c', 'long-task'], { background: true });
   * // … later, maybe in another process:
   * const again = await sb.attach(job.id);
   * for await (const item of again) if (item.type === 'stdout') process.stdout.write(item.data);
   */
  async attach(id: number, options: CallOptions & { since?: number } = {}): Promise<ExecStream> {
    if (!Number.isInteger(id) || id < 1) throw new InvalidOptionError('id', 'the id of a running command (stream.id, or sandbox.execs())', id);
    const since = options.since ?? 0;
    if (!Number.isInteger(since) || since < 0) throw new InvalidOptionError('since', 'a non-negative integer seq (a stream\'s lastSeq)', options.since);
    const running = await this.execs(options);
    if (!running.some((e) => e.id === id)) {
      throw new CorralError('E_EXEC_NOT_FOUND', `no running command ${id} in sandbox "${this.name}" (sb.execs() lists them; a finished one's output is in sb.logs({ execId: ${id} }))`);
    }
    const link = this.#requireLink('attach to a command of');
    return this.#attached(link, id, since, this.#controlOf(link, id));
  }

  #controlOf(link: SandboxLink, execId: number): ExecControl {
    return {
      write: async (data: string | Uint8Array) => link.api.writeStdin(execId, typeof data === 'string' ? encoder.encode(data) : data),
      end: async () => link.api.closeStdin(execId),
      kill: async (signo = 9) => link.api.signalExec(execId, signo),
      resize: async (cols: number, rows: number) => link.api.resizeExec(execId, cols, rows),
      replayable: true,
    };
  }

  async #startBackground(link: SandboxLink, execId: number, command: string[] | ImageCommandRequest, options: ExecStreamOptions): Promise<ExecStream> {
    const tty = ttyOption(options.tty);
    const user = userOption(options.user);
    const stdin = options.stdin;
    await link.api.exec(execId, {
      argv: Array.isArray(command) ? command : [],
      ...(Array.isArray(command) ? {} : { imageCommand: command }),
      ...(options.env ? { env: options.env } : {}),
      ...(options.cwd ? { cwd: options.cwd } : {}),
      stdin: stdin !== undefined,
      mergeStderr: options.mergeStderr ?? false,
      ...(tty ? { tty } : {}),
      ...(user !== undefined ? { user } : {}),
      background: true,
    });
    const control = this.#controlOf(link, execId);
    const stream = this.#attached(link, execId, 0, control);
    if (isStdinSource(stdin)) void feedStdin(stream, stdin);
    else if (stdin !== undefined && stdin !== 'pipe') {
      // A write that fails means the command is gone: its own end says why.
      await control.write(typeof stdin === 'string' ? encoder.encode(stdin) : stdin).catch(logFailure(`writing the stdin of background exec ${execId}`));
      await control.end().catch(logFailure(`closing the stdin of background exec ${execId}`));
    }
    return stream;
  }

  /**
   * A stream of one exec's events read from the sandbox's replay buffer after `since`, then
   * live, connected on its first use (so a handle nobody reads costs nothing and holds
   * nothing); from then until the exec ends it holds the process, like any call.
   */
  #attached(link: SandboxLink, execId: number, since: number, control: ExecControl): ExecStream {
    const stream = new ExecStream(execId, control);
    stream.connectOnUse(() => {
      let sub: Subscription | undefined;
      let release!: () => void;
      const disconnected = new Promise<void>((r) => (release = r));
      const done = () => queueMicrotask(() => sub?.unsubscribe());
      // In a cluster, from the cluster's event stream (its seqs are the stream's).
      const events$ = this.#cluster ? this.#cluster.events({ name: this.name, since }) : this.#sup.events({ name: this.name, since });
      sub = events$.subscribe({
        next: (e) => {
          if (isExecOf(e, execId)) {
            stream.lastSeq = e.seq;
            if (routeExecEvent(stream, e, () => false)) done();
          } else if (e.type === 'sandbox.stopped') {
            stream.fail(new CorralError('E_VM_CRASHED', `sandbox "${this.name}" stopped while exec ${execId} was running`));
            done();
          }
        },
        error: (err: Error) => stream.fail(err),
        complete: () => stream.fail(new CorralError('E_EXEC_NOT_FOUND', `the events of sandbox "${this.name}" ended before exec ${execId} did`)),
      });
      // Holds the process while connected, like a call; the exec's own failure reaches its reader.
      void link.busy(() => Promise.race([stream.ended, disconnected])).catch(() => {});
      return () => {
        sub?.unsubscribe();
        release();
      };
    });
    return stream;
  }

  #requireLink(what: string): SandboxLink {
    if (this.#released || !this.#link) {
      const state = this.#localSup ? (this.#localSup.reconcile(this.name)?.status ?? 'removed') : 'stopped';
      throw new CorralError('E_ILLEGAL_STATE', `cannot ${what} sandbox "${this.name}": ${this.#link ? 'this handle was released' : `it is ${state}`}`, {
        details: { state },
      });
    }
    return this.#link;
  }

  async #recordInfo(): Promise<SandboxInfo> {
    if (this.#cluster) return catalogInfo(this.name, await this.#cluster.catalogEntry(this.name));
    return recordedInfo(this.name, this.#sup.reconcile(this.name));
  }

  async #release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await this.#link?.release();
  }

  /** `collect`: the output is gathered into an ExecResult as it comes, not streamed to a consumer. */
  async #start(what: string[] | { args: unknown; entrypoint: unknown }, options: ExecStreamOptions, collect = false): Promise<ExecStream> {
    const command: string[] | ImageCommandRequest = Array.isArray(what) ? what : imageCommandRequest(what.args, what.entrypoint);
    // An image command is resolved against the image's config in the sandbox's worker.
    const argv = Array.isArray(command) ? command : [];
    validateExec(Array.isArray(command) ? command : null, options);
    if (options.background !== undefined && typeof options.background !== 'boolean') throw new InvalidOptionError('background', 'true or false', options.background);
    if (options.background && options.timeoutMs !== undefined) {
      throw new InvalidOptionError('timeoutMs', 'absent for a background command (its life is the sandbox\'s: end it with kill())', options.timeoutMs);
    }
    const tty = ttyOption(options.tty);
    const user = userOption(options.user);
    if (options.stdin !== 'pipe') stdinOption(options.stdin, true);
    options.signal?.throwIfAborted();
    const ctl = this.#requireLink('exec in');
    // Random ids: several processes may drive one detached sandbox at once.
    const execId = randomInt(1, 2 ** 31 - 1);
    const stdin = options.stdin;
    const pipe = stdin !== undefined;
    const control = {
      write: async (data: string | Uint8Array) => ctl.api.writeStdin(execId, typeof data === 'string' ? encoder.encode(data) : data),
      end: async () => ctl.api.closeStdin(execId),
      kill: async (signo = 9) => ctl.api.signalExec(execId, signo),
      resize: async (cols: number, rows: number) => ctl.api.resizeExec(execId, cols, rows),
      // Collected output (exec(), run()) is consumed as it arrives: no credit to give back.
      ...(collect ? {} : { ack: async (bytes: number) => ctl.api.ackOutput(execId, bytes) }),
    };
    if (options.background) return this.#startBackground(ctl, execId, command, options);
    const stream = new ExecStream(execId, control);
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    let sub: Subscription | undefined;
    const onAbort = () => {
      void control.kill(9).catch(logFailure(`killing exec ${execId} of sandbox "${this.name}"`));
      stream.fail(new CorralError('E_ABORTED', `exec ${execId} aborted`, { cause: options.signal?.reason }));
    };
    const finish = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      sub?.unsubscribe();
    };
    // Subscribe before the exec starts: nothing it prints can be missed.
    sub = ctl.events$.pipe(filter((e) => isExecEvent(e) && e.execId === execId)).subscribe({
      next: (e) => {
        if (routeExecEvent(stream, e, () => timedOut)) finish();
      },
      // The link's events ended under a running exec (its cluster connection closed): its end
      // can no longer come, so the stream says why instead of waiting for ever.
      complete: () => {
        stream.fail(new CorralError('E_CLOSED', `the connection to sandbox "${this.name}" ended while exec ${execId} was running`));
        finish();
      },
    });
    const stoppedSub = ctl.events$.pipe(filter((e) => e.type === 'sandbox.stopped')).subscribe(() => {
      stream.fail(new CorralError('E_VM_CRASHED', `sandbox "${this.name}" stopped while exec ${execId} was running`));
      finish();
    });
    stream.ended.finally(() => stoppedSub.unsubscribe()).catch(() => {}); // the exec's own rejection reaches its caller through stream.exited

    // Keep the process alive while the exec runs.
    void ctl.busy(() => stream.ended).catch(() => {}); // only holds the event loop; stream.exited's failure reaches its caller
    // Stdin text or bytes (not a stream) go with the request when small: one call, not three.
    const stdinBytes = pipe && stdin !== 'pipe' && !isStdinSource(stdin) ? (typeof stdin === 'string' ? encoder.encode(stdin) : stdin) : undefined;
    const stdinData = stdinBytes && stdinBytes.byteLength <= STDIN_WITH_REQUEST_BYTES ? stdinBytes : undefined;
    let accepted: ExecAccepted | null | undefined;
    try {
      accepted = await ctl.api.exec(execId, {
        argv,
        ...(Array.isArray(command) ? {} : { imageCommand: command }),
        ...(options.env ? { env: options.env } : {}),
        ...(options.cwd ? { cwd: options.cwd } : {}),
        stdin: pipe,
        mergeStderr: options.mergeStderr ?? false,
        ...(tty ? { tty } : {}),
        ...(user !== undefined ? { user } : {}),
        ...(collect ? {} : { outputCredit: true }),
        ...(stdinData ? { stdinData } : {}),
      });
    } catch (err) {
      finish();
      stoppedSub.unsubscribe();
      stream.fail(err as Error);
      throw err;
    }
    if (options.timeoutMs !== undefined) {
      const timeoutMs = options.timeoutMs;
      timer = setTimeout(() => {
        timedOut = true;
        void control.kill(9).catch(logFailure(`killing exec ${execId} of sandbox "${this.name}"`));
        // The exit after the SIGKILL comes from the guest: one that never answers must not
        // hold the caller past its timeout for ever.
        timer = setTimeout(() => {
          stream.fail(new CorralError('E_TIMEOUT', `exec ${execId} did not end within ${KILL_GRACE_MS} ms of its SIGKILL (timeoutMs ${timeoutMs}): the guest did not answer`));
          finish();
        }, KILL_GRACE_MS);
      }, timeoutMs);
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    // Aborted while the start was on its way: the 'abort' event has fired already.
    if (options.signal?.aborted) onAbort();
    if (isStdinSource(stdin)) {
      void feedStdin(stream, stdin);
    } else if (stdinBytes && accepted?.stdinTaken !== true) {
      // A write that fails means the exec is gone: its own end (stream.exited) says why.
      await control.write(stdinBytes).catch(() => {});
      await control.end().catch(() => {});
    }
    return stream;
  }
}

/** The events of one exec, as they reach an {@link ExecStream}. */
function isExecOf(e: SandboxEvent, execId: number): boolean {
  return isExecEvent(e) && e.execId === execId;
}

/**
 * `made` with an abort that undoes it: a link that arrives after `signal` fired is let go of
 * (`undo`: by default the sandbox is killed and its link released), so a caller that gave
 * up leaves nothing running.
 */
async function undoneOnAbort<L extends SandboxLink | undefined>(made: Promise<L>, signal: AbortSignal | undefined, undo?: (link: NonNullable<L>) => Promise<unknown>): Promise<L> {
  const link = await made;
  if (signal?.aborted && link) {
    if (undo) await undo(link);
    else {
      await link.api.kill();
      await link.release();
    }
  }
  return link;
}
