/**
 * Validation of an exec's command and options, before anything reaches the sandbox: a bad
 * value fails with E_INVALID_OPTION naming the option, not later in the guest.
 */

import { validateAbsolutePath, validateEnv } from '../config.ts';
import { CorralError, InvalidOptionError } from '../errors.ts';
import type { StdinSource } from './execStdin.ts';

/** Options of one exec. */
export interface ExecOptions {
  /** Extra environment, merged over the sandbox's. */
  readonly env?: Readonly<Record<string, string>>;
  /** Working directory; default the sandbox's workdir. */
  readonly cwd?: string;
  /**
   * Bytes or text to feed the command's stdin, then EOF; or a stream (a Node Readable, any
   * async iterable of chunks), read only as fast as the command takes it.
   */
  readonly stdin?: string | Uint8Array | StdinSource;
  /** Send stderr into stdout. */
  readonly mergeStderr?: boolean;
  /** Kill the command's whole process group after this long; the result says `timedOut`. */
  readonly timeoutMs?: number;
  /** Abort: kills the command and rejects with E_ABORTED. */
  readonly signal?: AbortSignal;
  /**
   * Run on a pseudo-terminal (`true`: 80×24): stdout carries the terminal's output (stderr
   * included), `stream.resize()` changes its size.
   */
  readonly tty?: boolean | { readonly cols: number; readonly rows: number };
  /** Run as `name`, `uid`, `name:group` or `uid:gid` (from the guest's /etc/passwd, /etc/group). Default: the image's user, else root. */
  readonly user?: string;
}

/** Most arguments of one exec (the guest agent's own bound is 4096). */
const MAX_ARGS = 4096;
/** Most bytes of one argument. */
const MAX_ARG_BYTES = 128 * 1024;

/**
 * Throws an InvalidOptionError naming the first bad field of an exec request. `argv` is null
 * for the image's own command (`run()`), which the sandbox resolves from the image config.
 *
 * @example
 * validateExec(['ls', '-l'], { cwd: '/app', timeoutMs: 5000 });
 */
export function validateExec(argv: readonly unknown[] | null, options: ExecOptions & { readonly stdin?: unknown }): void {
  if (argv !== null) validateArgv(argv);
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError('exec options', 'an object', options);
  if (options.env !== undefined) validateEnv(options.env, 'exec env');
  if (options.cwd !== undefined) validateAbsolutePath(options.cwd, 'cwd');
  if (options.timeoutMs !== undefined && (typeof options.timeoutMs !== 'number' || !Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0)) {
    throw new InvalidOptionError('timeoutMs', 'a positive number of ms', options.timeoutMs);
  }
  // stdin (data, 'pipe' or a stream) is checked by stdinOption (execStdin.ts).
  if (options.mergeStderr !== undefined && typeof options.mergeStderr !== 'boolean') throw new InvalidOptionError('mergeStderr', 'true or false', options.mergeStderr);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) throw new InvalidOptionError('signal', 'an AbortSignal', options.signal);
}

function validateArgv(argv: readonly unknown[]): void {
  if (typeof argv[0] !== 'string' || argv[0].length === 0 || argv[0].includes('\0')) {
    throw new InvalidOptionError('command', 'a non-empty string without NUL bytes', argv[0]);
  }
  if (argv.length > MAX_ARGS) throw new InvalidOptionError('args', `at most ${MAX_ARGS - 1} arguments`, argv.length - 1);
  argv.forEach((a, i) => {
    if (i > 0 && (typeof a !== 'string' || a.includes('\0') || Buffer.byteLength(a) > MAX_ARG_BYTES)) {
      throw new InvalidOptionError(`args[${i - 1}]`, `a string without NUL bytes, at most ${MAX_ARG_BYTES} bytes`, a);
    }
  });
}

/** The terminal size an exec's `tty` option asks for, or undefined; throws E_INVALID_OPTION on a bad one. */
export function ttyOption(tty: ExecOptions['tty']): { cols: number; rows: number } | undefined {
  if (tty === undefined || tty === false) return undefined;
  if (tty === true) return { cols: 80, rows: 24 };
  const ok = (v: unknown) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;
  if (typeof tty !== 'object' || tty === null || !ok(tty.cols) || !ok(tty.rows)) {
    throw new CorralError('E_INVALID_OPTION', `invalid option tty: true, false or { cols, rows } with integers from 1 to 65535 (got ${JSON.stringify(tty)})`, { details: { option: 'tty' } });
  }
  return { cols: tty.cols, rows: tty.rows };
}

/** Checks an exec's `user` option. */
export function userOption(user: unknown): string | undefined {
  if (user === undefined) return undefined;
  if (typeof user !== 'string' || !/^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63})?$/.test(user)) {
    throw new CorralError('E_INVALID_OPTION', `invalid option user: "name", "uid", "name:group" or "uid:gid" (got ${JSON.stringify(user)})`, { details: { option: 'user' } });
  }
  return user;
}
