/**
 * One sandbox actor, as a worker thread hosts it (workers/sandbox.worker.ts): it owns its VM
 * process (spawned from the worker's thread, so the VM dies with it), runs the lifecycle
 * machine with real actors provided (boot, restore, snapshot, exec), stamps every event
 * (`name`, `seq`, `ts`) and serves {@link SandboxWorkerApi}. Events and Comlink answers share
 * its one control port so they arrive in the order they were posted: a verb's answer never
 * overtakes the events it caused (two ports are not ordered with each other). It never
 * imports the supervisor.
 */

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { MessagePort } from 'node:worker_threads';
import { createActor, fromPromise, waitFor, type Actor, type InspectionEvent } from 'xstate';
import { assertCan, sandboxMachine, stateName, statusOf, type SandboxInput, type SandboxSnapshot, type VmBooted, type VmEnded } from '../../machines/sandbox.machine.ts';
import type { ExecHandlers, ExecSession, WatchRecord, WatchSession } from '../agent/AgentClient.ts';
import type { Accel, FsWatchChange, ImagePullEventBody, SandboxEvent, SandboxEventBody, StopReason } from '../bus/events.ts';
import { LIMITS, validateName, type SandboxConfig } from '../config.ts';
import { validatePort } from '../guestenv/ports.ts';
import type { CallServer, EventEnvelope, EventSink, ExecAccepted, ExecInfo, ExecRequest, InspectionEnvelope, WireInspectionEvent, ProbeRequest, ProbeResult, SandboxInfo, SandboxWorkerApi, SandboxWorkerData, WatchRequest } from './contract.ts';
import { CorralError, InvalidOptionError, deserializeError, serializeError, type SerializedError } from '../errors.ts';
import { createLogger, type Logger } from '../runtime/log.ts';
import { copySparse, hasUpper, prepareRoot, sandboxDir, type PreparedRoot } from '../runtime/rootfs.ts';
import { readSnapshot, rootIdentity, snapshotBase, snapshotBytes, snapshotDevices, snapshotDir, type SnapshotMeta } from '../snapshot/snapshots.ts';
import { cloneOverlay, discardTemplate, ensureTemplate, templateKey, templateTampered, type Template } from '../snapshot/templates.ts';
import { refillSpares, sparesDir, takeSpare, type Spare } from '../snapshot/spares.ts';
import { hostTscKhz, resolveAccel } from '../vm/accel.ts';
import { Vm, type VmBootOptions } from '../vm/Vm.ts';
import { GuestEnv } from '../guestenv/GuestEnv.ts';
import type { DeviceLayout as GuestDeviceLayout } from '../guestenv/guestConfig.ts';
import { withScriptsPath } from '../guestenv/scripts.ts';
import { qemuArgs } from '../vm/qemuArgs.ts';
import { GuestFs, checkGuestPath } from '../agent/GuestFs.ts';
import { FsCalls, type FsCall, type FsCallResult } from '../agent/fsCalls.ts';
import { execEnvDefaults, execUser } from '../agent/execDefaults.ts';
import { imageArgv } from '../image/imageCommand.ts';
import { OutputBatcher } from './outputBatch.ts';
import { EventRecorder } from '../events/EventRecorder.ts';
import { Store } from '../store/Store.ts';

/** Exec output in flight to the supervisor above which the guest is no longer read. */
const OUTPUT_HIGH_WATER = 8 * 1024 * 1024;
/** ...and below which it is read again. */
const OUTPUT_LOW_WATER = 2 * 1024 * 1024;

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/**
 * How long after a restore the warm-up exec waits for the sandbox's own first exec (which
 * then translates the guest's exec paths itself, and the warm-up is not run): a warm-up
 * started at once ran beside a create's immediate first exec on the one vCPU and made
 * create → first exec slower (+46 ms median, 8 interleaved pairs at load ~7).
 */
const WARM_UP_DELAY_MS = 250;

export class SandboxActor implements SandboxWorkerApi {
  readonly #config: SandboxConfig;
  readonly #stateDir: string;
  readonly #control: MessagePort;
  /** A cluster node's stream, which this actor publishes its events into itself; none locally. */
  readonly #sink: EventSink | undefined;
  /** The copy a move left behind: its events no longer go into the stream. */
  #silenced = false;
  /** A cluster node's: the calls this actor's worker answers on NATS itself; none locally. */
  readonly #calls: CallServer | undefined;
  readonly #outputInFlight: Int32Array | undefined;
  /** Writes this actor's events into the state dir, from this thread (absent: the receiver does). */
  readonly #recorder: EventRecorder | undefined;
  #throttled = false;
  /** Exec output joined into fewer events (src/actor/outputBatch.ts); posted through #post. */
  readonly #output = new OutputBatcher((type, execId, data) => this.#post({ type, execId, data }));
  readonly #actor: Actor<typeof sandboxMachine>;
  readonly #pending = new Map<number, ExecRequest>();
  readonly #sessions = new Map<number, ExecSession>();
  #seq = 0;
  #vm: Vm | undefined;
  #root: PreparedRoot | undefined;
  /**
   * The template whose RAM file `vm` maps copy-on-write (restored from it, or from a
   * snapshot taken over it): a snapshot of that VM saves only the pages it changed.
   */
  #ramBase: { readonly vm: Vm; readonly tpl: Template } | undefined;
  #accelReason: string | null = null;
  #guestBootMs: number | null = null;
  /** The warm-up exec's start, until it runs or the sandbox's first exec makes it needless. */
  #warmUpTimer: NodeJS.Timeout | undefined;
  #agentVersion: string | null = null;
  #lastValue = '';
  #createdAt = performance.now();
  #imageEnv: Record<string, string> = {};
  /** Volumes, scripts, patches, network (src/guestenv): prepared once, applied after each boot. */
  #guest: Promise<GuestEnv> | undefined;
  readonly #log: Logger;
  /** From the data the sandbox was handed (a spare worker's workerData has none). */
  readonly #secrets: SandboxWorkerData['secrets'];
  #qmpDone: Promise<void> = Promise.resolve();
  readonly #snapshots = new Map<string, { resolve(m: SnapshotMeta): void; reject(e: Error): void }>();
  /** Spare VMs this actor keeps ready for creates of its shape (0: none). */
  readonly #spares: number;
  readonly #fs = new FsCalls(() => new GuestFs(this.#requireRunning('use files of').agent));
  /** What {@link execs} lists: each running exec, from its start to its end. */
  readonly #execInfo = new Map<number, ExecInfo>();
  /** Live file watches by the caller's id (their end removes them). */
  readonly #watches = new Map<number, WatchSession>();
  /** Ids of execs that ended lately (bounded), so a stdin end racing an exit is told apart from an unknown id. */
  readonly #endedExecs = new Set<number>();

