/**
 * Host side of the guest-agent protocol: one connection, many multiplexed exec sessions.
 *
 * The guest is untrusted. Every frame is bounded and validated by {@link FrameDecoder}; a
 * frame that breaks the protocol (oversized, unknown type, a session the host never opened,
 * output after exit) fails the whole connection with an E_PROTOCOL error delivered through
 * {@link AgentClient.failed} — it never throws into the caller's stack.
 */

import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { CorralError } from '../errors.ts';
import {
  ExecFlags,
  ExitFlags,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
  MIN_PROTOCOL_VERSION,
  OUTPUT_DRAIN_ALLOWANCE,
  OUTPUT_WINDOW,
  PROTOCOL_VERSION,
  ProbeOp,
  PayloadReader,
  PayloadWriter,
  STDIN_WINDOW,
  encodeFrame,
  type Frame,
  type FrameTypeCode,
} from './frame.ts';

/** What the agent announced when it came up. */
export interface AgentHello {
  readonly protocolVersion: number;
  readonly agentVersion: string;
  /** Guest CLOCK_BOOTTIME when HELLO was sent, ms: kernel boot + agent init. */
  readonly bootMs: number;
  /** ms the agent spent before HELLO (mounts, root assembly). */
  readonly initMs: number;
}

/** A command to run in the guest. */
export interface ExecSpec {
  readonly argv: readonly string[];
  /** The complete environment (`K=V`); the caller merges defaults. */
  readonly env: readonly string[];
  readonly cwd: string;
  readonly uid?: number;
  readonly gid?: number;
  /** Whether the host will send stdin; if false the child's stdin is /dev/null. */
  readonly stdin?: boolean;
  readonly mergeStderr?: boolean;
  /** Run on a pseudo-terminal of this size (protocol 3); stdout carries the terminal's output. */
  readonly tty?: { readonly cols: number; readonly rows: number };
  /** `name`, `uid`, `name:group` or `uid:gid`, resolved by the agent from the guest's /etc files (protocol 3). */
  readonly user?: string;
  /**
   * Output flow control (protocol 5; ignored by older agents): the agent sends at most
   * {@link OUTPUT_WINDOW} output bytes the host has not acknowledged with
   * {@link ExecSession.ackOutput}, so a consumer that stops reading stops the command.
   */
  readonly outputCredit?: boolean;
}

/** What a SPAWN probe measured: each run's ns (vfork to reaped), timed by the agent. */
export interface SpawnProbe {
  readonly ns: readonly number[];
  /** The last run's wait status (0 = exited 0). */
  readonly status: number;
}

/** What a SINK probe measured. */
export interface SinkProbe {
  readonly bytes: number;
  /** The agent's ns from the request to its last frame queued. */
  readonly guestNs: number;
  /** The host's ms from the request to the reply (all bytes read). */
  readonly hostMs: number;
}

/** How an exec ended, beyond its status. */
export interface ExitInfo {
  /** The guest kernel's OOM killer killed a process of the exec (protocol 3 agents say so). */
  readonly oomKilled: boolean;
}

/** What one change a watch saw is (protocol 6). `overflow`: changes were lost (a queue was full). */
export type WatchKind = 'create' | 'write' | 'remove' | 'rename' | 'overflow';

/** One change a watch saw, its paths relative to the watched directory. */
export interface WatchRecord {
  readonly kind: WatchKind;
  /** Relative to the watched directory ("" for an overflow); for a rename, where it was. */
  readonly path: string;
  /** A rename's new path (relative), when the agent paired the two halves. */
  readonly to?: string;
  readonly isDir: boolean;
}

/**
 * Why a watch ended: `stopped` (asked to), `removed` (its directory was removed, moved or
 * unmounted), `failed` (the agent could not read it), `closed` (the connection to the guest
 * ended: the sandbox stopped).
 */
export type WatchEndReason = 'stopped' | 'removed' | 'failed' | 'closed';

/** Callbacks of one watch, in the order the guest sent them. */
export interface WatchHandlers {
  changes(records: readonly WatchRecord[]): void;
  /** Final. `error` when it ended by a failure. */
  ended(reason: WatchEndReason, error?: Error): void;
}

/** A file watch in the guest. */
export interface WatchSession {
  readonly id: number;
  /** Resolves once the agent watches the directory; rejects with E_FS (`details.errno`: ENOENT, ENOTDIR, EMFILE…) if it cannot. */
  readonly started: Promise<void>;
  /** Asks the agent to end the watch; `ended('stopped')` follows. A no-op once it ended. */
  stop(): void;
}

/** One FS session: its requests are answered in order (src/agent/GuestFs.ts speaks it). */
export interface FsChannel {
  readonly id: number;
  /**
   * Sends one FS frame and resolves with `decode` of the reply's body (after its errno 0),
   * run while the frame is handled: a decode that throws E_PROTOCOL fails the connection.
   * A non-zero errno rejects with E_FS (`details.errno` its name) and ends the session, as
   * does the reply to a request marked `last`.
   */
  request<T>(payload: Uint8Array, decode: (r: PayloadReader) => T, options?: { last?: boolean }): Promise<T>;
}

