/**
 * The contract between a supervisor and the sandbox actors it hosts in worker threads: what
 * a worker is handed per actor, the Comlink surface of an actor, and the pool's messages.
 * Types only: both sides import it, neither imports the other.
 */

import type { JailStatus } from '../vm/jail.ts';
import type { MessagePort } from 'node:worker_threads';
import type { FsCall, FsCallResult } from '../agent/fsCalls.ts';
import type { SandboxEvent, SandboxStatus, StopReason } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import type { SerializedError } from '../errors.ts';
import type { ImageCommandRequest } from '../image/imageCommand.ts';
import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import type { RecordLimits } from '../events/EventRecorder.ts';

/** What the supervisor hands a worker for each actor it hosts. */
export interface SandboxWorkerData {
  readonly config: SandboxConfig;
  readonly stateDir: string;
  /** Comlink calls and their answers, and this actor's events as {@link EventEnvelope}s. */
  readonly control: MessagePort;
  /** The CORRAL_* variables of the creating thread at create time. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Values of the secret handles the config refers to (registryAuth.secret), in memory only. */
  readonly secrets?: Readonly<Record<string, string>>;
  /**
   * Exec output bytes posted as events and not yet handled by the receiver, which
   * subtracts what it handled (Atomics). Absent: no flow control.
   */
  readonly outputInFlight?: Int32Array;
  /**
   * The actor records its events in the state dir itself (src/events/EventRecorder.ts),
   * within these bounds, and stores in `written[0]` the seq of the last event whose records
   * are committed (Atomics). Absent: it records none (the receiver does).
   */
  readonly records?: { readonly limits: RecordLimits; readonly written: BigInt64Array };
  /** Spare VMs to keep ready in this worker for creates of this sandbox's shape (src/snapshot/spares.ts). */
  readonly spares?: number;
  /** Post the actor's XState inspection events ({@link InspectionEnvelope}): the supervisor has an `inspect` option. */
  readonly inspect?: boolean;
  /**
   * A cluster node's: the NATS servers and credentials this worker publishes the actor's
   * events into the cluster's stream with, itself (src/cluster/EventPublisher.ts).
   */
  readonly events?: NatsTarget;
  /**
   * A cluster node's: the subject (`corral.node.<node>.sandbox.<sandbox>`) under which this
   * worker answers the sandbox's plain calls itself, on the connection it publishes events on
   * (src/cluster/SandboxCalls.ts), without the node's main thread between. With `events`.
   */
  readonly callSubject?: string;
}

/** NATS servers and credentials to connect with (src/cluster/natsConnect.ts). */
export interface NatsTarget {
  readonly servers: readonly string[];
  readonly user?: string;
  readonly pass?: string;
  /** A file holding a user nkey seed (SU…). */
  readonly nkeySeedFile?: string;
  /** A .creds file (a user JWT and its seed), for servers in operator mode. */
  readonly credsFile?: string;
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string };
  /** The connection's name, shown by the NATS server. */
  readonly name: string;
}

/** Where an actor's events go besides its control port: a cluster node's stream. */
export interface EventSink {
  /** Resolves once it can publish; a sandbox does not start before. */
  readonly ready: Promise<void>;
  /** Never throws; events leave in the order given. */
  publish(e: SandboxEvent): void;
  /** Resolves once every event given so far has reached the server. */
  flushed(): Promise<void>;
}

/**
 * A cluster node's: the sandbox's plain calls that its worker answers itself
 * (src/cluster/SandboxCalls.ts). The node's main thread steers them through these: a move
 * holds them, a stop or a move ends them.
 */
export interface CallServer {
  /** Resolves once it answers calls (subscribed, and the server has the subscription). */
  readonly ready: Promise<void>;
  /** New calls wait from now on; resolves once every call in flight is answered. */
  hold(): Promise<void>;
  /** Held calls go on (a move that failed). */
  open(): void;
  /**
   * No more calls here: unsubscribes, answers held and later-arriving calls with `error` (a
   * move's E_SANDBOX_MOVED), and resolves once every call in flight is answered. Idempotent.
   */
  close(error?: SerializedError): Promise<void>;
}

/**
 * One XState inspection event of a sandbox's actor (or of an actor it invoked), as it
 * crosses the control port: actor refs travel as their session ids, snapshots as JSON.
 */
export interface WireInspectionEvent {
  readonly type: string;
  readonly rootId: string;
  readonly sessionId: string;
  /** The actor's id (the machine's `sandbox`, or an invoked actor's id). */
  readonly actorId: string;
  readonly parentId?: string;
  readonly sourceId?: string;
  /** This actor is the sandbox machine (its definition is known to both sides). */
  readonly isMachine: boolean;
  readonly event?: unknown;
  readonly snapshot?: unknown;
  readonly action?: unknown;
}

/** How an inspection event travels on the control port (comlink ignores it: no `id`). */
export interface InspectionEnvelope {
  readonly inspection: WireInspectionEvent;
}

