/**
 * Exec results and streams, assembled in the caller's thread from the sandbox's events.
 */

import { Writable } from 'node:stream';
import { Observable, Subject } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import { CorralError, deserializeError } from '../errors.ts';
import { ttyOption } from './execOptions.ts';
import { logFailure } from '../runtime/log.ts';
import { validateCallOptions } from '../runtime/callOptions.ts';

export type { ExecOptions } from './execOptions.ts';

/** How long {@link ExecStream.close} waits for the command to exit before killing it. */
const CLOSE_GRACE_MS = 10_000;

/** How a command ended, with its collected output. */
export class ExecResult {
  constructor(
    readonly execId: number,
    /** Exit code; null when a signal ended it. */
    readonly code: number | null,
    /** Signal number that ended it, if any. */
    readonly signal: number | null,
    readonly stdoutBytes: Uint8Array,
    readonly stderrBytes: Uint8Array,
    readonly durationMs: number,
    /** True when `timeoutMs` ran out and corral killed it. */
    readonly timedOut: boolean,
    /** True when the guest kernel's OOM killer killed a process of it. */
    readonly oomKilled = false,
  ) {}

  /** stdout decoded as UTF-8. */
  get stdout(): string {
    return Buffer.from(this.stdoutBytes.buffer, this.stdoutBytes.byteOffset, this.stdoutBytes.length).toString('utf8');
  }

  /** stderr decoded as UTF-8. */
  get stderr(): string {
    return Buffer.from(this.stderrBytes.buffer, this.stderrBytes.byteOffset, this.stderrBytes.length).toString('utf8');
  }

  /** Exit code 0. */
  get ok(): boolean {
    return this.code === 0;
  }

  /** Why it ended, in words. */
  get reason(): 'exited' | 'signaled' | 'timeout' | 'oom' {
    return this.timedOut ? 'timeout' : this.oomKilled ? 'oom' : this.signal !== null ? 'signaled' : 'exited';
  }

  toJSON() {
    return { execId: this.execId, code: this.code, signal: this.signal, stdout: this.stdout, stderr: this.stderr, durationMs: this.durationMs, reason: this.reason };
  }
}

/** Items an exec stream yields. */
export type ExecStreamItem =
  | { readonly type: 'started'; readonly pid: number }
  | { readonly type: 'stdout'; readonly data: Uint8Array }
  | { readonly type: 'stderr'; readonly data: Uint8Array }
  | {
      readonly type: 'exited';
      readonly code: number | null;
      readonly signal: number | null;
      readonly durationMs: number;
      readonly timedOut: boolean;
      /** The guest kernel's OOM killer killed a process of the exec. */
      readonly oomKilled: boolean;
    };

/** Control of a running exec. */
export interface ExecControl {
  write(data: string | Uint8Array): Promise<void>;
  end(): Promise<void>;
  kill(signo?: number): Promise<void>;
  resize(cols: number, rows: number): Promise<void>;
  /**
   * `bytes` of output were consumed (the stream was opened with output credit): the guest
   * may send that many more. Failures are the stream's to log, never the consumer's.
   */
  ack?(bytes: number): Promise<void>;
  /**
   * The output can be read again from the sandbox's replay buffer (a background command's,
   * or one attached to): a stream awaited only for its exit may drop it.
   */
  readonly replayable?: boolean;
}

/**
 * Consumed output is acknowledged to the guest in steps of this many bytes: far below its
 * 2 MiB window, so a consumer that keeps reading never waits for an acknowledgement.
 */
const ACK_STEP = 256 * 1024;

/**
 * Unread output past which a stream whose `exited` was awaited while nobody consumed it
 * discards its output: below the guest's 2 MiB window, so the command is never held waiting
 * for a reader that will not come.
 */
const DISCARD_AT = 1024 * 1024;

