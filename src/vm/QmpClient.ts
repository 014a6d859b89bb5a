/**
 * A small client of qemu's QMP (JSON over a stream socket): the capabilities handshake,
 * commands matched to replies by id, and asynchronous events.
 */

import type { Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { CorralError } from '../errors.ts';

/** An asynchronous QMP event (`STOP`, `RESUME`, `SHUTDOWN`…). */
export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  command: string;
}

/** Longest QMP line accepted: qemu's own replies are far smaller. */
const MAX_LINE = 4 * 1024 * 1024;

/**
 * @example
 * const qmp = new QmpClient(socket);
 * await qmp.ready;
 * await qmp.execute('stop');
 */
export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #buf = '';
  #error: Error | undefined;
  /** Resolves after the greeting and `qmp_capabilities`. */
  readonly ready: Promise<void>;

  constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding('utf8');
    let greeted!: () => void;
    const greeting = new Promise<void>((res) => (greeted = res));
    socket.on('data', (s: string) => this.#onData(s, greeted));
    socket.on('error', (e) => this.#fail(new CorralError('E_QMP', `QMP socket error: ${e.message}`, { cause: e })));
    socket.on('close', () => {
      this.#fail(new CorralError('E_QMP', 'QMP connection closed'));
      this.emit('close');
    });
    this.ready = (async () => {
      const failure = this.#failure();
      failure.catch(() => {}); // it settles later, when the connection closes
      await Promise.race([greeting, failure]);
      await this.execute('qmp_capabilities');
    })();
    this.ready.catch(() => {}); // marked handled only: whoever awaits it gets the rejection; one nobody awaits yet must not crash the process
  }

  /** Runs one command; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#error) return Promise.reject(this.#error);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.#socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /** Closes the socket; pending commands reject. Idempotent. */
  close(): void {
    this.#fail(new CorralError('E_CLOSED', 'QMP client closed'));
  }

  #failure(): Promise<never> {
    return new Promise((_, rej) => {
      if (this.#error) rej(this.#error);
      else this.once('close', () => rej(this.#error ?? new CorralError('E_QMP', 'QMP connection closed')));
    });
  }

  #onData(chunk: string, greeted: () => void): void {
    this.#buf += chunk;
    if (this.#buf.length > MAX_LINE) return this.#fail(new CorralError('E_QMP', 'QMP line too long'));
    let nl: number;
    while ((nl = this.#buf.indexOf('\n')) >= 0) {
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch (err) {
        return this.#fail(new CorralError('E_QMP', `QMP sent invalid JSON: ${line.slice(0, 100)}`, { cause: err }));
      }
      if ('QMP' in msg) greeted();
      else if ('event' in msg) this.emit('event', msg as unknown as QmpEvent);
      else if (typeof msg.id === 'number') {
        const p = this.#pending.get(msg.id);
        if (!p) continue;
        this.#pending.delete(msg.id);
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(new CorralError('E_QMP', `QMP ${p.command} failed: ${e.desc ?? 'unknown error'}`, { details: { class: e.class } }));
        } else p.resolve(msg.return);
      }
    }
  }

  #fail(err: Error): void {
    if (this.#error) return;
    this.#error = err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#socket.destroy();
  }
}
