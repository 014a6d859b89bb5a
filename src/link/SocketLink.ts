/**
 * A link to a detached sandbox: the same API as an attached one, carried over the control
 * socket of the sandbox's host process.
 */

import { connect, type Socket } from 'node:net';
import { Subject, type Observable } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError, deserializeError } from '../errors.ts';
import type { SandboxApi, SandboxLink } from './SandboxLink.ts';
import { holding } from '../runtime/hold.ts';
import { logFailure } from '../runtime/log.ts';
import { FORWARDED_CALLS, LineSplitter, fromWire, toWire, type WireMessage } from './wire.ts';

const METHODS = ['start', ...FORWARDED_CALLS] as const;

/**
 * @example
 * const link = await SocketLink.connect(config, '/state/run/worker.sock');
 * await link.api.info();
 */
export class SocketLink implements SandboxLink {
  readonly detached = true;
  readonly api: SandboxApi;
  readonly events$: Observable<SandboxEvent>;
  readonly #socket: Socket;
  readonly #events = new Subject<SandboxEvent>();
  readonly #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  #nextId = 1;
  #busy = 0;
  #closed: Error | undefined;
  readonly #gone: Promise<void>;
  #onGone!: () => void;

  private constructor(
    readonly config: SandboxConfig,
    socket: Socket,
  ) {
    this.#socket = socket;
    this.events$ = this.#events.asObservable();
    this.#gone = new Promise<void>((resolve) => (this.#onGone = resolve));
    const lines = new LineSplitter();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      try {
        for (const line of lines.push(chunk)) this.#onMessage(fromWire(JSON.parse(line)) as WireMessage);
      } catch (err) {
        this.#close(new CorralError('E_PROTOCOL', `bad message from the sandbox host: ${(err as Error).message}`, { cause: err }));
      }
    });
    socket.on('error', (err) => this.#close(new CorralError('E_CLOSED', `sandbox host connection failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.#close(new CorralError('E_CLOSED', `sandbox host of "${config.name}" closed the connection`)));
    const api: Record<string, (...args: unknown[]) => Promise<unknown>> = {};
    for (const m of METHODS) api[m] = (...args: unknown[]) => this.#call(m, args);
    this.api = api as unknown as SandboxApi;
  }

  /** Connects and subscribes to the sandbox's events. */
  static async connect(config: SandboxConfig, path: string, options: { timeoutMs?: number } = {}): Promise<SocketLink> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new CorralError('E_TIMEOUT', `no answer from the sandbox host at ${path}`)), options.timeoutMs ?? 5000);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new CorralError('E_CLOSED', `cannot reach the host of sandbox "${config.name}" at ${path}: ${err.message}`, { cause: err }));
      });
    });
    const link = new SocketLink(config, socket);
    socket.unref();
    await link.busy(() => link.#call('subscribe', []));
    return link;
  }

  async busy<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#busy++ === 0) this.#socket.ref();
    try {
      return await holding(fn);
    } finally {
      if (--this.#busy === 0) this.#socket.unref();
    }
  }

  /**
   * Resolves once the host closed this connection (it does when its sandbox stopped, right
   * before it removes its control socket); E_TIMEOUT after `timeoutMs`.
   */
  hostGone(timeoutMs: number): Promise<void> {
    return holding(async () => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new CorralError('E_TIMEOUT', `the host of sandbox "${this.config.name}" did not let go of its socket within ${timeoutMs} ms of its stop`)), timeoutMs);
      });
      try {
        await Promise.race([this.#gone, late]);
      } finally {
        clearTimeout(timer);
      }
    });
  }

  /**
   * Lets go of a sandbox that stopped: resolves once its host process let go of this
   * connection, which it does only as it exits, so that stop(), kill(), drain() and wait()
   * of a detached sandbox resolve with no host process of it left (bounded by the
   * sandbox's stopTimeoutMs; past that the connection is closed from here, and logged).
   */
  async release(): Promise<void> {
    if (!this.#closed) await this.hostGone(this.config.stopTimeoutMs).catch(logFailure(`waiting for the host of "${this.config.name}" to exit`));
    this.#close(new CorralError('E_CLOSED', 'released'));
  }

  async detach(): Promise<void> {
    this.#close(new CorralError('E_CLOSED', 'detached'));
  }

  #call(method: string, args: unknown[]): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closed);
    const id = this.#nextId++;
    return this.busy(
      () =>
        new Promise((resolve, reject) => {
          this.#pending.set(id, { resolve, reject });
          this.#socket.write(`${JSON.stringify(toWire({ id, method, args }))}\n`);
        }),
    );
  }

  #onMessage(msg: WireMessage): void {
    if ('event' in msg) return this.#events.next(msg.event);
    const p = this.#pending.get(msg.id);
    if (!p) return;
    this.#pending.delete(msg.id);
    if ('error' in msg) p.reject(deserializeError(msg.error));
    else p.resolve(msg.result);
  }

  #close(err: Error): void {
    if (this.#closed) return;
    this.#closed = err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#events.complete();
    this.#socket.destroy();
    this.#onGone();
  }
}
