/**
 * Stdin of an exec fed from a stream: each chunk is written once the guest agent has room
 * for it (protocol 4 flow control), so a slow command slows the source down instead of the
 * host buffering what the command has not read yet.
 */

import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';

/** A stream of stdin chunks: a Node Readable, a web ReadableStream, an async generator. */
export type StdinSource = AsyncIterable<Uint8Array | string>;

/** True for a stream source (not text, bytes or `'pipe'`). */
export function isStdinSource(v: unknown): v is StdinSource {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && typeof (v as StdinSource)[Symbol.asyncIterator] === 'function';
}

/** Checks an exec's `stdin` option; throws E_INVALID_OPTION naming the allowed values. */
export function stdinOption(v: unknown, allowPipe: boolean): void {
  if (v === undefined || typeof v === 'string' || v instanceof Uint8Array || isStdinSource(v)) return;
  throw new CorralError('E_INVALID_OPTION', `invalid option stdin: ${allowPipe ? "'pipe', " : ''}a string, a Uint8Array or an async iterable of them (got ${typeof v})`, { details: { option: 'stdin' } });
}

/** The side of an exec stream that feedStdin() writes to (an ExecStream). */
export interface StdinSink {
  readonly execId: number;
  /** The exec's end (ExecStream.ended: the SDK's own wait, not a caller's). */
  readonly ended: Promise<unknown>;
  write(data: string | Uint8Array): Promise<void>;
  end(): Promise<void>;
  kill(signo?: number): Promise<void>;
  fail(err: Error): void;
}

/**
 * Copies `source` into the exec's stdin, then closes it. Stops reading once the exec ended.
 * A source that fails kills the exec, whose stream then fails with E_ABORTED (cause: the
 * source's error).
 *
 * @example
 * void feedStdin(stream, createReadStream('big.bin'));
 */
export async function feedStdin(stream: StdinSink, source: StdinSource): Promise<void> {
  let finished = false;
  const it = source[Symbol.asyncIterator]();
  const stop = () => {
    finished = true;
    // Lets go of a source that waits for input nobody will read now (a Readable is destroyed).
    void it.return?.()?.catch(logFailure(`ending the stdin source of exec ${stream.execId}`));
  };
  stream.ended.then(stop, stop);
  for (;;) {
    let next: IteratorResult<Uint8Array | string>;
    try {
      next = await it.next();
    } catch (err) {
      if (finished) return;
      await stream.kill(9).catch(logFailure(`killing exec ${stream.execId} after its stdin failed`));
      stream.fail(new CorralError('E_ABORTED', `exec ${stream.execId} aborted: its stdin stream failed: ${(err as Error)?.message ?? err}`, { cause: err }));
      return;
    }
    if (next.done || finished) break;
    // A write that fails means the exec is gone: its own end says why.
    if (!(await stream.write(next.value).then(() => true, () => false))) return;
  }
  // An end that fails means the exec is gone: its own end says why.
  if (!finished) await stream.end().catch(() => {});
}
