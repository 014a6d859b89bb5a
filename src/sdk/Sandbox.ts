/**
 * The public handle on one sandbox.
 *
 * @example
 * await using sb = await Sandbox.builder('worker').memory(256).create();
 * const out = await sb.exec('sh', ['-c', 'echo hi']);
 */

import { filter, takeWhile, type Observable, type Subscription } from 'rxjs';
import { isExecEvent, type SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import type { SandboxController, SandboxInfo } from '../supervisor/Supervisor.ts';
import { Supervisor, type CreateOptions } from '../supervisor/Supervisor.ts';
import { ExecResult, ExecStream, routeExecEvent, type ExecOptions } from './exec.ts';
import { SandboxBuilder } from './SandboxBuilder.ts';

let defaultSupervisor: Supervisor | undefined;

/** The process-wide supervisor used when none is given. Created on first use. */
export function getDefaultSupervisor(): Supervisor {
  return (defaultSupervisor ??= new Supervisor());
}

/** Options of {@link Sandbox.stop}. */
export interface StopOptions {
  /** Graceful stop budget before escalating to kill. Default: the sandbox's stopTimeoutMs. */
  readonly timeoutMs?: number;
}

/** Options of {@link Sandbox.execStream}. */
export interface ExecStreamOptions extends Omit<ExecOptions, 'stdin'> {
  /** `'pipe'` keeps stdin open for {@link ExecStream.write}; a value is written then closed. */
  readonly stdin?: 'pipe' | string | Uint8Array;
}

const encoder = new TextEncoder();

export class Sandbox {
  readonly #ctl: SandboxController;
  #nextExecId = 1;
  #released = false;

  /** This sandbox's events, in order, until (and including) `sandbox.stopped`. */
  readonly events$: Observable<SandboxEvent>;

  private constructor(ctl: SandboxController) {
    this.#ctl = ctl;
    this.events$ = ctl.events$.pipe(takeWhile((e) => e.type !== 'sandbox.stopped', true));
  }

  /** Starts building a sandbox. */
  static builder(name: string): SandboxBuilder {
    return new SandboxBuilder(name, (config, opts) => Sandbox.create(config, opts));
  }

  /** Boots a sandbox from a config (as `builder.build()` returns it, or parsed from JSON). */
  static async create(config: SandboxConfig, options: CreateOptions & { supervisor?: Supervisor } = {}): Promise<Sandbox> {
    const sup = options.supervisor ?? getDefaultSupervisor();
    const ctl = await sup.create(config, options);
    return new Sandbox(ctl);
  }

  get name(): string {
    return this.#ctl.config.name;
  }

  /** The config the sandbox was created from. */
  get config(): SandboxConfig {
    return this.#ctl.config;
  }

  /** Current facts: status, state, pid, accel, boot timings, stop reason. */
  info(): Promise<SandboxInfo> {
    return this.#ctl.busy(() => this.#ctl.api.info());
  }

  /**
   * Runs a command to completion and collects its output.
   *
   * @example
   * const r = await sb.exec('sh', ['-c', 'echo hi; exit 3']); // r.code === 3, r.stdout === 'hi\n'
   */
  async exec(command: string, args: readonly string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    const stream = await this.#start([command, ...args], { ...options, stdin: options.stdin });
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
      return new ExecResult(stream.execId, x.code, x.signal, Buffer.concat(out), Buffer.concat(err), x.durationMs, x.timedOut);
    } finally {
      sub.unsubscribe();
    }
  }

  /** Runs a script with the sandbox's shell (`shell -c script`). */
  shell(script: string, options: ExecOptions = {}): Promise<ExecResult> {
    return this.exec(this.#ctl.config.shell, ['-c', script], options);
  }

  /**
   * Runs a command and streams what happens: `started`, `stdout`, `stderr`, `exited`.
   * Iterate it (`for await`) or subscribe to `items$`.
   */
  execStream(command: string, args: readonly string[] = [], options: ExecStreamOptions = {}): Promise<ExecStream> & AsyncIterable<import('./exec.ts').ExecStreamItem> {
    const p = this.#start([command, ...args], options);
    // Allow `for await (const x of sb.execStream(…))` without an extra await.
    return Object.assign(p, {
      async *[Symbol.asyncIterator]() {
        yield* await p;
      },
    });
  }

  /** Freezes the VM's CPUs. */
  pause(): Promise<void> {
    return this.#ctl.busy(() => this.#ctl.api.pause());
  }

  /** Thaws the VM's CPUs. */
  resume(): Promise<void> {
    return this.#ctl.busy(() => this.#ctl.api.resume());
  }

  /** Refuses new execs, lets running ones finish, then stops. */
  async drain(): Promise<SandboxInfo> {
    const info = await this.#ctl.busy(() => this.#ctl.api.drain());
    await this.#release();
    return info;
  }

  /** Graceful stop: the agent syncs and powers off; escalates to kill after the timeout. */
  async stop(options: StopOptions = {}): Promise<SandboxInfo> {
    if (this.#released) return this.#lastInfo();
    const info = await this.#ctl.busy(() => this.#ctl.api.stop(options.timeoutMs));
    await this.#release();
    return info;
  }

  /** Forceful stop: SIGKILL to the VM. */
  async kill(): Promise<SandboxInfo> {
    if (this.#released) return this.#lastInfo();
    const info = await this.#ctl.busy(() => this.#ctl.api.kill());
    await this.#release();
    return info;
  }

  /** Resolves when the sandbox stops on its own (or by another caller), without stopping it. */
  async wait(): Promise<SandboxInfo> {
    const info = await this.#ctl.busy(() => this.#ctl.api.stopped());
    await this.#release();
    return info;
  }

  /** Raw agent round trip (PING/PONG), ms. For benchmarks. */
  ping(bytes = 64): Promise<number> {
    return this.#ctl.busy(() => this.#ctl.api.ping(bytes));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async #lastInfo(): Promise<SandboxInfo> {
    const rec = this.#ctl.supervisor.store.getSandbox(this.name);
    return {
      name: this.name,
      status: 'stopped',
      state: 'stopped',
      pid: null,
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

  async #release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await this.#ctl.supervisor.release(this.#ctl);
  }

  async #start(argv: string[], options: ExecStreamOptions): Promise<ExecStream> {
    if (this.#released) throw new CorralError('E_ILLEGAL_STATE', `cannot exec in sandbox "${this.name}": it is stopped`);
    for (const a of argv) if (typeof a !== 'string') throw new TypeError(`exec arguments must be strings (got ${typeof a})`);
    if (options.timeoutMs !== undefined && (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0)) {
      throw new CorralError('E_INVALID_OPTION', `invalid option timeoutMs: a positive number of ms (got ${options.timeoutMs})`);
    }
    options.signal?.throwIfAborted();
    const ctl = this.#ctl;
    const execId = this.#nextExecId++;
    const stdin = options.stdin;
    const pipe = stdin !== undefined;
    const control = {
      write: async (data: string | Uint8Array) => ctl.api.writeStdin(execId, typeof data === 'string' ? encoder.encode(data) : data),
      end: async () => ctl.api.closeStdin(execId),
      kill: async (signo = 9) => ctl.api.signalExec(execId, signo),
    };
    const stream = new ExecStream(execId, control);
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    let sub: Subscription | undefined;
    const onAbort = () => {
      void control.kill(9).catch(() => {});
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
    stream.exited.finally(() => stoppedSub.unsubscribe()).catch(() => {});

    // Keep the process alive while the exec runs.
    void ctl.busy(() => stream.exited).catch(() => {});
    try {
      await ctl.api.exec(execId, {
        argv,
        ...(options.env ? { env: options.env } : {}),
        ...(options.cwd ? { cwd: options.cwd } : {}),
        stdin: pipe,
        mergeStderr: options.mergeStderr ?? false,
      });
    } catch (err) {
      finish();
      stoppedSub.unsubscribe();
      stream.fail(err as Error);
      throw err;
    }
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        void control.kill(9).catch(() => {});
      }, options.timeoutMs);
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (pipe && stdin !== 'pipe') {
      const bytes = typeof stdin === 'string' ? encoder.encode(stdin) : stdin;
      await control.write(bytes).catch(() => {});
      await control.end().catch(() => {});
    }
    return stream;
  }
}