/** How an event travels on the control port: comlink ignores a message without an `id`. */
export interface EventEnvelope {
  readonly event: SandboxEvent;
  /** The exec log number of the event's output, where the actor records its events (SandboxWorkerData.records). */
  readonly log?: number;
  /** ...and the oldest seq its replay buffer keeps (an event that carries no output is recorded after it is posted: as of the one before). */
  readonly replayFrom?: number;
}

/** A command to run, as the SDK sends it. */
export interface ExecRequest {
  readonly argv: readonly string[];
  /** Run the image's command instead of `argv` (src/image/imageCommand.ts). */
  readonly imageCommand?: ImageCommandRequest;
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly stdin?: boolean;
  readonly mergeStderr?: boolean;
  /** Run on a pseudo-terminal of this size. */
  readonly tty?: { readonly cols: number; readonly rows: number };
  /** `name`, `uid`, `name:group` or `uid:gid`; default the image's user. */
  readonly user?: string;
  /**
   * The caller acknowledges output it consumed ({@link SandboxWorkerApi.ackOutput}); the
   * guest's command is held back once 2 MiB are unacknowledged (agent protocol 5).
   */
  readonly outputCredit?: boolean;
  /** Started with `background: true`: it runs on whoever holds (or drops) a handle to it. */
  readonly background?: boolean;
  /**
   * The whole of its stdin, given with the request (with `stdin: true`): written, then
   * closed, as the command starts. One call instead of three (exec, writeStdin, closeStdin),
   * each a round trip through a cluster; the SDK sends stdin text or bytes up to
   * {@link STDIN_WITH_REQUEST_BYTES} so, larger ones by writes that wait for the guest's room.
   */
  readonly stdinData?: Uint8Array;
}

/** The most stdin bytes the SDK gives with an exec request ({@link ExecRequest.stdinData}). */
export const STDIN_WITH_REQUEST_BYTES = 64 * 1024;

/** What {@link SandboxWorkerApi.exec} answers once the command is on its way. */
export interface ExecAccepted {
  /** It took {@link ExecRequest.stdinData}: the caller writes nothing more (one that knows no stdinData answers nothing, and the caller writes it). */
  readonly stdinTaken: boolean;
}

/** A command running in a sandbox, as {@link SandboxWorkerApi.execs} lists it. */
export interface ExecInfo {
  /** The exec's id: what `sandbox.attach(id)` takes. */
  readonly id: number;
  readonly argv: readonly string[];
  /** The command's pid in the guest, once it started. */
  readonly pid: number | null;
  /** Wall clock (ms since the epoch) when it was started. */
  readonly startedAt: number;
  readonly background: boolean;
  readonly stdin: boolean;
  readonly tty: boolean;
}

/** A file watch to start, as the SDK sends it (`sb.fs().watch`). */
export interface WatchRequest {
  /** The guest directory, absolute. */
  readonly path: string;
  /** Its subdirectories too, including ones made later. */
  readonly recursive: boolean;
}

/** A diagnostic for the benchmarks' floors (agent protocol 5). */
export type ProbeRequest =
  /** Time `count` spawns of `argv` in the guest, as the agent itself sees them. */
  | { readonly op: 'spawn'; readonly argv: readonly string[]; readonly count: number }
  /** The agent sends `bytes` bytes of its own over the port (no child, no pipe). */
  | { readonly op: 'sink'; readonly bytes: number };

/** What a probe measured. */
export type ProbeResult =
  | { readonly op: 'spawn'; readonly ms: readonly number[]; readonly status: number }
  | { readonly op: 'sink'; readonly bytes: number; readonly guestMs: number; readonly hostMs: number };

/** A sandbox's facts, as `sandbox.info()` returns them. */
export interface SandboxInfo {
  readonly name: string;
  readonly status: SandboxStatus;
  readonly state: string;
  readonly pid: number | null;
  readonly accel: string | null;
  readonly accelReason: string | null;
  /**
   * The VM process's jail (src/vm/jail.ts): its uid, whether it has a network namespace, its
   * cgroup limits, and `missing`, each wall this host could not put up. Null without a VM.
   */
  readonly jail: JailStatus | null;
  /** The guest kernel it runs, "debian 6.1.0-57-amd64" or "custom 6.1.192" (CORRAL_KERNEL). */
  readonly kernel: string | null;
  readonly bootMs: number | null;
  readonly guestBootMs: number | null;
  readonly agentVersion: string | null;
  readonly inFlight: number;
  readonly stopReason: StopReason | null;
  readonly exitCode: number | null;
  readonly exitSignal: string | null;
  readonly error: SerializedError | null;
  /** The cluster node that runs it (sandboxes reached through a cluster only). */
  readonly node?: string;
}

/**
 * The info of a sandbox known only by its record (stopped, or run where no link reaches):
 * its status, state and stop reason; every VM fact null. One place, so a new field of
 * {@link SandboxInfo} is added once.
 */