/** Callbacks of one exec session, called in the order the guest sent them. */
export interface ExecHandlers {
  started(pid: number): void;
  /**
   * A piece of output: a view into the bytes read from the port, which nothing overwrites.
   * It pins that read's buffer (up to 64 KiB): copy what you keep for long.
   */
  stdout(data: Uint8Array): void;
  stderr(data: Uint8Array): void;
  exited(code: number | null, signal: number | null, info?: ExitInfo): void;
  /** The exec could not start, or the connection failed under it. Final. */
  failed(err: Error): void;
}

/** A running exec session. */
export interface ExecSession {
  readonly id: number;
  /**
   * Sends stdin bytes (chunked to the frame limit). Resolves once all of them are sent: with
   * a protocol-4 agent only {@link STDIN_WINDOW} bytes may be unacknowledged, so a child that
   * reads slowly holds the promise back (the bytes stay in the caller's buffer, not copied).
   * Resolves too, the bytes dropped, if the session ends first.
   */
  write(data: Uint8Array): Promise<void>;
  /** Closes the child's stdin, after the bytes of earlier writes. */
  end(): void;
  /** Stdin bytes sent but not yet acknowledged by the agent (0 without flow control). */
  readonly stdinInFlight: number;
  /** The most {@link stdinInFlight} ever was: never above {@link STDIN_WINDOW}. */
  readonly stdinInFlightPeak: number;
  /** Sends a signal to the exec's process group. */
  signal(signo: number): void;
  /** Sets a tty exec's window size (the guest process gets SIGWINCH). */
  resize(cols: number, rows: number): void;
  /**
   * With `outputCredit`: `bytes` more of the output this session delivered were consumed,
   * and the agent may send that many more (at most what was delivered and not yet
   * acknowledged is sent on; a no-op without credit or once the session is over).
   */
  ackOutput(bytes: number): void;
  /** Output bytes delivered and not yet acknowledged (0 without output credit). */
  readonly outputUnacked: number;
}

/** Limits that keep a hostile guest from exhausting the host. */
export interface AgentLimits {
  /** Most live exec sessions. Default 1024 (the agent's own bound). */
  readonly maxSessions?: number;
  /**
   * The HELLO the agent sent before a snapshot: a restored agent does not say it again, so
   * the connection starts as ready.
   */
  readonly hello?: AgentHello;
  /**
   * Sessions a restored guest may still talk about (they were live when its snapshot was
   * taken, on a connection that no longer exists): their frames are dropped, not fatal.
   */
  readonly orphanSessions?: readonly number[];
}

interface Live {
  readonly handlers: ExecHandlers;
  started: boolean;
  /** Protocol 4 stdin flow control; undefined for an exec without stdin or an older agent. */
  readonly credit: StdinCredit | undefined;
  /** Protocol 5 output flow control: delivered and acknowledged output bytes; undefined without. */
  readonly output: { received: number; acked: number } | undefined;
}

interface ProbeWaiter {
  readonly decode: (r: PayloadReader) => unknown;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  /** STDOUT bytes a SINK probe delivered so far. */
  sunk: number;
}

interface StdinCredit {
  inFlight: number;
  peak: number;
  /** Writes waiting for window, oldest first; `off` bytes of the first are sent. */
  readonly queue: Array<{ readonly data: Uint8Array; off: number; readonly resolve: () => void }>;
  /** end() came while writes were queued: the EOF goes after them. */
  eof: boolean;
}

interface LiveWatch {
  readonly handlers: WatchHandlers;
  started: boolean;
  readonly resolveStarted: () => void;
  readonly rejectStarted: (e: Error) => void;
}

const WATCH_KINDS: Readonly<Record<number, WatchKind>> = { 1: 'create', 2: 'write', 3: 'remove', 4: 'rename', 5: 'overflow' };
const WATCH_END_REASONS: Readonly<Record<number, WatchEndReason>> = { 1: 'stopped', 2: 'removed', 3: 'failed' };
/** A watch path in a record: at most the agent's path limit. */
const WATCH_PATH_MAX = 4096;

interface FsWaiter {
  decode(r: PayloadReader): unknown;
  resolve(v: unknown): void;
  reject(e: Error): void;
  last: boolean;
}

/** Linux errno numbers to names (host and guest are both Linux). */
const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));

/** The name of a Linux errno (`ENOENT`), or `errno N`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

const STDIN_CHUNK = 64 * 1024;

/**
 * Speaks the agent protocol over a connected stream socket.
 *
 * @example
 * const agent = new AgentClient(socket);
 * const hello = await agent.ready;
 * agent.exec({ argv: ['true'], env: [], cwd: '/' }, handlers);
 */
