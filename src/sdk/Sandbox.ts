/**
 * The public handle on one sandbox.
 *
 * @example
 * await using sb = await Sandbox.builder('worker').memory(256).create();
 * const out = await sb.exec('sh', ['-c', 'echo hi']);
 */

import { randomInt } from 'node:crypto';
import { EMPTY, filter, takeWhile, type Observable, type Subscription } from 'rxjs';
import { isExecEvent, type SandboxEvent, type SandboxStatus, type StopReason } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import { fork, forkNames } from '../snapshot/fork.ts';
import { CorralError } from '../errors.ts';
import type { SandboxLink } from '../link/SandboxLink.ts';
import type { ProbeRequest, ProbeResult } from '../actor/contract.ts';
import type { SandboxInfo } from '../supervisor/Supervisor.ts';
import { Supervisor, type CreateOptions } from '../supervisor/Supervisor.ts';
import { ExecResult, ExecStream, routeExecEvent, type ExecOptions, type ExecStreamItem } from './exec.ts';
import { ttyOption, userOption, validateExec } from './execOptions.ts';
import { SandboxFs } from './SandboxFs.ts';
import { feedStdin, isStdinSource, stdinOption, type StdinSource } from './execStdin.ts';
import { SandboxBuilder } from './SandboxBuilder.ts';
import { imageCommandRequest, type ImageCommandRequest } from '../image/imageCommand.ts';
import type { LogEntry, LogsOptions } from '../logs/ExecLog.ts';
import type { SinceCursor } from '../events/resumeStream.ts';
import { metricsStream } from '../metrics/metricsStream.ts';
import { MetricsSampler, type BlockStat, type SandboxMetrics } from '../metrics/MetricsSampler.ts';
import { logFailure } from '../runtime/log.ts';
import { bounded, validateCallOptions, type CallOptions } from '../runtime/callOptions.ts';

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
}

/** Options of the static lookups. */
export interface LookupOptions extends CallOptions {
  readonly supervisor?: Supervisor;
}

export class Sandbox {
  readonly #link: SandboxLink | undefined;
  readonly #sup: Supervisor;
  readonly #config: SandboxConfig;
  #released = false;
  #sampler: MetricsSampler | undefined;

  /**
   * This sandbox's events, in order, until (and including) `sandbox.stopped`. For a handle
   * on a stopped sandbox it completes at once.
   */
  readonly events$: Observable<SandboxEvent>;

  private constructor(sup: Supervisor, config: SandboxConfig, link: SandboxLink | undefined) {
    this.#sup = sup;
    this.#config = config;
    this.#link = link;
    this.#released = link === undefined;
    this.events$ = link ? link.events$.pipe(takeWhile((e) => e.type !== 'sandbox.stopped', true)) : EMPTY;
  }

  /** Starts building a sandbox. */
  static builder(name: string): SandboxBuilder<Sandbox> {
    return new SandboxBuilder(name, (config, opts) => (opts.detached ? Sandbox.createDetached(config, opts) : Sandbox.create(config, opts)));
  }