/**
 * A running command as both an AsyncIterable and an Observable of {@link ExecStreamItem}s.
 *
 * @example
 * for await (const item of sb.execStream('seq', ['1', '3'])) if (item.type === 'stdout') process.stdout.write(item.data);
 */
export class ExecStream implements AsyncIterable<ExecStreamItem> {
  readonly #subject = new Subject<ExecStreamItem>();
  readonly #queue: ExecStreamItem[] = [];
  #waiter: (() => void) | undefined;
  #error: Error | undefined;
  #done = false;
  #closing: Promise<Extract<ExecStreamItem, { type: 'exited' }>> | undefined;
  /**
   * Whoever consumes first decides: the iterator drains the queue, or items$ replays it once;
   * 'discarding': `exited` was awaited while nobody read, and the output goes unread.
   */
  #mode: 'unset' | 'iterator' | 'observable' | 'discarding' = 'unset';
  /** Output bytes consumed and not yet acknowledged to the guest. */
  #unacked = 0;
  /** Output bytes queued while nobody consumes (mode 'unset'). */
  #queuedBytes = 0;
  /** The caller asked for {@link exited}. */
  #exitAwaited = false;
  readonly #exited: Promise<Extract<ExecStreamItem, { type: 'exited' }>>;
  /** Connects a stream whose items come from the replay buffer, on its first use. */
  #onFirstUse: (() => () => void) | undefined;
  /** Lets go of that connection (the command runs on). */
  #disconnect: (() => void) | undefined;
  /**
   * The seq of the last event of this exec that the stream took in: `sandbox.attach(id, {
   * since: stream.lastSeq })` reads on from there (a background command's output is kept,
   * bounded by the sandbox's replay buffer).
   */
  lastSeq = 0;
  #resolveExit!: (x: Extract<ExecStreamItem, { type: 'exited' }>) => void;
  #rejectExit!: (e: Error) => void;