  constructor(data: SandboxWorkerData, sink?: EventSink, calls?: CallServer) {
    this.#sink = sink;
    this.#calls = calls;
    this.#config = data.config;
    this.#stateDir = data.stateDir;
    this.#control = data.control;
    this.#outputInFlight = data.outputInFlight;
    const records = data.records;
    this.#recorder = records && new EventRecorder(threadStore(data.stateDir), data.config.name, records.limits, (seq) => Atomics.store(records.written, 0, BigInt(seq)));
    this.#secrets = data.secrets;
    this.#spares = data.spares ?? 0;
    this.#log = createLogger(data.config.name, data.config.logLevel ?? 'warn');
    const machine = sandboxMachine.provide({
      actors: {
        bootVm: fromPromise<VmBooted, SandboxInput>(({ signal }) => this.#boot(signal)),
        restoreVm: fromPromise<VmBooted, SandboxInput>(({ signal }) => this.#restoreVm(signal)),
        stopVm: fromPromise<VmEnded, { timeoutMs: number; reason: StopReason }>(({ input }) => this.#stopVm(input.timeoutMs, input.reason)),
        killVm: fromPromise<VmEnded, void>(() => this.#killVm()),
        endVm: fromPromise<VmEnded, void>(() => this.#endVm()),
        snapshotVm: fromPromise<void, { snapshot: string }>(({ input }) => this.#snapshotVm(input.snapshot)),
      },
      actions: {
        startExec: (_, params: { execId: number }) => this.#startExec(params.execId),
        restoreFailed: ({ event }) => this.#log.warn(`restore from template failed, booting cold: ${(event as { error?: Error }).error?.message}`),
        pauseVm: () => this.#qmp('stop'),
        resumeVm: () => this.#qmp('cont'),
        abortExecs: (_, params: { reason: string }) => this.#vm?.closeChannels(new CorralError('E_VM_CRASHED', params.reason)),
      },
    });
    this.#actor = createActor(machine, {
      ...(data.inspect ? { inspect: (e: InspectionEvent) => this.#postInspection(e) } : {}),
      input: {
        name: data.config.name,
        stopTimeoutMs: data.config.stopTimeoutMs,
        maxDurationMs: data.config.maxDurationMs,
        idleTimeoutMs: data.config.idleTimeoutMs,
        idleAction: data.config.idleAction,
        // A restarted sandbox has its own upper disk: the template's would not match it.
        useTemplate:
          data.config.fromSnapshot !== undefined || (data.config.template !== false && !hasUpper(data.stateDir, data.config.name) && !data.config.disk),
      },
    });
    this.#actor.subscribe({ next: (s) => this.#onSnapshot(s), error: () => {} });
  }

  // ── API ────────────────────────────────────────────────────────────────────

  async start(): Promise<SandboxInfo> {
    // A node's sandbox whose events could not reach the stream would run unseen; its calls
    // are answered from its first one on.
    await this.#sink?.ready;
    await this.#calls?.ready;
    this.#createdAt = performance.now();
    this.#emit({ type: 'sandbox.creating', image: this.#config.image, memoryMib: this.#config.memoryMib, cpus: this.#config.cpus });
    this.#actor.start();
    const s = await waitFor(this.#actor, (s) => statusOf(s) !== 'creating');
    if (s.status === 'done') {
      const cause = s.context.error ? deserializeError(s.context.error) : undefined;
      // Keep a specific code (E_IMAGE_NOT_FOUND, E_SETUP_MISSING…); anything else is a boot failure.
      const code = cause instanceof CorralError && cause.code !== 'E_TIMEOUT' ? cause.code : 'E_BOOT_FAILED';
      throw new CorralError(code, `sandbox "${this.#config.name}" failed to boot: ${cause?.message ?? s.context.stopReason}`, { cause });
    }
    if (this.#config.workdir !== '/') await this.#ensureWorkdir();
    return this.info();
  }

  async exec(execId: number, req: ExecRequest): Promise<ExecAccepted> {
    if (this.#pending.has(execId) || this.#sessions.has(execId)) throw new CorralError('E_EXEC_START', `exec id ${execId} is in use`);
    // Legal while paused by the idle limit too: the machine resumes the VM as it starts the exec.
    assertCan(this.#actor.getSnapshot(), { type: 'exec', execId });
    if (req.imageCommand) {
      const defaults = this.#root?.imageDefaults ?? { entrypoint: [], cmd: [] };
      req = { ...req, argv: imageArgv(defaults, req.imageCommand, this.#config.image) };
    }
    // It may come from a cluster client's JSON: bytes or nothing.
    if (req.stdinData === null) req = { ...req, stdinData: undefined };
    if (req.stdinData !== undefined && !(req.stdinData instanceof Uint8Array)) throw new InvalidOptionError('stdinData', 'bytes', req.stdinData);
    this.#pending.set(execId, req);
    this.#actor.send({ type: 'exec', execId });
    return { stdinTaken: req.stdinData !== undefined };
  }

  async silenceEvents(): Promise<void> {
    this.#silenced = true;
    await this.#sink?.flushed();
  }

  async holdCalls(): Promise<void> {
    await this.#calls?.hold();
  }

  openCalls(): void {
    this.#calls?.open();
  }

  async closeCalls(error?: SerializedError): Promise<void> {
    await this.#calls?.close(error);
  }

  writeStdin(execId: number, data: Uint8Array): Promise<void> {
    return this.#session(execId).write(data);
  }

  closeStdin(execId: number): void {
    // Ending the stdin of a command that has just exited (it read what it needed and ended
    // before the end got here) is no failure: the caller's end raced the exit.
    if (!this.#sessions.has(execId) && this.#endedExecs.has(execId)) return;
    this.#session(execId).end();
  }

  signalExec(execId: number, signo: number): void {
    if (!Number.isInteger(signo) || signo < 1 || signo > 64) throw new RangeError(`signal must be an integer from 1 to 64 (got ${signo})`);
    this.#session(execId).signal(signo);
  }

  resizeExec(execId: number, cols: number, rows: number): void {
    for (const [name, v] of [['cols', cols], ['rows', rows]] as const) {
      if (!Number.isInteger(v) || v < 1 || v > 65535) throw new RangeError(`${name} must be an integer from 1 to 65535 (got ${v})`);
    }
    this.#session(execId).resize(cols, rows);
  }

  ackOutput(execId: number, bytes: number): void {
    // The exec may have ended while the acknowledgement was on its way: nothing to give back.
    this.#sessions.get(execId)?.ackOutput(bytes);
  }

  fs(call: FsCall): Promise<FsCallResult> {
    return this.#fs.call(call);
  }

  async watchStart(watchId: number, req: WatchRequest): Promise<void> {
    if (!Number.isInteger(watchId) || watchId < 1 || watchId > 2 ** 31 - 1) throw new InvalidOptionError('watchId', 'an integer from 1 to 2^31-1', watchId);
    if (this.#watches.has(watchId)) throw new InvalidOptionError('watchId', 'an id no live watch of this sandbox has', watchId);
    if (typeof req?.recursive !== 'boolean') throw new InvalidOptionError('recursive', 'true or false', req?.recursive);
    // The agent's own paths are its real ones: the changes are told under the path asked for.
    const root = checkGuestPath(req.path).replace(/(.)\/+$/, '$1');
    const abs = (rel: string) => (rel === '' ? root : root === '/' ? `/${rel}` : `${root}/${rel}`);
    const change = (r: WatchRecord): FsWatchChange =>
      r.kind === 'rename'
        ? { type: 'rename', path: abs(r.to!), name: r.to!, from: abs(r.path), isDir: r.isDir }
        : // An overflow is about the watched directory itself.
          { type: r.kind, path: abs(r.path), name: r.path, isDir: r.kind === 'overflow' || r.isDir };
    const vm = this.#requireRunning('watch files of');
    const session = vm.agent.watch(root, { recursive: req.recursive }, {
      changes: (records) => this.#emit({ type: 'fs.watch', watchId, changes: records.map(change) }),
      ended: (reason, error) => {
        this.#watches.delete(watchId);
        // The connection's end is the sandbox's: its own events say why.
        if (reason === 'closed') this.#emit({ type: 'fs.watch.ended', watchId, reason: 'sandbox-stopped' });
        else this.#emit({ type: 'fs.watch.ended', watchId, reason, ...(error ? { error: serializeError(error) } : {}) });
      },
    });
    this.#watches.set(watchId, session);
    try {
      await session.started;
    } catch (err) {
      this.#watches.delete(watchId);
      if (err instanceof CorralError && err.code === 'E_FS') {
        throw new CorralError('E_FS', `watch ${root} in the guest failed: ${String(err.details?.errno ?? '')} (${err.message})`, { cause: err, details: { ...err.details, op: 'watch', path: root } });
      }
      throw err;
    }
    this.#log.debug(`watch ${watchId} on ${root}${req.recursive ? ' (recursive)' : ''}`);
  }

  async watchStop(watchId: number): Promise<void> {
    // Not waiting for the guest: a paused one would hold the caller; `fs.watch.ended` follows.
    this.#watches.get(watchId)?.stop();
  }

  async publish(hostPort: number, guestPort: number): Promise<void> {
    const p = validatePort(hostPort, guestPort, 'port');
    const vm = await this.#vmWithNic('publish a port of');
    // The VM's inbound filter lets the port's connections in first, so none is refused.
    const guest = await this.#guest;
    const already = guest?.isPublished(p.hostPort) ?? false;
    await guest?.setPublished(p.hostPort, true);
    const out = await vm.addHostForward(p.hostPort, p.guestPort);
    if (out) {
      // Not the forward of this port that is already there (a taken port is named, not closed).
      if (!already) await guest?.setPublished(p.hostPort, false);
      throw new CorralError('E_INVALID_OPTION', `invalid option port.hostPort: 127.0.0.1:${p.hostPort} cannot be published (${out}; in use?)`, { details: { option: 'port.hostPort' } });
    }
    this.#log.info(`published 127.0.0.1:${p.hostPort} → guest port ${p.guestPort}`);
  }

  async unpublish(hostPort: number): Promise<void> {
    const { hostPort: h } = validatePort(hostPort, 1, 'port');
    const vm = await this.#vmWithNic('unpublish a port of');
    const out = await vm.removeHostForward(h);
    if (out) throw new CorralError('E_INVALID_OPTION', `invalid option port.hostPort: ${h} is not published (${out})`, { details: { option: 'port.hostPort' } });
    await (await this.#guest)?.setPublished(h, false);
    this.#log.info(`unpublished 127.0.0.1:${h}`);
  }

  /** The running VM, if it has a NIC (ports are forwarded by its user-mode network: slirp4netns's, or qemu's own). */
  async #vmWithNic(what: string): Promise<Vm> {
    const vm = this.#requireRunning(what);
    if (!(await this.#guest)?.layout.nic) {
      throw new CorralError('E_ILLEGAL_STATE', `cannot ${what} sandbox "${this.#config.name}": it has no network device (give it one at create: .network(…) or .port(…))`, { details: { state: 'no-network' } });
    }
    return vm;
  }

  execs(): ExecInfo[] {
    return [...this.#execInfo.values()].sort((a, b) => a.startedAt - b.startedAt);
  }

  async pause(): Promise<void> {
    this.#command({ type: 'pause' });
    await this.#qmpDone;
  }

  async resume(): Promise<void> {
    this.#command({ type: 'resume' });
    await this.#qmpDone;
  }

  setMaxDuration(ms: number): void {
    if (!Number.isInteger(ms) || ms < LIMITS.policyMs.min || ms > LIMITS.policyMs.max) {
      throw new InvalidOptionError('maxDuration', `from ${LIMITS.policyMs.min / 1000} to ${LIMITS.policyMs.max / 1000} seconds`, ms / 1000);
    }
    assertCan(this.#actor.getSnapshot(), { type: 'maxDuration.set', ms });
    this.#actor.send({ type: 'maxDuration.set', ms });
  }

  async drain(): Promise<SandboxInfo> {
    this.#command({ type: 'drain' });
    return this.stopped();
  }

  async stop(timeoutMs?: number): Promise<SandboxInfo> {
    if (timeoutMs !== undefined && (!Number.isInteger(timeoutMs) || timeoutMs < 0)) {
      throw new InvalidOptionError('timeoutMs', 'a non-negative integer of milliseconds', timeoutMs);
    }
    const s = this.#actor.getSnapshot();
    if (s.status === 'done') return this.info();
    const state = stateName(s);
    if (state === 'stopping' || state === 'killing' || state === 'ending') return this.stopped();
    this.#command(timeoutMs === undefined ? { type: 'stop' } : { type: 'stop', timeoutMs });
    return this.stopped();
  }

  async kill(): Promise<SandboxInfo> {
    const s = this.#actor.getSnapshot();
    if (s.status === 'done' || stateName(s) === 'killing') return this.stopped();
    this.#command({ type: 'kill' });
    return this.stopped();
  }

  info(): SandboxInfo {
    const s = this.#actor.getSnapshot();
    const c = s.context;
    return {
      name: this.#config.name,
      status: statusOf(s),
      state: stateName(s),
      pid: c.vm?.pid ?? this.#vm?.pid ?? null,
      accel: c.vm?.accel ?? null,
      accelReason: this.#accelReason,
      jail: this.#vm?.jail ?? null,
      kernel: this.#root ? `${this.#root.guestKernel.name} ${this.#root.guestKernel.version}` : null,
      bootMs: c.vm?.bootMs ?? null,
      guestBootMs: this.#guestBootMs,
      agentVersion: this.#agentVersion,
      inFlight: c.inFlight,
      stopReason: c.stopReason ?? null,
      exitCode: c.ended?.exitCode ?? null,
      exitSignal: c.ended?.signal ?? null,
      error: c.error ?? null,
    };
  }

  async stopped(): Promise<SandboxInfo> {
    await waitFor(this.#actor, (s) => s.status === 'done', { timeout: Infinity });
    return this.info();
  }

  async ping(bytes: number): Promise<number> {
    this.#wake();
    const vm = this.#requireVm();
    return vm.agent.ping(new Uint8Array(Math.min(Math.max(bytes, 0), 1000)));
  }

  async probe(req: ProbeRequest): Promise<ProbeResult> {
    const vm = this.#requireRunning('probe');
    if (req.op === 'sink') {
      if (!Number.isSafeInteger(req.bytes) || req.bytes < 1) throw new InvalidOptionError('bytes', 'a positive integer', req.bytes);
      const r = await vm.agent.probeSink(req.bytes);
      return { op: 'sink', bytes: r.bytes, guestMs: r.guestNs / 1e6, hostMs: r.hostMs };
    }
    if (!Number.isInteger(req.count) || req.count < 1 || req.count > 1000) throw new InvalidOptionError('count', 'an integer from 1 to 1000', req.count);
    if (req.argv.length === 0) throw new InvalidOptionError('argv', 'a non-empty list of strings', req.argv);
    const env = Object.entries({ PATH: DEFAULT_PATH, ...this.#imageEnv, ...this.#config.env }).map(([k, v]) => `${k}=${v}`);
    const r = await vm.agent.probeSpawn(req.argv, env, req.count);
    return { op: 'spawn', ms: r.ns.map((ns) => ns / 1e6), status: r.status };
  }
  async snapshot(name: string): Promise<SnapshotMeta> {
    validateName(name, 'snapshot name');
    if (existsSync(snapshotDir(this.#stateDir, name))) throw new CorralError('E_SNAPSHOT_EXISTS', `a snapshot named "${name}" exists`);
    assertCan(this.#actor.getSnapshot(), { type: 'snapshot', snapshot: name });
    const done = new Promise<SnapshotMeta>((resolve, reject) => this.#snapshots.set(name, { resolve, reject }));
    this.#actor.send({ type: 'snapshot', snapshot: name });
    return done;
  }


  /**
   * Lets go of this actor once the pool no longer hosts it: its VM (if one is somehow still
   * there) is killed and its ports close, so the worker keeps nothing of it.
   */
  dispose(): void {
    clearTimeout(this.#warmUpTimer);
    this.#output.flush();
    this.#vm?.kill();
    this.#control.close();
  }

  async blockStats(): Promise<unknown[]> {
    return this.#requireVm().qmp.execute<unknown[]>('query-blockstats');
  }

  async networkStats(): Promise<{ rxBytes: number; txBytes: number } | null> {
    this.#requireVm();
    return (await this.#guest)?.networkBytes() ?? null;
  }

  // ── machine implementations ─────────────────────────────────────────────────

  async #boot(signal: AbortSignal): Promise<VmBooted> {
    const choice = resolveAccel(this.#config.accel);
    this.#accelReason = choice.reason;
    this.#root = await prepareRoot(this.#config, this.#stateDir, this.#imageOptions(signal));
    this.#imageEnv = this.#root.imageEnv;
    const t0 = this.#createdAt;
    const guest = await this.#guestEnv();
    const vm = await Vm.boot({
      ...this.#vmShape(this.#root, choice.accel),
      ...(await guest.vmOptions()),
      upper: this.#root.upper,
      hostname: this.#config.name,
      bootTimeoutMs: this.#config.bootTimeoutMs,
      signal,
      onSpawn: (pid) => this.#spawned(pid, choice),
    });
    await this.#applyGuest(vm, guest);
    await this.#runStartCmd(vm).catch(async (err: unknown) => {
      vm.kill();
      await vm.exited;
      throw err;
    });
    this.#log.info(`booted in ${(performance.now() - t0).toFixed(0)} ms (guest ${vm.hello.bootMs} ms, agent ${vm.hello.agentVersion})`);
    return this.#adopt(vm, t0);
  }

  /**
   * Starts the VM by restoring its shape's template: a VM booted once, saved right after its
   * agent came up. The first sandbox of a shape builds the template (a cold boot + save);
   * each restore maps the template's RAM copy-on-write and gets its own copy of the upper
   * disk, then the agent is handed the sandbox's identity (hostname, clock, fresh entropy).
   */
  async #restoreVm(signal: AbortSignal): Promise<VmBooted> {
    if (this.#config.fromSnapshot) return this.#restoreSnapshot(signal, this.#config.fromSnapshot);
    const choice = resolveAccel(this.#config.accel);
    this.#accelReason = choice.reason;
    const root = await prepareRoot(this.#config, this.#stateDir, { createUpper: false, ...this.#imageOptions(signal) });
    this.#root = root;
    this.#imageEnv = root.imageEnv;
    const t0 = this.#createdAt;
    const guest = await this.#guestEnv();
    const key = templateKey({
      files: [root.qemu, root.kernel, root.initramfs, ...root.lower.map((l) => l.path), root.upperTemplate],
      memoryMib: this.#config.memoryMib,
      cpus: this.#config.cpus,
      accel: choice.accel,
      // The whole command line but per-VM paths: a new device or kernel flag is a new shape.
      argv: [
        ...qemuArgs({ ...this.#vmShape(root, choice.accel), ...guest.templateVmOptions('empty'), agentSocket: '', qmpSocket: '', hostname: 'corral', upper: 'upper' }),
        // A start command runs in the template, with the sandbox's environment and network
        // policy (with a NIC): they shape it.
        ...(this.#config.startCmd
          ? [`startCmd=${this.#config.startCmd}`, `readyCmd=${this.#config.readyCmd ?? ''}`, `env=${JSON.stringify(this.#startEnv())}`, ...(guest.layout.nic ? [`network=${JSON.stringify(this.#config.network ?? null)}`] : [])]
          : []),
      ],
    });
    const build = async (p: { dir: string; memFile: string; stateFile: string; upper: string }) => {
      await copySparse(root.upperTemplate, p.upper);
      // A start command has the sandbox's network policy; without one the NIC leads nowhere.
      const network = this.#config.startCmd ? await guest.templateNetwork() : undefined;
      let vm: Vm;
      try {
        vm = await Vm.boot({
          ...this.#vmShape(root, choice.accel),
          ...guest.templateVmOptions(p.dir),
          ...network?.options,
          upper: p.upper,
          memoryFile: { path: p.memFile, share: true },
          hostname: 'corral',
          bootTimeoutMs: this.#config.bootTimeoutMs,
          signal,
        });
      } catch (err) {
        await network?.release();
        throw err;
      }
      try {
        if (network) await guest.applyNetwork(vm.agent);
        await this.#runStartCmd(vm);
        await vm.saveTo(p.stateFile, { ignoreShared: true });
      } finally {
        vm.kill();
        await vm.exited;
        await network?.release();
      }
      this.#emit({ type: 'template.built', key, buildMs: performance.now() - t0 });
      return { hello: vm.hello };
    };
    let tpl = await ensureTemplate(this.#stateDir, key, build);
    if (templateTampered(tpl)) {
      // A clone's qemu wrote the RAM file it may only map (a jailed qemu escape could): never
      // restore from it again.
      this.#log.warn(`template ${key}: its RAM file was written since it was built; discarding it and building it anew`);
      await discardTemplate(this.#stateDir, tpl);
      tpl = await ensureTemplate(this.#stateDir, key, build);
    }
    const tRestore = performance.now();
    const upper = join(dirname(root.upper), 'upper.qcow2');
    const devices = await guest.vmOptions();
    // A spare has no devices of a guest environment (9p shares, a NIC): only sandboxes
    // that need none can take one.
    const spareable = this.#spares > 0 && Object.keys(devices).length === 0;
    const spare = spareable ? takeSpare(key) : undefined;
    const vm = spare
      ? await this.#claimSpare(spare, upper, choice)
      : await (async () => {
          await cloneOverlay(tpl, upper);
          return this.#restoreClone(root, choice, signal, { ...devices, upper, memoryFile: { path: tpl.memFile, share: false }, restore: { stateFile: tpl.stateFile, hello: tpl.hello } });
        })();
    this.#ramBase = { vm, tpl };
    await this.#applyGuest(vm, guest);
    const restoreMs = performance.now() - tRestore;
    this.#emit({ type: 'sandbox.restored', template: key, restoreMs, spare: spare !== undefined });
    this.#log.info(`restored from template ${key} in ${restoreMs.toFixed(0)} ms${spare ? ' (a spare)' : ''}`);
    if (spareable) refillSpares(key, this.#spares, () => this.#makeSpare(root, choice, tpl), this.#log);
    const booted = this.#adopt(vm, t0);
    // A spare ran its first exec before it was frozen.
    if (!spare) this.#warmUp(vm);
    return booted;
  }

  /**
   * Runs `true` once in a freshly restored TCG VM, in the background, as a spare is warmed: under
   * TCG a new qemu translates the guest's fork/exec/exit paths on first use (~100–250 ms
   * here), and that translation is not in a template or snapshot. Without this, a sandbox's
   * first exec paid for it whenever it came, after any idle, which read as a slow wake
   * (issue #19). It starts {@link WARM_UP_DELAY_MS} after the restore unless the sandbox's
   * own first exec came first. It is no exec of the sandbox: no exec events, no activity
   * for the idle limit, nothing a drain waits for; a stop ends it, and a failure (an image
   * without `true`) is only logged. A snapshot taken meanwhile keeps it as an orphan
   * session, as it keeps a running exec.
   */
  #warmUp(vm: Vm): void {
    // Under KVM the guest's code runs as it is: there is nothing to translate.
    if (vm.accel !== 'tcg') return;
    clearTimeout(this.#warmUpTimer);
    // Never holds the worker: a sandbox that ends first simply has none.
    this.#warmUpTimer = setTimeout(() => {
      this.#warmUpTimer = undefined;
      if (this.#vm === vm && !vm.isExited && stateName(this.#actor.getSnapshot()) === 'running') this.#runWarmUp(vm);
    }, WARM_UP_DELAY_MS).unref();
    void vm.exited.then(() => {
      if (this.#vm === vm) clearTimeout(this.#warmUpTimer);
    });
  }

  /** The user, environment and directory an exec runs with: the request's, else the config's and the image's. */
  #execBase(req: { readonly user?: string | undefined; readonly env?: Record<string, string> | undefined; readonly tty?: unknown; readonly cwd?: string | undefined }): { user?: string; env: string[]; cwd: string } {
    const user = execUser(req.user, this.#root?.imageDefaults.user);
    const env = withScriptsPath(execEnvDefaults({ PATH: DEFAULT_PATH, ...this.#imageEnv, ...this.#config.env, ...req.env }, { user, tty: req.tty !== undefined }), this.#config.scripts);
    return {
      ...(user !== undefined ? { user } : {}),
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      // The image's WorkingDir applies when the config keeps the default "/".
      cwd: req.cwd ?? (this.#config.workdir !== '/' ? this.#config.workdir : (this.#root?.imageDefaults.workdir ?? '/')),
    };
  }

  #runWarmUp(vm: Vm): void {
    const t0 = performance.now();
    // As the sandbox's own `exec('true')` would run (its user, environment, directory), so
    // that each path of the agent and the guest kernel such a first exec takes is translated.
    vm.agent.run({ ...this.#execBase({}), argv: ['true'] }).then(
      (code) => {
        if (code === 0) this.#emit({ type: 'sandbox.warmed', ms: performance.now() - t0 });
        else this.#log.debug(`warm-up exec of true ended with ${code ?? 'a signal'}`);
      },
      (err: Error) => this.#log.debug(`warm-up exec of true failed: ${err.message}`),
    );
  }

  /** The environment the start command runs with: the image's, then the sandbox's. */
  #startEnv(): Record<string, string> {
    return { PATH: DEFAULT_PATH, ...this.#imageEnv, ...this.#config.env };
  }

  /**
   * Starts the config's start command in the background (its output to
   * /tmp/.corral-start.log in the guest) and polls its ready command until it succeeds,
   * within bootTimeoutMs. Nothing to do without one.
   */
  async #runStartCmd(vm: Vm): Promise<void> {
    const { startCmd, readyCmd } = this.#config;
    if (!startCmd) return;
    const env = Object.entries(this.#startEnv()).map(([k, v]) => `${k}=${v}`);
    const started = await vm.agent.run({ argv: ['sh', '-c', `(${startCmd}) </dev/null >/tmp/.corral-start.log 2>&1 &`], env, cwd: '/' });
    if (started !== 0) throw new CorralError('E_BOOT_FAILED', `the start command could not be started (sh exited ${started})`);
    if (!readyCmd) return;
    const deadline = performance.now() + this.#config.bootTimeoutMs;
    let last: number | null = null;
    // The ready command is the condition (E2B's readyCmd): polled, as nothing else says when a server is up.
    while (performance.now() < deadline) {
      last = await vm.agent.run({ argv: ['sh', '-c', readyCmd], env, cwd: '/' });
      if (last === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    const log = await new Promise<string>((resolve) => {
      let out = '';
      vm.agent.exec({ argv: ['tail', '-c', '2000', '/tmp/.corral-start.log'], env, cwd: '/' }, { started: () => {}, stdout: (d) => (out += Buffer.from(d).toString()), stderr: () => {}, exited: () => resolve(out), failed: () => resolve(out) });
    });
    throw new CorralError('E_BOOT_FAILED', `the ready command did not succeed within ${this.#config.bootTimeoutMs} ms (last exit ${last}); the start command's output ends with: ${log.trim().slice(-500) || '(nothing)'}`);
  }

  /** The sandbox's guest environment (src/guestenv), prepared on first use; `layout`: a snapshot's devices. */
  #guestEnv(layout?: GuestDeviceLayout): Promise<GuestEnv> {
    this.#guest ??= GuestEnv.prepare(this.#config, this.#stateDir, sandboxDir(this.#stateDir, this.#config.name), layout);
    return this.#guest;
  }

  /** Mounts, scripts, patches, NIC: before any user code. A VM that cannot get them is ended. */
  async #applyGuest(vm: Vm, guest: GuestEnv, restoredFrom?: SandboxConfig): Promise<void> {
    // As soon as qemu is gone, so are its network enforcement and volume claims.
    vm.exited.then(() => guest.release()).catch((err) => this.#log.warn(`releasing the network enforcement and volumes failed: ${(err as Error).message}`));
    try {
      await guest.apply(vm.agent, vm.pid, restoredFrom ? { restoredFrom } : {});
    } catch (err) {
      vm.kill();
      await vm.exited;
      throw err;
    }
  }

  /** Image pull options: progress events go out on this sandbox's stream. */
  #imageOptions(signal: AbortSignal) {
    return { onEvent: (e: ImagePullEventBody) => this.#emit(e), secrets: this.#secrets, signal };
  }

  /**
   * Starts a qemu that takes a saved VM's state instead of booting, then hands the agent this
   * sandbox's identity (hostname, clock, fresh entropy): the restored guest still believes
   * it is the VM that was saved.
   */
  async #restoreClone(
    root: PreparedRoot,
    choice: { accel: Accel; reason: string },
    signal: AbortSignal,
    from: Partial<VmBootOptions> & Pick<VmBootOptions, 'restore'>,
  ): Promise<Vm> {
    const vm = await Vm.boot({
      ...this.#vmShape(root, choice.accel),
      ...from,
      incoming: true,
      hostname: 'corral',
      bootTimeoutMs: this.#config.bootTimeoutMs,
      signal,
      onSpawn: (pid) => this.#spawned(pid, choice),
    });
    try {
      await vm.agent.configure({ hostname: this.#config.name, rngSeed: randomBytes(64) });
    } catch (err) {
      vm.kill();
      throw err;
    }
    return vm;
  }

  /**
   * A spare of this sandbox's shape (src/snapshot/spares.ts): the template restored into an
   * overlay of the spares directory, its first exec run, then frozen.
   */
  async #makeSpare(root: PreparedRoot, choice: { accel: Accel; reason: string }, tpl: Template): Promise<Spare> {
    const dir = sparesDir(this.#stateDir);
    await mkdir(dir, { recursive: true });
    const t0 = performance.now();
    const upper = join(dir, `${tpl.key}-${randomBytes(4).toString('hex')}.qcow2`);
    await cloneOverlay(tpl, upper);
    let vm: Vm | undefined;
    try {
      vm = await Vm.boot({
        ...this.#vmShape(root, choice.accel),
        upper,
        memoryFile: { path: tpl.memFile, share: false },
        restore: { stateFile: tpl.stateFile, hello: tpl.hello },
        incoming: true,
        hostname: 'corral',
        bootTimeoutMs: this.#config.bootTimeoutMs,
      });
      const booted = vm;
      const code = await booted.agent.run({ argv: ['true'], env: [`PATH=${DEFAULT_PATH}`], cwd: '/' });
      if (code !== 0) throw new Error(`warm-up exec exited ${code}`);
      await booted.qmp.execute('stop');
      this.#emit({ type: 'template.spare', key: tpl.key, makeMs: performance.now() - t0 });
      // A spare that dies before a sandbox takes it leaves no overlay (once taken, the file
      // was renamed: this removes nothing).
      void booted.exited.then(() => rm(upper, { force: true })).catch((err: Error) => this.#log.warn(`removing a spare's overlay failed: ${err.message}`));
      return { vm: booted, upper };
    } catch (err) {
      vm?.kill();
      await vm?.exited;
      await rm(upper, { force: true });
      throw err;
    }
  }

  /** Makes a spare this sandbox's VM: its disk, its identity, its CPUs running again. */
  async #claimSpare(spare: Spare, upper: string, choice: { accel: Accel; reason: string }): Promise<Vm> {
    const vm = spare.vm;
    try {
      await mkdir(dirname(upper), { recursive: true });
      await rename(spare.upper, upper);
      this.#spawned(vm.pid, choice);
      await vm.qmp.execute('cont');
      await vm.agent.configure({ hostname: this.#config.name, rngSeed: randomBytes(64) });
      return vm;
    } catch (err) {
      vm.kill();
      throw err;
    }
  }

  /** The parts of the VM command line that a template and its clones must share. */
  #vmShape(root: PreparedRoot, accel: Accel) {
    return {
      qemu: root.qemu,
      kernel: root.kernel,
      initramfs: root.initramfs,
      acpi: root.guestKernel.acpi,
      lower: root.lower,
      disk: root.disk,
      memoryMib: this.#config.memoryMib,
      cpus: this.#config.cpus,
      accel,
      tscKhz: hostTscKhz(),
    };
  }

  #spawned(pid: number, choice: { accel: Accel; reason: string }): void {
    this.#log.debug(`qemu spawned: pid ${pid}, accel ${choice.accel} (${choice.reason})`);
    this.#emit({ type: 'sandbox.vm.spawned', pid, accel: choice.accel, accelReason: choice.reason });
  }

  /** Takes ownership of a running VM: from here on its death or misbehaviour reaches the machine. */
  #adopt(vm: Vm, t0: number): VmBooted {
    this.#vm = vm;
    // Never silently: a wall the host could not put up is said at every start.
    for (const m of vm.jail.missing) this.#log.warn(`VM jail incomplete: ${m}`);
    this.#guestBootMs = vm.hello.bootMs;
    this.#agentVersion = vm.hello.agentVersion;
    // The console says how a guest ended itself before qemu exits (or, for a power-off or
    // halt, instead of exiting): this reaches the machine first.
    vm.guestEnded.then((how) => {
      const v = stateName(this.#actor.getSnapshot());
      // A stop ends with the agent's own reset: that is no news.
      if (v === 'stopped' || v === 'stopping' || v === 'killing') return;
      this.#log.info(`guest ended itself: ${how}`);
      this.#actor.send({ type: 'vm.guestEnded', how });
    });
    vm.exited.then((x) => {
      const v = stateName(this.#actor.getSnapshot());
      if (x.oomKilled) this.#log.warn(`qemu was killed by its cgroup's OOM killer: it grew past its memory limit (${vm.jail.limits?.memoryMaxBytes} bytes)`);
      if (v !== 'stopping' && v !== 'killing' && v !== 'ending') this.#actor.send({ type: 'vm.exited', exitCode: x.code, signal: x.signal, ...(x.oomKilled ? { oomKilled: true } : {}) });
    });
    vm.agent.failed.then(async (err) => {
      // A closed connection usually means qemu is exiting (guest reboot, crash): give the
      // exit a moment to be seen, so the stop reason says what really happened.
      if (err instanceof CorralError && err.code === 'E_VM_CRASHED') await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 2000))]);
      if (vm.isExited || this.#actor.getSnapshot().status === 'done') return;
      const v = stateName(this.#actor.getSnapshot());
      if (v !== 'stopping' && v !== 'killing' && v !== 'ending') this.#actor.send({ type: 'vm.failed', error: serializeError(err) });
    });
    return { pid: vm.pid, accel: vm.accel, bootMs: performance.now() - t0 };
  }

  /**
   * Freezes the VM, saves its whole state (RAM included) and a copy of its upper disk taken
   * while frozen, then lets it run on. The caller of snapshot() gets the result.
   */
  async #snapshotVm(name: string): Promise<void> {
    const waiter = this.#snapshots.get(name);
    this.#snapshots.delete(name);
    const vm = this.#requireVm();
    const t0 = performance.now();
    const final = snapshotDir(this.#stateDir, name);
    const tmp = `${final}.tmp-${process.pid}-${Date.now()}`;
    try {
      await mkdir(tmp, { recursive: true, mode: 0o700 });
      const upperFile = this.#upperPath().endsWith('.qcow2') ? 'upper.qcow2' : 'upper.ext4';
      const guest = await this.#guest;
      // qemu will not save a VM with a 9p volume mounted: unmounted for the save, mounted after.
      const remount = await guest?.unmountShares(vm.agent);
      let ram: SnapshotMeta['ram'];
      try {
        // Frozen first (qemu drains and flushes its disks at the stop): the disk is copied
        // while the state saves, both of the same instant.
        await vm.pause();
        // Both settle before a failure removes the directory (else a copy still running writes into it anew).
        const [saved, copied] = await Promise.allSettled([this.#saveState(vm, join(tmp, 'state')), copySparse(this.#upperPath(), join(tmp, upperFile))]);
        if (saved.status === 'rejected') throw saved.reason;
        if (copied.status === 'rejected') throw copied.reason;
        ram = saved.value;
      } finally {
        await vm.qmp.execute('cont').catch((err) => this.#log.error(`resuming the VM after the snapshot (QMP cont) failed: ${(err as Error).message}`));
        await remount?.();
      }
      const meta: SnapshotMeta = {
        name,
        source: this.#config.name,
        config: this.#config,
        hello: vm.hello,
        sessions: vm.agent.sessionIds,
        upperFile,
        ...(ram ? { ram } : {}),
        devices: guest?.layout ?? { shares: 0, nic: false },
        ...(this.#root ? { root: rootIdentity(this.#root) } : {}),
        ...(this.#root ? { kernel: this.#root.guestKernel.name } : {}),
        createdAt: Date.now(),
        bytes: snapshotBytes(tmp),
      };
      await writeFile(join(tmp, 'meta.json'), JSON.stringify(meta));
      await rename(tmp, final);
      this.#emit({ type: 'sandbox.snapshotted', snapshot: name, ms: performance.now() - t0, bytes: meta.bytes });
      waiter?.resolve(meta);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      // A guest that stopped answering keeps its E_TIMEOUT: the caller can tell it from a refusal.
      const code = err instanceof CorralError && err.code === 'E_TIMEOUT' ? 'E_TIMEOUT' : 'E_SNAPSHOT';
      const e = new CorralError(code, `snapshot "${name}" of sandbox "${this.#config.name}" failed: ${(err as Error).message}`, { cause: err });
      waiter?.reject(e);
      throw e;
    }
  }

  /**
   * Saves the frozen VM's state to `file`: on a template's RAM, the pages it changed and its
   * devices (returns that template); else, or when that fails, everything (returns undefined).
   */
  async #saveState(vm: Vm, file: string): Promise<SnapshotMeta['ram']> {
    const base = this.#ramBase?.vm === vm ? this.#ramBase.tpl : undefined;
    if (base && existsSync(base.memFile) && !templateTampered(base)) {
      try {
        const { pages } = await vm.saveDelta(file, base);
        this.#log.debug(`saved ${pages} changed pages over template ${base.key}`);
        return { template: base.key, ...(base.memCtimeNs ? { memCtimeNs: base.memCtimeNs } : {}) };
      } catch (err) {
        // /proc of the VM unreadable (no right to trace it), say: the whole state still saves.
        this.#log.warn(`saving only the changed pages over template ${base.key} failed, saving the whole RAM: ${(err as Error).message}`);
        await rm(file, { force: true });
      }
    }
    await vm.saveTo(file, { ignoreShared: false });
    return undefined;
  }

  /** The upper disk this sandbox's VM runs with. */
  #upperPath(): string {
    const dir = sandboxDir(this.#stateDir, this.#config.name);
    return existsSync(join(dir, 'upper.qcow2')) ? join(dir, 'upper.qcow2') : join(dir, 'upper.ext4');
  }

  /**
   * Starts from a snapshot: its upper disk copied into this sandbox, its RAM and devices
   * restored from the stream; then the agent is handed this sandbox's identity. Processes
   * that ran in the snapshot run on; output of their exec sessions is dropped (their host
   * side is gone).
   */
  async #restoreSnapshot(signal: AbortSignal, snapshot: string): Promise<VmBooted> {
    const t0 = this.#createdAt;
    try {
      const meta = readSnapshot(this.#stateDir, snapshot);
      const choice = resolveAccel(this.#config.accel);
      this.#accelReason = choice.reason;
      const root = await prepareRoot(this.#config, this.#stateDir, { createUpper: false, kernel: meta.kernel ?? 'custom', ...this.#imageOptions(signal) });
      this.#root = root;
      this.#imageEnv = root.imageEnv;
      const upper = join(sandboxDir(this.#stateDir, this.#config.name), meta.upperFile);
      await copySparse(join(snapshotDir(this.#stateDir, snapshot), meta.upperFile), upper);
      // The snapshot's devices, with this sandbox's volumes, policy (enforced before qemu starts) and ports.
      const guest = await this.#guestEnv(snapshotDevices(meta));
      const base = meta.ram ? snapshotBase(this.#stateDir, meta) : undefined;
      const tRestore = performance.now();
      const vm = await this.#restoreClone(root, choice, signal, {
        ...(await guest.vmOptions()),
        upper,
        ...(base ? { memoryFile: { path: base.memFile, share: false } } : {}),
        restore: { stateFile: join(snapshotDir(this.#stateDir, snapshot), 'state'), hello: meta.hello, ignoreShared: false, orphanSessions: meta.sessions },
      });
      if (base) this.#ramBase = { vm, tpl: base };
      await this.#applyGuest(vm, guest, meta.config);
      // Watches of the sandbox the snapshot was taken from run on in its guest, for nobody.
      vm.agent.endOrphanWatches();
      const restoreMs = performance.now() - tRestore;
      this.#emit({ type: 'sandbox.restored', template: `snapshot:${snapshot}`, restoreMs, spare: false });
      const booted = this.#adopt(vm, t0);
      this.#warmUp(vm);
      return booted;
    } catch (err) {
      if (err instanceof CorralError && (err.code === 'E_SNAPSHOT_NOT_FOUND' || err.code === 'E_INVALID_OPTION')) throw err;
      throw new CorralError('E_SNAPSHOT', `cannot start "${this.#config.name}" from snapshot "${snapshot}": ${(err as Error).message}`, { cause: err });
    }
  }

  async #stopVm(timeoutMs: number, _reason: StopReason): Promise<VmEnded> {
    const vm = this.#vm;
    if (!vm) return { exitCode: null, signal: null };
    const ended = vm.exited.then(() => vm.closeChannels(new CorralError('E_VM_CRASHED', `sandbox "${this.#config.name}" stopped`)));
    const x = await vm.shutdown(timeoutMs);
    await ended;
    return { exitCode: x.code, signal: x.signal };
  }

  async #killVm(): Promise<VmEnded> {
    const vm = this.#vm;
    if (!vm) return { exitCode: null, signal: null };
    // Say why running execs end before the connection drops under them.
    vm.closeChannels(new CorralError('E_VM_CRASHED', `sandbox "${this.#config.name}" was killed`));
    vm.kill();
    const x = await vm.exited;
    return { exitCode: x.code, signal: x.signal };
  }

  async #endVm(): Promise<VmEnded> {
    const vm = this.#vm;
    if (!vm) return { exitCode: null, signal: null };
    const how = vm.guestEnd ?? 'ended';
    // Running execs learn why before QMP (still needed for the quit) goes too.
    const why = new CorralError('E_VM_CRASHED', `sandbox "${this.#config.name}" stopped: its guest ${how === 'panic' ? 'panicked' : `did ${how}`}`);
    vm.agent.close(why);
    const x = await vm.end();
    vm.closeChannels(why);
    return { exitCode: x.code, signal: x.signal };
  }

  #startExec(execId: number): void {
    // This exec translates what the warm-up would have.
    clearTimeout(this.#warmUpTimer);
    this.#warmUpTimer = undefined;
    const req = this.#pending.get(execId);
    this.#pending.delete(execId);
    const vm = this.#vm;
    if (!req || !vm) return;
    const t0 = performance.now();
    const info: ExecInfo = { id: execId, argv: req.argv, pid: null, startedAt: Date.now(), background: req.background ?? false, stdin: (req.stdin ?? false) || req.stdinData !== undefined, tty: req.tty !== undefined };
    this.#execInfo.set(execId, info);
    const done = () => {
      this.#sessions.delete(execId);
      this.#execInfo.delete(execId);
      this.#endedExecs.add(execId);
      if (this.#endedExecs.size > 1024) this.#endedExecs.delete(this.#endedExecs.values().next().value!);
      this.#actor.send({ type: 'exec.done', execId });
    };
    const handlers: ExecHandlers = {
      started: (pid) => {
        this.#execInfo.set(execId, { ...info, pid });
        this.#emit({ type: 'exec.started', execId, argv: req.argv, pid });
      },
      stdout: (data) => this.#output.add('exec.stdout', execId, data),
      stderr: (data) => this.#output.add('exec.stderr', execId, data),
      exited: (code, signal, info) => {
        this.#emit({ type: 'exec.exited', execId, code, signal, durationMs: performance.now() - t0, ...(info?.oomKilled ? { oomKilled: true } : {}) });
        done();
      },
      failed: (err) => {
        this.#emit({ type: 'exec.failed', execId, error: serializeError(err) });
        done();
      },
    };
    try {
      const session = vm.agent.exec(
        {
          ...(req.tty ? { tty: req.tty } : {}),
          ...this.#execBase(req),
          argv: req.argv,
          stdin: (req.stdin ?? false) || req.stdinData !== undefined,
          mergeStderr: req.mergeStderr ?? false,
          outputCredit: req.outputCredit ?? false,
        },
        handlers,
      );
      this.#sessions.set(execId, session);
      const data = req.stdinData;
      // Given with the request: written, then closed. A write that fails means the command is
      // gone, and its own end says why (as when the caller writes it).
      if (data) void session.write(data).then(() => session.end()).catch(() => {});
    } catch (err) {
      handlers.failed(err as Error);
    }
  }

  #qmp(command: 'stop' | 'cont'): void {
    const done = this.#vm?.qmp.execute(command).then(
      () => undefined,
      (err: Error) => {
        if (this.#actor.getSnapshot().status !== 'done') this.#actor.send({ type: 'vm.failed', error: serializeError(err) });
      },
    );
    // pause()/resume() resolve only once qemu has acted on the command.
    this.#qmpDone = done ?? Promise.resolve();
  }

  /** Creates the workdir in the writable layer (images rarely ship it). */
  async #ensureWorkdir(): Promise<void> {
    const code = await this.#requireVm().agent.run({ argv: ['mkdir', '-p', this.#config.workdir], env: [`PATH=${DEFAULT_PATH}`], cwd: '/' });
    if (code !== 0) throw new CorralError('E_BOOT_FAILED', `could not create workdir ${this.#config.workdir} (mkdir exit ${code})`);
  }

  // ── events ─────────────────────────────────────────────────────────────────

  #onSnapshot(s: SandboxSnapshot): void {
    const value = stateName(s);
    const prev = this.#lastValue;
    if (value === prev) return;
    this.#lastValue = value;
    this.#emit({ type: 'sandbox.state', state: value, status: statusOf(s), snapshot: { value: s.value, inFlight: s.context.inFlight, stopReason: s.context.stopReason ?? null } });
    this.#log.debug(`state ${prev || '(start)'} → ${value}`);
    const c = s.context;
    switch (value) {
      case 'running':
        if ((prev === 'booting' || prev === 'restoring') && c.vm) {
          this.#emit({
            type: 'sandbox.started',
            pid: c.vm.pid,
            accel: c.vm.accel,
            bootMs: c.vm.bootMs,
            guestBootMs: this.#guestBootMs ?? 0,
            agentVersion: this.#agentVersion ?? '',
            kernel: this.#root ? `${this.#root.guestKernel.name} ${this.#root.guestKernel.version}` : '',
          });
        } else if (prev === 'paused') this.#emit({ type: 'sandbox.resumed', reason: c.resumedBy === 'call' ? 'call' : 'requested' });
        break;
      case 'paused':
        this.#emit({ type: 'sandbox.paused', reason: c.pausedBy === 'idle' ? 'idle' : 'requested' });
        break;
      case 'draining':
        this.#emit({ type: 'sandbox.draining', inFlight: c.inFlight });
        break;
      case 'stopping':
      case 'killing':
      case 'ending':
        this.#emit({ type: 'sandbox.stopping', reason: c.stopReason ?? (value === 'killing' ? 'killed' : 'requested') });
        break;
      case 'stopped': {
        if (c.error) {
          this.#log.warn(`failed: ${c.error.message}`);
          this.#emit({ type: 'sandbox.failed', error: c.error });
        }
        this.#log.info(`stopped (${c.stopReason ?? 'requested'})`);
        const ended = c.ended;
        this.#emit({
          type: 'sandbox.stopped',
          reason: c.stopReason ?? 'requested',
          exitCode: ended?.exitCode ?? null,
          signal: ended?.signal ?? null,
          ...(c.error ? { error: c.error } : {}),
        });
        // Whatever path led here, no VM process outlives the stopped state.
        this.#vm?.kill();
        // Then the host-side network enforcement and volume claims go with it.
        void Promise.resolve(this.#vm?.exited).then(() => this.#guest?.then((g) => g.release())).catch((err) => this.#log.warn(`releasing the network enforcement and volumes failed: ${(err as Error).message}`));
        break;
      }
    }
  }

  #emit(body: SandboxEventBody): void {
    // Output held for batching goes first: the events keep the order things happened in.
    this.#output.flush();
    this.#post(body);
  }

  /** One inspection event to the supervisor's `inspect` (actor refs as ids, snapshots as JSON). */
  #postInspection(e: InspectionEvent): void {
    const root = e.actorRef.sessionId === e.rootId;
    const json = (v: unknown) => (v === undefined ? undefined : (JSON.parse(JSON.stringify(v, jsonSafe)) as unknown));
    const inspection: WireInspectionEvent = {
      type: e.type,
      rootId: e.rootId,
      sessionId: e.actorRef.sessionId,
      actorId: (e.actorRef as { id?: string }).id ?? e.actorRef.sessionId,
      isMachine: root,
      ...((e.actorRef as { _parent?: { sessionId: string } })._parent ? { parentId: (e.actorRef as unknown as { _parent: { sessionId: string } })._parent.sessionId } : {}),
      ...(e.type === '@xstate.event' && e.sourceRef ? { sourceId: e.sourceRef.sessionId } : {}),
      ...('event' in e ? { event: json(e.event) } : {}),
      ...('snapshot' in e ? { snapshot: json(e.snapshot) } : {}),
      ...(e.type === '@xstate.action' ? { action: json(e.action) } : {}),
    };
    this.#control.postMessage({ inspection } satisfies InspectionEnvelope);
  }

  #post(body: SandboxEventBody): void {
    const event = { ...body, name: this.#config.name, seq: ++this.#seq, ts: Date.now() } as SandboxEvent;
    const transfer = 'data' in event && event.data instanceof Uint8Array && event.data.byteOffset === 0 && event.data.byteLength === event.data.buffer.byteLength ? [event.data.buffer as ArrayBuffer] : [];
    const bytes = event.type === 'exec.stdout' || event.type === 'exec.stderr' ? event.data.byteLength : 0;
    // Into the stream first, written at once, before the supervisor's thread is woken.
    if (this.#sink && !this.#silenced) this.#sink.publish(event);
    // Into the store from here too, so the supervisor's thread writes nothing: output before
    // it is posted (its bytes are copied into the write before they are transferred away),
    // any other event after (its write does not delay it: an exec's exit, say).
    const recorder = this.#recorder;
    const output = event.type === 'exec.stdout' || event.type === 'exec.stderr';
    const log = output ? recorder?.record(event) : undefined;
    const envelope: EventEnvelope = recorder ? { event, ...(log !== undefined ? { log } : {}), replayFrom: recorder.replayFrom } : { event };
    this.#control.postMessage(envelope, transfer);
    if (!output) recorder?.record(event);
    if (bytes > 0) this.#throttle(bytes);
  }

  /**
   * Flow control of guest output: a guest can write far faster than the supervisor's thread
   * handles events and LMDB commits them, and every chunk posted waits in the port's queue,
   * every chunk recorded in LMDB's (in memory). Past OUTPUT_HIGH_WATER bytes in flight (posted
   * and not handled there, or recorded and not committed) the agent socket stops being read
   * (the guest's writes then block in its virtio-serial port) until both are below
   * OUTPUT_LOW_WATER together.
   */
  #throttle(bytes: number): void {
    const inFlight = this.#outputInFlight;
    if (!inFlight) return;
    const unwritten = () => this.#recorder?.unwrittenBytes ?? 0;
    if (Atomics.add(inFlight, 0, bytes) + bytes + unwritten() < OUTPUT_HIGH_WATER || this.#throttled) return;
    const agent = this.#vm?.agent;
    if (!agent) return;
    this.#throttled = true;
    agent.pauseInput();
    const poll = setInterval(() => {
      if (Atomics.load(inFlight, 0) + unwritten() > OUTPUT_LOW_WATER && this.#vm?.agent === agent && !this.#vm.isExited) return;
      clearInterval(poll);
      this.#throttled = false;
      agent.resumeInput();
    }, 2);
  }

  // ── helpers ────────────────────────────────────────────────────────────────

  #command(command: { type: 'pause' } | { type: 'resume' } | { type: 'drain' } | { type: 'stop'; timeoutMs?: number } | { type: 'kill' }): void {
    assertCan(this.#actor.getSnapshot(), command);
    this.#actor.send(command);
  }

  #session(execId: number): ExecSession {
    const s = this.#sessions.get(execId);
    if (!s) throw new CorralError('E_EXEC_NOT_FOUND', `no running exec ${execId} in sandbox "${this.#config.name}"`);
    return s;
  }

  /** A sandbox its idle limit paused is resumed by any call that needs the guest. */
  #wake(): void {
    const s = this.#actor.getSnapshot();
    if (s.status !== 'done' && s.can({ type: 'wake' })) this.#actor.send({ type: 'wake' });
  }

  /** The VM, if the sandbox is running (not paused: a paused guest would leave the call hanging). */
  #requireRunning(what: string): Vm {
    this.#wake();
    const state = stateName(this.#actor.getSnapshot());
    if (state !== 'running' && state !== 'draining') throw new CorralError('E_ILLEGAL_STATE', `cannot ${what} sandbox "${this.#config.name}": it is ${state}`, { details: { state } });
    return this.#requireVm();
  }

  #requireVm(): Vm {
    if (!this.#vm || this.#vm.isExited) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${this.#config.name}" has no running VM`);
    return this.#vm;
  }
}

const stores = new Map<string, Store>();

/**
 * This thread's store of a state dir, for the actors' event records: opened (and the dir
 * checked) once per thread, not per actor, and never closed (the thread's other actors use it).
 */
function threadStore(stateDir: string): Store {
  let store = stores.get(stateDir);
  if (!store) stores.set(stateDir, (store = Store.open(stateDir)));
  return store;
}

/**
 * Closes this thread's stores of event records, once what the actors recorded is committed:
 * for a worker about to end, after its actors are disposed. Records made later are dropped
 * (the supervisor writes what a worker did not commit).
 */
export async function closeThreadStores(): Promise<void> {
  const all = [...stores.values()];
  stores.clear();
  await Promise.all(all.map((s) => s.close()));
}

/** JSON for inspection events: bytes by their length, errors by name and message. */
function jsonSafe(_key: string, v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: v.byteLength };
  if (v instanceof Error) return { name: v.name, message: v.message, ...((v as { code?: string }).code ? { code: (v as { code?: string }).code } : {}) };
  if (typeof v === 'bigint') return String(v);
  return v;
}
