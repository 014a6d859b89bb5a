/**
 * The runtime's own log: one line per event worth a human's attention, on stderr of the
 * process hosting the sandbox, filtered by the sandbox's `logLevel`.
 */

import type { LogLevel } from '../config.ts';

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };

/** A logger bound to one sandbox. */
export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  trace(msg: string): void;
}

/**
 * @example
 * const log = createLogger('worker', 'debug'); log.debug('qemu spawned');
 */
export function createLogger(name: string, level: LogLevel, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const max = RANK[level];
  const at = (l: LogLevel) => (msg: string) => {
    if (RANK[l] <= max) write(`${new Date().toISOString()} corral[${name}] ${l}: ${msg}\n`);
  };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), trace: at('trace') };
}

const ENV_LEVEL = process.env.CORRAL_LOG_LEVEL as LogLevel | undefined;

/**
 * The process's own log, for failures that belong to no one sandbox's logger (a store write
 * of the supervisor, a cleanup of a host resource). Level from CORRAL_LOG_LEVEL, default warn.
 */
export const runtimeLog: Logger = createLogger('runtime', ENV_LEVEL && ENV_LEVEL in RANK ? ENV_LEVEL : 'warn');

/**
 * A rejection handler for a failure that must not fail its caller but must be seen: logs
 * "`what` failed: message" at warn.
 *
 * @example
 * void store.patchSandbox(name, patch).catch(logFailure(`recording the state of ${name}`));
 */
export function logFailure(what: string, log: Logger = runtimeLog): (err: unknown) => void {
  return (err) => log.warn(`${what} failed: ${err instanceof Error ? err.message : String(err)}`);
}