export function recordedInfo(name: string, rec: { status?: SandboxStatus; state?: string; stopReason?: StopReason | null } | undefined): SandboxInfo {
  return {
    name,
    status: rec?.status ?? 'stopped',
    state: rec?.state ?? 'stopped',
    pid: null,
    jail: null,
    kernel: null,
    accel: null,
    accelReason: null,
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

/** The Comlink surface of a sandbox actor. */
export interface SandboxWorkerApi {
  /** Boots the sandbox; resolves once it runs, rejects with the boot error. */
  start(): Promise<SandboxInfo>;
  exec(execId: number, req: ExecRequest): Promise<ExecAccepted>;
  /**
   * A cluster node's: the actor publishes no more events into the cluster's stream (the copy
   * a move leaves behind ends in silence); resolves once the server has those before.
   */
  silenceEvents(): Promise<void>;
  /** A cluster node's ({@link CallServer.hold}): the calls its worker answers wait; resolves once those in flight are answered. */
  holdCalls(): Promise<void>;
  /** A cluster node's ({@link CallServer.open}): held calls go on. */
  openCalls(): void;
  /** A cluster node's ({@link CallServer.close}): its worker answers no more of its calls. */
  closeCalls(error?: SerializedError): Promise<void>;
  /** Resolves once the guest agent has room for the bytes (stdin flow control). */
  writeStdin(execId: number, data: Uint8Array): Promise<void>;
  closeStdin(execId: number): void;
  signalExec(execId: number, signo: number): void;
  /** Sets a tty exec's window size. */
  resizeExec(execId: number, cols: number, rows: number): void;
  /** `bytes` more of an `outputCredit` exec's output were consumed: the guest may send as many more. */
  ackOutput(execId: number, bytes: number): void;
  /** One file call in the guest (src/agent/fsCalls.ts). */
  fs(call: FsCall): Promise<FsCallResult>;
  /** The commands running now, oldest first. */
  execs(): ExecInfo[];
  /**
   * Starts file watch `watchId` (the caller's pick, like an exec id): resolves once the guest
   * watches the directory; its changes come as `fs.watch` events, its end as `fs.watch.ended`.
   */
  watchStart(watchId: number, req: WatchRequest): Promise<void>;
  /** Asks the guest to end a watch (`fs.watch.ended` with reason `stopped` follows); a watch that is gone is no error. */
  watchStop(watchId: number): Promise<void>;
  /** Forwards `127.0.0.1:hostPort` on the host to the guest's `guestPort` from now on (the VM needs a NIC). */
  publish(hostPort: number, guestPort: number): Promise<void>;
  /** Stops forwarding `hostPort` (published at create or with {@link publish}). */
  unpublish(hostPort: number): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** The sandbox ends (drains, reason `max-duration`) `ms` from now, replacing any earlier limit. */
  setMaxDuration(ms: number): void;
  drain(): Promise<SandboxInfo>;
  stop(timeoutMs?: number): Promise<SandboxInfo>;
  kill(): Promise<SandboxInfo>;
  info(): SandboxInfo;
  /** Resolves once the sandbox reached `stopped`, however it got there. */
  stopped(): Promise<SandboxInfo>;
  /** ms of one agent PING round trip (a raw port round trip, bypassing exec). */
  ping(bytes: number): Promise<number>;
  /** A floor measurement through the agent (see {@link ProbeRequest}). */
  probe(req: ProbeRequest): Promise<ProbeResult>;
  /** Saves memory + upper disk as snapshot `name`; the sandbox runs on. */
  snapshot(name: string): Promise<SnapshotMeta>;
  /** QMP `query-blockstats` of the VM: host-side disk counters, for metrics. */
  blockStats(): Promise<unknown[]>;
  /** Bytes of the VM's network traffic, counted on the host; null without a NIC. */
  networkStats(): Promise<{ rxBytes: number; txBytes: number } | null>;
}

/** Messages the pool posts a sandbox worker (src/pool/SandboxPool.ts). */
export type PoolMessage =
  | { readonly type: 'host'; readonly id: number; readonly data: SandboxWorkerData }
  | { readonly type: 'dispose'; readonly id: number }
  /**
   * End the thread: dispose every actor, commit and close the thread's LMDB, then exit. A
   * worker still loading its modules reads it once loaded (the port queues it).
   */
  | { readonly type: 'end' }
  /** Test-only: the worker keeps its thread busy for `ms` (it answers nothing meanwhile), as a hung worker would. */
  | { readonly type: 'stall'; readonly ms: number }
  /** Test-only: the worker throws at top level, as a bug in its code would make it. */
  | { readonly type: 'crash'; readonly message: string };

/** What a sandbox worker tells its pool once its modules are loaded (LMDB's native addon among them). */
export interface WorkerLoaded {
  readonly type: 'loaded';
}