  constructor(
    readonly execId: number,
    readonly control: ExecControl,
  ) {
    this.#exited = new Promise((res, rej) => {
      this.#resolveExit = res;
      this.#rejectExit = rej;
    });
    this.#exited.catch(() => {}); // marked handled only: whoever awaits it gets the rejection; one nobody awaits yet must not crash the process
  }

  /**
   * Resolves with the exit (no output collected); rejects if the exec could not run.
   *
   * Output is flow-controlled: a stream nobody iterates or subscribes to holds its command in
   * the guest once 2 MiB are unread, as an unread pipe would. So that awaiting only `exited`
   * always settles, a stream whose `exited` was asked for while nobody read it, and that
   * then has 1 MiB unread, discards its output (with a warning) and lets the command run
   * to its end; iterating it or subscribing to `items$` afterwards is E_ILLEGAL_STATE. To
   * get the output, read the stream before or while awaiting this, or use `exec()`.
   */
  get exited(): Promise<Extract<ExecStreamItem, { type: 'exited' }>> {
    this.#use();
    this.#exitAwaited = true;
    this.#discardIfUnread();
    return this.#exited;
  }

  /** @internal The exit, for the SDK's own bookkeeping: unlike {@link exited} it is no caller's wait. */
  get ended(): Promise<Extract<ExecStreamItem, { type: 'exited' }>> {
    return this.#exited;
  }

  /**
   * Every item, as an Observable. The first subscriber also gets what arrived before it
   * subscribed; later subscribers see items from their subscription on.
   */
  /** The exec's id: what `sandbox.attach(id)` takes to reconnect to it, from this or any process. */
  get id(): number {
    return this.execId;
  }

  /** @internal `connect` runs on the stream's first use (iteration, items$, exited); it returns how to let go. */
  connectOnUse(connect: () => () => void): void {
    this.#onFirstUse = connect;
  }

  #use(): void {
    const connect = this.#onFirstUse;
    this.#onFirstUse = undefined;
    if (connect) this.#disconnect = connect();
  }

  /**
   * Stops reading a background command (or one attached to) without ending it: this handle
   * ends (`exited` rejects with E_CLOSED), the command runs on, and `sandbox.attach(id, {
   * since: lastSeq })` reads on from here. A reader that breaks out of its loop does this.
   */
  disconnect(): void {
    if (!this.control.replayable || this.#done) return;
    this.#onFirstUse = undefined;
    this.#disconnect?.();
    this.fail(new CorralError('E_CLOSED', `disconnected from exec ${this.execId} (it runs on: attach to it again by id)`));
  }

  get items$(): Observable<ExecStreamItem> {
    return new Observable<ExecStreamItem>((subscriber) => {
      this.#use();
      if (this.#mode === 'iterator') throw new CorralError('E_ILLEGAL_STATE', 'this exec stream is already being iterated');
      if (this.#mode === 'discarding') throw new CorralError('E_ILLEGAL_STATE', DISCARDED);
      if (this.#mode === 'unset') {
        this.#mode = 'observable';
        const backlog = this.#queue.splice(0);
        for (const item of backlog) {
          subscriber.next(item);
          this.#consumed(item);
        }
        if (this.#error) return subscriber.error(this.#error);
        if (this.#done) return subscriber.complete();
      }
      return this.#subject.subscribe(subscriber);
    });
  }

  /**
   * Sends stdin (only if the stream was opened with `stdin: 'pipe'`). Resolves once the
   * guest has room for the bytes: awaiting each write keeps at most a fixed window in flight.
   */
  write(data: string | Uint8Array): Promise<void> {
    return this.control.write(data);
  }

  /**
   * The command's stdin as a Node Writable (`stdin: 'pipe'`) with back-pressure: `pipeline(src, stream.stdinWritable())`.
   * Ending it closes the command's stdin.
   */
  stdinWritable(): Writable {
    return new Writable({
      write: (chunk: Uint8Array, _enc, cb) => void this.write(chunk).then(() => cb(), cb),
      final: (cb) => void this.end().then(() => cb(), cb),
    });
  }

  /** Closes stdin. */
  end(): Promise<void> {
    return this.control.end();
  }

  /** Signals the command's process group (default SIGKILL). */
  kill(signo = 9): Promise<void> {
    return this.control.kill(signo);
  }

  /**
   * Graceful end: closes stdin and waits for the command to exit; one still running after
   * `timeoutMs` (default 10 s) is killed. Resolves with its exit; idempotent.
   *
   * @example
   * await using stream = await sb.execStream('cat', [], { stdin: 'pipe' }); // closed at scope end
   */
  close(options: { timeoutMs?: number } = {}): Promise<Extract<ExecStreamItem, { type: 'exited' }>> {
    validateCallOptions(options);
    if (this.#done) return this.#exited;
    this.#closing ??= (async () => {
      await this.end().catch(logFailure(`closing the stdin of exec ${this.execId}`));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), options.timeoutMs ?? CLOSE_GRACE_MS)));
      try {
        if ((await Promise.race([this.#exited, late])) === 'late') await this.#killUnlessDone();
      } finally {
        clearTimeout(timer);
      }
      return this.#exited;
    })();
    return this.#closing;
  }

  /** Forceful end: SIGKILL to the command's process group. Resolves with its exit; idempotent. */
  async destroy(): Promise<Extract<ExecStreamItem, { type: 'exited' }>> {
    await this.#killUnlessDone();
    return this.#exited;
  }

  /** A kill that fails because the command exited meanwhile is no failure. */
  async #killUnlessDone(): Promise<void> {
    if (this.#done) return;
    try {
      await this.kill();
    } catch (err) {
      if (!this.#done) throw err;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Sets the terminal size of a `tty` exec; its processes get SIGWINCH. */
  resize(cols: number, rows: number): Promise<void> {
    ttyOption({ cols, rows });
    return this.control.resize(cols, rows);
  }

  /** @internal fed by the Sandbox from the event stream. */
  push(item: ExecStreamItem): void {
    if (this.#done) return;
    if (this.#mode === 'observable') {
      this.#subject.next(item);
      this.#consumed(item);
    } else if (this.#mode === 'discarding') {
      this.#consumed(item);
    } else {
      this.#queue.push(item);
      if (this.#mode === 'unset' && (item.type === 'stdout' || item.type === 'stderr')) {
        this.#queuedBytes += item.data.byteLength;
        this.#discardIfUnread();
      }
    }
    if (item.type === 'exited') {
      this.#done = true;
      this.#resolveExit(item);
      this.#subject.complete();
    }
    this.#wake();
  }

  /** @internal */
  fail(err: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = err;
    this.#rejectExit(err);
    this.#subject.error(err);
    this.#wake();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ExecStreamItem> {
    this.#use();
    if (this.#mode === 'discarding') throw new CorralError('E_ILLEGAL_STATE', DISCARDED);
    if (this.#mode !== 'unset') throw new CorralError('E_ILLEGAL_STATE', 'an exec stream can be consumed once (iterate it, or subscribe to items$)');
    this.#mode = 'iterator';
    try {
      for (;;) {
        const item = this.#queue.shift();
        if (item) {
          this.#consumed(item);
          yield item;
          if (item.type === 'exited') return;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.#done) return;
        await new Promise<void>((r) => (this.#waiter = r));
      }
    } finally {
      // A consumer that stops early (break) does not want the command any more; a background
      // command (or an attached one) runs on for whoever attaches next.
      if (!this.#done && this.control.replayable) this.disconnect();
      else if (!this.#done) await this.kill().catch(logFailure(`killing exec ${this.execId} after its consumer stopped`));
    }
  }

  /**
   * Output handed to the consumer: given back to the guest in {@link ACK_STEP}s. A stream
   * nobody consumes gives nothing back, so its command stops at the window instead of this
   * process buffering what it prints.
   */
  #consumed(item: ExecStreamItem): void {
    if (!this.control.ack || (item.type !== 'stdout' && item.type !== 'stderr')) return;
    this.#unacked += item.data.byteLength;
    if (this.#unacked < ACK_STEP || this.#done) return;
    const n = this.#unacked;
    this.#unacked = 0;
    void this.control.ack(n).catch(logFailure(`acknowledging the output of exec ${this.execId}`));
  }

  /**
   * `exited` was asked for, nobody reads and the unread output nears the window: the command
   * would wait for a reader forever, so its output is given back and goes unread instead.
   */
  #discardIfUnread(): void {
    if (!this.#exitAwaited || this.#mode !== 'unset' || this.#queuedBytes < DISCARD_AT || !(this.control.ack || this.control.replayable)) return;
    this.#mode = 'discarding';
    for (const item of this.#queue.splice(0)) this.#consumed(item);
    process.emitWarning(`corral: exec ${this.execId}: its exited was awaited while nobody read its output; discarding the output (${this.#queuedBytes} bytes so far) so that the command can finish. Read the stream, or use exec(), to keep it`);
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }
}

const DISCARDED = "this exec stream's output was discarded: its exited was awaited while nobody read it";

/** Feeds one exec's events into a stream. Returns true once the exec is finished. */
export function routeExecEvent(stream: ExecStream, e: SandboxEvent, timedOut: () => boolean): boolean {
  switch (e.type) {
    case 'exec.started':
      stream.push({ type: 'started', pid: e.pid });
      return false;
    case 'exec.stdout':
      stream.push({ type: 'stdout', data: e.data });
      return false;
    case 'exec.stderr':
      stream.push({ type: 'stderr', data: e.data });
      return false;
    case 'exec.exited':
      stream.push({ type: 'exited', code: e.code, signal: e.signal, durationMs: e.durationMs, timedOut: timedOut(), oomKilled: e.oomKilled ?? false });
      return true;
    case 'exec.failed':
      stream.fail(deserializeError(e.error));
      return true;
    default:
      return false;
  }
}