  /**
   * Boots a sandbox from a config (as `builder.build()` returns it, or parsed from JSON).
   * An abort or `timeoutMs` kills the VM being booted; the call rejects once it is gone (the
   * record says `boot-failed`).
   */
  static async create(config: SandboxConfig, options: CreateOptions & CallOptions & { supervisor?: Supervisor } = {}): Promise<Sandbox> {
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
    const sup = options.supervisor ?? getDefaultSupervisor();
    const link = await bounded(`lookup of sandbox "${name}"`, options, (signal) => undoneOnAbort(sup.open(name), signal, (l) => l.detach()), true);
    if (link) return new Sandbox(sup, link.config, link);
    const rec = sup.reconcile(name);
    if (!rec) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}"`);
    return new Sandbox(sup, rec.config, undefined);
  }

  /** Boots a stopped sandbox again from its persisted config and upper disk. */
  static async start(name: string, options: LookupOptions & { detached?: boolean } = {}): Promise<Sandbox> {
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

  /** Every known sandbox, with its status (records left by dead processes are repaired). */
  static async list(options: ListOptions = {}): Promise<SandboxSummary[]> {
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
    const { supervisor, signal, timeoutMs, ...rest } = options;
    return bounded(`logs of sandbox "${name}"`, { signal, timeoutMs }, async () => (supervisor ?? getDefaultSupervisor()).logs(name, rest));
  }

  /**
   * The recorded output, then new output as it arrives (from this or another process), until
   * the sandbox stops: `tail -f` for a sandbox.
   *
   * @example
   * Sandbox.followLogs('worker', { tail: 10 }).subscribe((e) => process.stdout.write(e.data));
   */
  static followLogs(name: string, options: LogsOptions & { supervisor?: Supervisor; intervalMs?: number } = {}): Observable<LogEntry> {
    const { supervisor, ...rest } = options;
    return (supervisor ?? getDefaultSupervisor()).followLogs(name, rest);
  }

  /** Removes a stopped sandbox: its record, upper disk and sockets. Refuses a running one. */
  static async remove(name: string, options: LookupOptions = {}): Promise<void> {
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
      if (err instanceof CorralError && (err.code === 'E_CLOSED' || err.code === 'E_WORKER_CRASHED')) return this.#recordInfo();
      throw err;
    });
  }

  /** Boots this (stopped) sandbox again; resolves with a handle on the running sandbox. */
  start(options: { detached?: boolean } & CallOptions = {}): Promise<Sandbox> {
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
    return new SandboxFs(this.name, (call) => {
      const link = this.#requireLink('use files of');
      return bounded(`file call ${call.op} in sandbox "${this.name}"`, options, () => link.busy(() => link.api.fs(call)));
    });
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
    const forks = await fork<Sandbox>(
      this.name,
      names,
      {
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
   * This sandbox's events with resume: everything buffered after `since` exactly once, then
   * live events, completing after `sandbox.stopped`. A `stream.gap` event first says so when
   * the buffer no longer reaches back to `since`. Works for detached sandboxes too.
   *
   * @example
   * let last = 0;
   * sb.events({ since: last }).subscribe((e) => (last = e.seq));
   */
  events(options: { since?: number } = {}): Observable<SandboxEvent> {
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
    return Sandbox.logs(this.name, { ...options, supervisor: this.#sup });
  }

  /** {@link Sandbox.followLogs} for this sandbox. */
  logs$(options: LogsOptions & { intervalMs?: number } = {}): Observable<LogEntry> {
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
    this.#sampler ??= this.#newSampler();
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

  #newSampler(): MetricsSampler {
    return new MetricsSampler({
      guestBytes: this.#config.memoryMib * 1024 * 1024,
      pid: async () => {
        const pid = (await this.info()).pid;
        if (!pid) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${this.name}" has no running VM`, { details: { state: 'stopped' } });
        return pid;
      },
      blockStats: async () => {
        const link = this.#requireLink('read metrics of');
        return (await link.busy(() => link.api.blockStats())) as BlockStat[];
      },
      networkBytes: async () => {
        const link = this.#requireLink('read metrics of');
        return link.busy(() => link.api.networkStats());
      },
    });
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

  #requireLink(what: string): SandboxLink {
    if (this.#released || !this.#link) {
      const state = this.#sup.reconcile(this.name)?.status ?? 'removed';
      throw new CorralError('E_ILLEGAL_STATE', `cannot ${what} sandbox "${this.name}": ${this.#link ? 'this handle was released' : `it is ${state}`}`, {
        details: { state },
      });
    }
    return this.#link;
  }

  async #recordInfo(): Promise<SandboxInfo> {
    const rec = this.#sup.reconcile(this.name);
    return {
      name: this.name,
      status: rec?.status ?? 'stopped',
      state: rec?.state ?? 'stopped',
      pid: null,
      accel: null,
      accelReason: null,
      kernel: null,
      bootMs: null,
      guestBootMs: null,
      agentVersion: null,
      inFlight: 0,
      stopReason: rec?.stopReason ?? null,
      exitCode: null,
      exitSignal: null,
      error: null,
    };
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
    sub = ctl.events$.pipe(filter((e) => isExecEvent(e) && e.execId === execId)).subscribe((e) => {
      if (routeExecEvent(stream, e, () => timedOut)) finish();
    });
    const stoppedSub = ctl.events$.pipe(filter((e) => e.type === 'sandbox.stopped')).subscribe(() => {
      stream.fail(new CorralError('E_VM_CRASHED', `sandbox "${this.name}" stopped while exec ${execId} was running`));
      finish();
    });
    stream.exited.finally(() => stoppedSub.unsubscribe()).catch(() => {}); // the exec's own rejection reaches its caller through stream.exited

    // Keep the process alive while the exec runs.
    void ctl.busy(() => stream.exited).catch(() => {}); // only holds the event loop; stream.exited's failure reaches its caller
    try {
      await ctl.api.exec(execId, {
        argv,
        ...(Array.isArray(command) ? {} : { imageCommand: command }),
        ...(options.env ? { env: options.env } : {}),
        ...(options.cwd ? { cwd: options.cwd } : {}),
        stdin: pipe,
        mergeStderr: options.mergeStderr ?? false,
        ...(tty ? { tty } : {}),
        ...(user !== undefined ? { user } : {}),
        ...(collect ? {} : { outputCredit: true }),
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
    } else if (pipe && stdin !== 'pipe') {
      const bytes = typeof stdin === 'string' ? encoder.encode(stdin) : stdin;
      // A write that fails means the exec is gone: its own end (stream.exited) says why.
      await control.write(bytes).catch(() => {});
      await control.end().catch(() => {});
    }
    return stream;
  }
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