export class AgentClient {
  readonly #socket: Socket;
  /** Output frames come in parts, as views into the socket's reads (see FrameDecoder). */
  readonly #decoder = new FrameDecoder({ stream: new Set([FrameType.STDOUT, FrameType.STDERR]) });
  readonly #sessions = new Map<number, Live>();
  readonly #maxSessions: number;
  #nextId = 1;
  #pings = new Map<string, () => void>();
  #configured: Array<() => void> = [];
  #setups: Array<{ resolve(): void; reject(e: Error): void; describe(index: number): string }> = [];
  readonly #fs = new Map<number, FsWaiter[]>();
  readonly #probes = new Map<number, ProbeWaiter>();
  readonly #watches = new Map<number, LiveWatch>();
  #error: Error | undefined;
  #closed = false;
  #hello: AgentHello | undefined;
  readonly #orphans: Set<number>;

  /** Resolves with the agent's HELLO; rejects if the connection fails first. */
  readonly ready: Promise<AgentHello>;
  /** Resolves (never rejects) with the error that broke the connection, once it breaks. */
  readonly failed: Promise<Error>;

  #resolveReady!: (h: AgentHello) => void;
  #rejectReady!: (e: Error) => void;
  #resolveFailed!: (e: Error) => void;

  constructor(socket: Socket, limits: AgentLimits = {}) {
    this.#socket = socket;
    this.#maxSessions = limits.maxSessions ?? 1024;
    this.#orphans = new Set(limits.orphanSessions ?? []);
    this.ready = new Promise((res, rej) => {
      this.#resolveReady = res;
      this.#rejectReady = rej;
    });
    this.ready.catch(() => {}); // marked handled only: whoever awaits it gets the rejection; one nobody awaits yet must not crash the process
    this.failed = new Promise((res) => (this.#resolveFailed = res));
    if (limits.hello) {
      this.#hello = limits.hello;
      this.#resolveReady(limits.hello);
    }
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => this.#fail(new CorralError('E_VM_CRASHED', `agent connection lost: ${err.message}`, { cause: err })));
    socket.on('close', () => this.#fail(new CorralError('E_VM_CRASHED', 'agent connection closed')));
  }

  /** The HELLO, once received. */
  get hello(): AgentHello | undefined {
    return this.#hello;
  }

  /** Live exec sessions. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Ids of the live sessions, open files and orphans still running, for a snapshot's record. */
  get sessionIds(): number[] {
    return [...this.#sessions.keys(), ...this.#fs.keys(), ...this.#watches.keys(), ...this.#orphans];
  }

  /** Live file watches. */
  get watchCount(): number {
    return this.#watches.size;
  }

  /**
   * Watches a guest directory with inotify (protocol 6): `changes` gets the records as the
   * agent sends them (paths relative to `path`), `ended` once, however it ends. Throws
   * (synchronously) if the connection is broken or the agent too old.
   *
   * @example
   * const w = agent.watch('/work', { recursive: true }, { changes: (rs) => console.log(rs), ended: (why) => console.log(why) });
   * await w.started;
   */
  watch(path: string, options: { recursive: boolean }, handlers: WatchHandlers): WatchSession {
    this.#assertOpen();
    this.#requireProtocol(6, 'file watches');
    const id = this.#allocateId();
    let resolveStarted!: () => void;
    let rejectStarted!: (e: Error) => void;
    const started = new Promise<void>((res, rej) => {
      resolveStarted = res;
      rejectStarted = rej;
    });
    started.catch(() => {}); // marked handled only: the caller awaits it
    const live: LiveWatch = { handlers, started: false, resolveStarted, rejectStarted };
    this.#watches.set(id, live);
    this.#send(FrameType.WATCH, id, new PayloadWriter().u32(options.recursive ? 1 : 0).str(path).finish());
    return {
      id,
      started,
      stop: () => {
        if (this.#watches.get(id) !== live || this.#closed || this.#error) return;
        this.#send(FrameType.WATCH_STOP, id);
      },
    };
  }

  /**
   * Ends, in the guest, the watches a restored snapshot still runs (their host side is gone):
   * a WATCH_STOP for every orphan session, which the agent ignores for ids that are no watch.
   */
  endOrphanWatches(): void {
    if (this.#closed || this.#error || (this.#hello?.protocolVersion ?? 0) < 6) return;
    for (const id of this.#orphans) this.#send(FrameType.WATCH_STOP, id);
  }

  /** Starts an exec session. Throws (synchronously) if the connection is broken or full. */
  /**
   * Runs a command whose output nobody reads and resolves with its exit code (null when a
   * signal ended it); rejects if it could not run. For the host's own commands in the guest.
   *
   * @example
   * if ((await agent.run({ argv: ['true'], env: [], cwd: '/' })) !== 0) throw …;
   */
  run(spec: ExecSpec): Promise<number | null> {
    return new Promise((resolve, reject) => {
      this.exec(spec, { started: () => {}, stdout: () => {}, stderr: () => {}, exited: (code) => resolve(code), failed: reject });
    });
  }

  exec(spec: ExecSpec, handlers: ExecHandlers): ExecSession {
    this.#assertOpen();
    if (this.#sessions.size >= this.#maxSessions) {
      throw new CorralError('E_EXEC_START', `too many concurrent execs (max ${this.#maxSessions})`);
    }
    if (spec.argv.length === 0) throw new TypeError('exec argv must have at least one element');
    if (spec.tty || spec.user !== undefined) this.#requireProtocol(3, spec.tty ? 'tty execs' : 'exec users');
    const id = this.#allocateId();
    const credit = spec.stdin === true && (this.#hello?.protocolVersion ?? 0) >= 4;
    const outputCredit = spec.outputCredit === true && (this.#hello?.protocolVersion ?? 0) >= 5;
    const flags =
      (spec.stdin ? ExecFlags.STDIN : 0) |
      (spec.mergeStderr ? ExecFlags.MERGE_STDERR : 0) |
      (spec.tty ? ExecFlags.TTY : 0) |
      (spec.user !== undefined ? ExecFlags.USER : 0) |
      (credit ? ExecFlags.CREDIT : 0) |
      (outputCredit ? ExecFlags.OUT_CREDIT : 0);
    const w = new PayloadWriter()
      .u32(flags)
      .strList(spec.argv)
      .strList(spec.env)
      .str(spec.cwd)
      .u32(spec.uid ?? 0)
      .u32(spec.gid ?? 0);
    if (spec.tty) w.u32(spec.tty.cols).u32(spec.tty.rows);
    if (spec.user !== undefined) w.str(spec.user);
    const payload = w.finish();
    if (payload.length > MAX_PAYLOAD) throw new RangeError(`exec request of ${payload.length} bytes exceeds ${MAX_PAYLOAD} (argv + env too large)`);
    const live: Live = {
      handlers,
      started: false,
      credit: credit ? { inFlight: 0, peak: 0, queue: [], eof: false } : undefined,
      output: outputCredit ? { received: 0, acked: 0 } : undefined,
    };
    this.#sessions.set(id, live);
    this.#send(FrameType.EXEC, id, payload);
    const open = () => this.#sessions.get(id) === live && !this.#closed;
    return {
      id,
      write: (data) => {
        // The agent would answer a host error, which fails the sandbox: refused here instead.
        if (!spec.stdin) return Promise.reject(new CorralError('E_ILLEGAL_STATE', `exec session ${id} was started without stdin (open it with stdin: 'pipe')`));
        if (!open() || data.length === 0) return Promise.resolve();
        const c = live.credit;
        if (!c) {
          for (let off = 0; off < data.length; off += STDIN_CHUNK) {
            this.#send(FrameType.STDIN, id, data.subarray(off, Math.min(data.length, off + STDIN_CHUNK)));
          }
          return Promise.resolve();
        }
        return new Promise<void>((resolve) => {
          c.queue.push({ data, off: 0, resolve });
          this.#pumpStdin(id, c);
        });
      },
      end: () => {
        // Without stdin the command reads /dev/null: there is nothing to close.
        if (!open() || !spec.stdin) return;
        if (live.credit && live.credit.queue.length > 0) live.credit.eof = true;
        else this.#send(FrameType.STDIN, id);
      },
      get stdinInFlight() {
        return live.credit?.inFlight ?? 0;
      },
      get stdinInFlightPeak() {
        return live.credit?.peak ?? 0;
      },
      signal: (signo) => {
        if (!this.#sessions.has(id) || this.#closed) return;
        this.#send(FrameType.SIGNAL, id, new PayloadWriter().i32(signo).finish());
      },
      resize: (cols, rows) => {
        if (!spec.tty) throw new CorralError('E_ILLEGAL_STATE', `exec session ${id} has no terminal to resize (start it with tty)`);
        if (!this.#sessions.has(id) || this.#closed) return;
        this.#send(FrameType.RESIZE, id, new PayloadWriter().u32(cols).u32(rows).finish());
      },
      ackOutput: (bytes) => {
        const o = live.output;
        if (!o || !open()) return;
        const n = Math.min(Math.floor(bytes), o.received - o.acked);
        if (!(n > 0)) return;
        o.acked += n;
        this.#send(FrameType.OUTPUT_ACK, id, new PayloadWriter().u32(n).finish());
      },
      get outputUnacked() {
        return live.output ? live.output.received - live.output.acked : 0;
      },
    };
  }

  /**
   * Times `count` runs of a command in the guest, each from the agent's vfork to its reaping,
   * stdio on /dev/null (protocol 5). The agent serves nothing else meanwhile: for benchmarks'
   * floors, not for work.
   */
  probeSpawn(argv: readonly string[], env: readonly string[], count: number): Promise<SpawnProbe> {
    const payload = new PayloadWriter().u32(ProbeOp.SPAWN).u32(count).strList(argv).strList(env).finish();
    return this.#probe(payload, (r) => {
      const n = r.u32();
      if (n !== count) throw new CorralError('E_PROTOCOL', `guest answered a SPAWN probe of ${count} runs with ${n}`);
      const ns: number[] = [];
      for (let i = 0; i < n; i++) ns.push(r.u64());
      return { ns, status: r.i32() };
    }) as Promise<SpawnProbe>;
  }

  /**
   * Has the agent send `bytes` bytes of its own (no child, no pipe) as output frames, read
   * and counted here without copying: the raw guest→host port throughput (protocol 5).
   */
  async probeSink(bytes: number): Promise<SinkProbe> {
    const t0 = performance.now();
    const payload = new PayloadWriter().u32(ProbeOp.SINK).u32(bytes % 2 ** 32).u32(Math.floor(bytes / 2 ** 32)).finish();
    let waiter: ProbeWaiter | undefined;
    const guestNs = (await this.#probe(payload, (r) => r.u64(), (w) => (waiter = w))) as number;
    const got = waiter?.sunk ?? 0;
    if (got !== bytes) throw new CorralError('E_PROTOCOL', `guest answered a SINK probe of ${bytes} bytes after ${got}`);
    return { bytes, guestNs, hostMs: performance.now() - t0 };
  }

  #probe(payload: Uint8Array, decode: (r: PayloadReader) => unknown, onWaiter?: (w: ProbeWaiter) => void): Promise<unknown> {
    this.#assertOpen();
    this.#requireProtocol(5, 'probes');
    const id = this.#allocateId();
    return new Promise((resolve, reject) => {
      const w: ProbeWaiter = { decode, resolve, reject, sunk: 0 };
      onWaiter?.(w);
      this.#probes.set(id, w);
      this.#send(FrameType.PROBE, id, payload);
    });
  }

  /** Opens an FS session (protocol 3). Throws if the connection is broken or the agent too old. */
  fsChannel(): FsChannel {
    this.#assertOpen();
    this.#requireProtocol(3, 'file access');
    const id = this.#allocateId();
    const waiters: FsWaiter[] = [];
    this.#fs.set(id, waiters);
    return {
      id,
      request: <T>(payload: Uint8Array, decode: (r: PayloadReader) => T, options: { last?: boolean } = {}) =>
        new Promise<T>((resolve, reject) => {
          if (this.#error) return reject(this.#error);
          if (this.#fs.get(id) !== waiters) return reject(new CorralError('E_CLOSED', `file session ${id} is finished`));
          waiters.push({ decode, resolve: resolve as (v: unknown) => void, reject, last: options.last ?? false });
          this.#send(FrameType.FS, id, payload);
        }),
    };
  }

  /** Sends queued stdin while the window allows; the EOF once the queue is empty. */
  #pumpStdin(id: number, c: StdinCredit): void {
    while (c.queue.length > 0 && c.inFlight < STDIN_WINDOW) {
      const w = c.queue[0]!;
      const n = Math.min(STDIN_CHUNK, STDIN_WINDOW - c.inFlight, w.data.length - w.off);
      this.#send(FrameType.STDIN, id, w.data.subarray(w.off, w.off + n));
      w.off += n;
      c.inFlight += n;
      c.peak = Math.max(c.peak, c.inFlight);
      if (w.off === w.data.length) {
        c.queue.shift();
        w.resolve();
      }
    }
    if (c.queue.length === 0 && c.eof) {
      c.eof = false;
      this.#send(FrameType.STDIN, id);
    }
  }

  /** A session is over: writes still waiting for window are dropped (as writes after its end are). */
  #endSession(id: number, live: Live): void {
    this.#sessions.delete(id);
    for (const w of live.credit?.queue.splice(0) ?? []) w.resolve();
  }

  #requireProtocol(version: number, what: string): void {
    const have = this.#hello?.protocolVersion ?? 0;
    if (have < version) {
      throw new CorralError('E_SETUP_MISSING', `the guest agent speaks protocol ${have}, ${what} need ${version}: rebuild with scripts/setup.sh`);
    }
  }

  /** Round trip through the agent; resolves with the elapsed ms. */
  async ping(payload: Uint8Array = new Uint8Array(8)): Promise<number> {
    this.#assertOpen();
    const t0 = performance.now();
    const key = `${Buffer.from(payload).toString('hex')}:${t0}`;
    const tagged = Buffer.concat([Buffer.from(key), Buffer.from([0])]);
    await new Promise<void>((resolve, reject) => {
      this.#pings.set(tagged.toString('latin1'), resolve);
      this.failed.then(reject);
      this.#send(FrameType.PING, 0, tagged);
    });
    return performance.now() - t0;
  }

  /** Hands the guest its identity: hostname, wall clock, fresh entropy. */
  async configure(opts: { hostname: string; rngSeed: Uint8Array; now?: number }): Promise<void> {
    this.#assertOpen();
    const now = opts.now ?? Date.now();
    const payload = new PayloadWriter()
      .str(opts.hostname)
      .u32(Math.floor(now / 1000))
      .u32((now % 1000) * 1e6)
      .bytes(opts.rngSeed)
      .finish();
    await new Promise<void>((resolve, reject) => {
      this.#configured.push(resolve);
      this.failed.then(reject);
      this.#send(FrameType.CONFIGURE, 0, payload);
    });
  }

  /**
   * Sends one SETUP frame (payload from src/agent/setupOps.ts) and waits for its SETUP_DONE.
   * Rejects with E_AGENT naming the op that failed (`describe(index)`), E_PROTOCOL if the
   * agent is too old to know SETUP. With `timeoutMs`, a guest that does not answer in time
   * fails the whole connection with E_TIMEOUT naming the op: SETUP_DONEs are matched in
   * order, so a late answer would be taken for the next request's.
   *
   * @example
   * await agent.setup(frame.payload, () => 'volume /data', { timeoutMs: 10_000 });
   */
  async setup(payload: Uint8Array, describe: (index: number) => string = (i) => `op ${i}`, options: { timeoutMs?: number } = {}): Promise<void> {
    this.#assertOpen();
    if ((this.#hello?.protocolVersion ?? 0) < 2) {
      throw new CorralError('E_SETUP_MISSING', `the guest agent speaks protocol ${this.#hello?.protocolVersion}, volumes/scripts/patches/network need 2: rebuild with scripts/setup.sh`);
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#setups.push({ resolve, reject, describe });
        this.failed.then(reject);
        this.#send(FrameType.SETUP, 0, payload);
        if (options.timeoutMs === undefined) return;
        const ms = options.timeoutMs;
        timer = setTimeout(() => {
          this.#fail(
            new CorralError('E_TIMEOUT', `the guest agent did not answer the setup of ${describe(0)} within ${ms} ms: its connection is failed (the protocol state is unknown)`, {
              details: { timeoutMs: ms },
            }),
          );
        }, ms);
      });
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Stops reading from the guest until {@link resumeInput}: the protocol has no flow control
   * from host to guest output, so a host whose consumers fall behind holds the guest back
   * here (the virtio-serial port then blocks its writes) instead of queueing without bound.
   */
  pauseInput(): void {
    if (!this.#closed && !this.#error) this.#socket.pause();
  }

  /** Reads from the guest again after {@link pauseInput}. */
  resumeInput(): void {
    if (!this.#closed && !this.#error) this.#socket.resume();
  }

  /** Asks the agent to sync and end the VM (a reset that -no-reboot turns into exit). Returns once the request is written. */
  shutdown(): void {
    if (this.#closed || this.#error) return;
    this.#send(FrameType.SHUTDOWN, 0);
  }

  /** Closes the connection; live sessions fail with `reason`. Idempotent. */
  close(reason: Error = new CorralError('E_CLOSED', 'agent connection closed')): void {
    if (this.#closed) return;
    this.#fail(reason);
    this.#closed = true;
    this.#socket.destroy();
  }

  #assertOpen(): void {
    if (this.#error) throw this.#error;
    if (this.#closed) throw new CorralError('E_CLOSED', 'agent connection is closed');
  }

  #allocateId(): number {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = this.#nextId >= 0xfffffffe ? 1 : this.#nextId + 1;
      if (!this.#sessions.has(id) && !this.#orphans.has(id) && !this.#fs.has(id) && !this.#probes.has(id) && !this.#watches.has(id)) return id;
    }
  }

  #send(type: FrameTypeCode, session: number, payload?: Uint8Array): void {
    this.#socket.write(encodeFrame(type, session, payload));
  }

  #onData(chunk: Buffer): void {
    if (this.#error) return;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
      // Output frames go on as views into the read (the actor's batcher joins them, once,
      // into the event it posts: src/actor/outputBatch.ts).
      for (const f of frames) this.#dispatch(f);
    } catch (err) {
      this.#fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #dispatch(f: Frame): void {
    if (!this.#hello && f.type !== FrameType.HELLO) {
      throw new CorralError('E_PROTOCOL', `guest sent frame type ${f.type} before HELLO`);
    }
    switch (f.type) {
      case FrameType.HELLO:
        return this.#onHello(f);
      case FrameType.PONG: {
        const key = Buffer.from(f.payload).toString('latin1');
        const done = this.#pings.get(key);
        if (!done) throw new CorralError('E_PROTOCOL', 'guest sent a PONG that answers no PING');
        this.#pings.delete(key);
        return done();
      }
      case FrameType.CONFIGURED: {
        const done = this.#configured.shift();
        if (!done) throw new CorralError('E_PROTOCOL', 'guest sent CONFIGURED unasked');
        return done();
      }
      case FrameType.ERROR:
        return this.#onError(f);
      case FrameType.SETUP_DONE: {
        const waiter = this.#setups.shift();
        if (!waiter) throw new CorralError('E_PROTOCOL', 'guest sent SETUP_DONE unasked');
        const r = new PayloadReader(f.payload, 'SETUP_DONE');
        const errno = r.i32();
        const index = r.u32();
        const message = r.str(4096);
        r.end();
        if (errno === 0) return waiter.resolve();
        return waiter.reject(new CorralError('E_AGENT', `guest setup failed at ${waiter.describe(index)}: ${message} (errno ${errno})`, { details: { errno, index } }));
      }
      case FrameType.FS_REPLY:
        return this.#onFsReply(f);
      case FrameType.PROBE_REPLY:
        return this.#onProbeReply(f);
      case FrameType.WATCH_EVENTS:
        return this.#onWatchEvents(f);
      case FrameType.WATCH_END:
        return this.#onWatchEnd(f);
    }
    const probe = this.#probes.get(f.session);
    if (probe && f.type === FrameType.STDOUT) {
      probe.sunk += f.payload.byteLength;
      return;
    }
    const live = this.#sessions.get(f.session);
    if (!live && this.#orphans.has(f.session)) {
      if (f.type === FrameType.EXIT) this.#orphans.delete(f.session);
      return;
    }
    if (!live) throw new CorralError('E_PROTOCOL', `guest sent frame type ${f.type} for session ${f.session}, which is not open`);
    switch (f.type) {
      case FrameType.STARTED: {
        if (live.started) throw new CorralError('E_PROTOCOL', `guest sent STARTED twice for session ${f.session}`);
        const r = new PayloadReader(f.payload, 'STARTED');
        const pid = r.i32();
        r.end();
        live.started = true;
        return live.handlers.started(pid);
      }
      case FrameType.STDOUT:
      case FrameType.STDERR:
        if (!live.started) throw new CorralError('E_PROTOCOL', `guest sent output before STARTED on session ${f.session}`);
        if (live.output) {
          live.output.received += f.payload.byteLength;
          const held = live.output.received - live.output.acked;
          if (held > OUTPUT_WINDOW + OUTPUT_DRAIN_ALLOWANCE) throw new CorralError('E_PROTOCOL', `guest sent ${held} unacknowledged output bytes on session ${f.session} (window ${OUTPUT_WINDOW})`);
        }
        return f.type === FrameType.STDOUT ? live.handlers.stdout(f.payload) : live.handlers.stderr(f.payload);
      case FrameType.EXIT: {
        if (!live.started) throw new CorralError('E_PROTOCOL', `guest sent EXIT before STARTED on session ${f.session}`);
        const r = new PayloadReader(f.payload, 'EXIT');
        const code = r.i32();
        const signal = r.i32();
        const flags = (this.#hello?.protocolVersion ?? 0) >= 3 ? r.u32() : 0;
        r.end();
        if (flags & ~ExitFlags.OOM_KILLED) throw new CorralError('E_PROTOCOL', `guest sent EXIT with unknown flags 0x${flags.toString(16)}`);
        this.#endSession(f.session, live);
        return live.handlers.exited(signal > 0 ? null : code, signal > 0 ? signal : null, { oomKilled: (flags & ExitFlags.OOM_KILLED) !== 0 });
      }
      case FrameType.STDIN_ACK: {
        const r = new PayloadReader(f.payload, 'STDIN_ACK');
        const n = r.u32();
        r.end();
        const c = live.credit;
        if (!c) throw new CorralError('E_PROTOCOL', `guest sent STDIN_ACK for session ${f.session}, which has no stdin flow control`);
        if (n === 0 || n > c.inFlight) throw new CorralError('E_PROTOCOL', `guest acknowledged ${n} stdin bytes of session ${f.session}, ${c.inFlight} are unacknowledged`);
        c.inFlight -= n;
        return this.#pumpStdin(f.session, c);
      }
      default:
        throw new CorralError('E_PROTOCOL', `guest sent frame type ${f.type}, which only the host may send`);
    }
  }

  #onHello(f: Frame): void {
    if (this.#hello) throw new CorralError('E_PROTOCOL', 'guest sent HELLO twice');
    const r = new PayloadReader(f.payload, 'HELLO');
    const protocolVersion = r.u32();
    const agentVersion = r.str(256);
    const bootMs = r.u32();
    const initMs = r.u32();
    r.end();
    if (protocolVersion < MIN_PROTOCOL_VERSION || protocolVersion > PROTOCOL_VERSION) {
      throw new CorralError('E_PROTOCOL', `guest agent speaks protocol ${protocolVersion}, host speaks ${MIN_PROTOCOL_VERSION}–${PROTOCOL_VERSION}`);
    }
    this.#hello = { protocolVersion, agentVersion, bootMs, initMs };
    this.#resolveReady(this.#hello);
  }

  #onFsReply(f: Frame): void {
    const waiters = this.#fs.get(f.session);
    // Left queued until handled: if the reply breaks the protocol, #fail rejects it too.
    const waiter = waiters?.[0];
    // A file opened before this VM's snapshot: its requester is gone.
    if (!waiters && this.#orphans.has(f.session)) return;
    if (!waiters || !waiter) throw new CorralError('E_PROTOCOL', `guest sent FS_REPLY for session ${f.session}, which has no request pending`);
    const r = new PayloadReader(f.payload, 'FS_REPLY');
    const errno = r.i32();
    if (errno < 0) throw new CorralError('E_PROTOCOL', `guest sent FS_REPLY with errno ${errno}`);
    if (errno !== 0) {
      const message = r.str(4096);
      r.end();
      this.#fs.delete(f.session);
      waiters.shift();
      const name = errnoName(errno);
      const err = new CorralError('E_FS', `${message} (${name})`, { details: { errno: name, errnoNumber: errno } });
      waiter.reject(err);
      // The agent closed the file: requests queued behind the failed one get no reply.
      for (const w of waiters.splice(0)) w.reject(err);
      return;
    }
    const value = waiter.decode(r);
    r.end();
    waiters.shift();
    if (waiter.last) this.#fs.delete(f.session);
    waiter.resolve(value);
  }

  #onWatchEvents(f: Frame): void {
    const live = this.#watches.get(f.session);
    if (!live && this.#orphans.has(f.session)) return; // a watch of the snapshot this guest was restored from
    if (!live) throw new CorralError('E_PROTOCOL', `guest sent WATCH_EVENTS for session ${f.session}, which is no live watch`);
    const r = new PayloadReader(f.payload, 'WATCH_EVENTS');
    const count = r.u32();
    if (!live.started) {
      // The first answer says the watch is in place, and nothing else.
      if (count !== 0) throw new CorralError('E_PROTOCOL', `guest sent ${count} watch records on session ${f.session} before saying the watch was in place`);
      r.end();
      live.started = true;
      return live.resolveStarted();
    }
    if (count === 0 || count > r.remaining / 16) throw new CorralError('E_PROTOCOL', `guest sent a WATCH_EVENTS of ${count} records in ${r.remaining} bytes`);
    const records: WatchRecord[] = [];
    for (let i = 0; i < count; i++) {
      const kind = WATCH_KINDS[r.u32()];
      const flags = r.u32();
      const path = r.str(WATCH_PATH_MAX);
      const to = r.str(WATCH_PATH_MAX);
      if (!kind || flags > 1) throw new CorralError('E_PROTOCOL', `guest sent a watch record of kind ${kind ?? 'unknown'} with flags ${flags}`);
      if (path.includes('\0') || to.includes('\0') || path.startsWith('/') || to.startsWith('/')) throw new CorralError('E_PROTOCOL', 'guest sent a watch record whose path is not relative');
      if ((kind === 'overflow') !== (path === '') || (kind === 'rename') !== (to !== '')) throw new CorralError('E_PROTOCOL', `guest sent a ${kind} watch record with path ${JSON.stringify(path)} and to ${JSON.stringify(to)}`);
      records.push({ kind, path, isDir: flags === 1, ...(kind === 'rename' ? { to } : {}) });
    }
    r.end();
    live.handlers.changes(records);
  }

  #onWatchEnd(f: Frame): void {
    const live = this.#watches.get(f.session);
    if (!live && this.#orphans.delete(f.session)) return;
    if (!live) throw new CorralError('E_PROTOCOL', `guest sent WATCH_END for session ${f.session}, which is no live watch`);
    const r = new PayloadReader(f.payload, 'WATCH_END');
    const errno = r.i32();
    const reason = WATCH_END_REASONS[r.u32()];
    const message = r.str(4096);
    r.end();
    if (!reason || errno < 0) throw new CorralError('E_PROTOCOL', `guest sent WATCH_END with reason ${reason ?? 'unknown'} and errno ${errno}`);
    this.#watches.delete(f.session);
    const error = errno === 0 ? undefined : new CorralError('E_FS', `${message} (${errnoName(errno)})`, { details: { errno: errnoName(errno), errnoNumber: errno } });
    if (!live.started) return live.rejectStarted(error ?? new CorralError('E_PROTOCOL', `guest ended watch ${f.session} (${reason}) before starting it`));
    live.handlers.ended(reason, error);
  }

  #onProbeReply(f: Frame): void {
    const w = this.#probes.get(f.session);
    if (!w) throw new CorralError('E_PROTOCOL', `guest sent PROBE_REPLY for session ${f.session}, which has no probe pending`);
    this.#probes.delete(f.session);
    const r = new PayloadReader(f.payload, 'PROBE_REPLY');
    const errno = r.i32();
    if (errno !== 0) {
      const message = r.str(4096);
      r.end();
      return w.reject(new CorralError('E_AGENT', `guest probe failed: ${message} (${errnoName(errno)})`, { details: { errno } }));
    }
    const value = w.decode(r);
    r.end();
    w.resolve(value);
  }

  #onError(f: Frame): void {
    const r = new PayloadReader(f.payload, 'ERROR');
    const errno = r.i32();
    const message = r.str(4096);
    r.end();
    if (f.session === 0) {
      // The agent complains about something the host sent: a host bug, never the guest's.
      throw new CorralError('E_AGENT', `guest agent rejected a request: ${message} (errno ${errno})`);
    }
    const live = this.#sessions.get(f.session);
    if (!live && this.#orphans.delete(f.session)) return;
    if (!live) throw new CorralError('E_PROTOCOL', `guest sent ERROR for session ${f.session}, which is not open`);
    this.#endSession(f.session, live);
    live.handlers.failed(new CorralError('E_EXEC_START', message, { details: { errno } }));
  }

  #fail(err: Error): void {
    if (this.#error) return;
    this.#error = err;
    this.#rejectReady(err);
    this.#resolveFailed(err);
    const sessions = [...this.#sessions];
    for (const [id, s] of sessions) this.#endSession(id, s);
    for (const [, s] of sessions) s.handlers.failed(err);
    const fs = [...this.#fs.values()].flat();
    this.#fs.clear();
    for (const w of fs) w.reject(err);
    const probes = [...this.#probes.values()];
    this.#probes.clear();
    for (const w of probes) w.reject(err);
    const watches = [...this.#watches.values()];
    this.#watches.clear();
    for (const w of watches) {
      if (w.started) w.handlers.ended('closed', err);
      else w.rejectStarted(err);
    }
    this.#socket.destroy();
  }
}
