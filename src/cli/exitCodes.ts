/**
 * The exit codes of the `corral` CLI: stable, so scripts can branch on them.
 *
 * | code | meaning |
 * |---|---|
 * | 0 | success |
 * | 1 | any other error (the message, and with `--json` its `code`, say which) |
 * | 2 | usage: unknown command or option, missing argument (`E_USAGE`, `E_INVALID_OPTION`) |
 * | 3 | not found: no such sandbox, image, volume, running command or snapshot (`E_SANDBOX_NOT_FOUND`, `E_IMAGE_NOT_FOUND`, `E_IMAGE_NOT_CACHED`, `E_VOLUME_NOT_FOUND`, `E_EXEC_NOT_FOUND`, `E_SNAPSHOT_NOT_FOUND`) |
 * | 4 | the sandbox's state does not allow it (`E_ILLEGAL_STATE`), or a volume is in use (`E_VOLUME_IN_USE`) |
 * | 5 | already exists (`E_SANDBOX_EXISTS`, `E_SNAPSHOT_EXISTS`) |
 * | 6 | timed out (`E_TIMEOUT`) |
 * | 7 | the sandbox failed to boot or its VM crashed (`E_BOOT_FAILED`, `E_VM_CRASHED`) |
 *
 * `run`, `exec` and `attach` exit with the command's own exit code; 128 + n when a signal n
 * ended it, 124 when `--timeout` ended it, 125 when corral itself failed (the message says
 * why) and 127 when the command could not be started (`E_EXEC_START`). A command line that
 * is not valid exits 2 for them too, as for every verb: the command never ran. `attach`
 * exits 130 when Ctrl-C detached it (the command runs on).
 */

import { CorralError } from '../errors.ts';

/** Exit codes of the commands other than `run`/`exec`/`attach`. */
export const EXIT = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  ILLEGAL_STATE: 4,
  EXISTS: 5,
  TIMEOUT: 6,
  VM_FAILED: 7,
} as const;

/** Exit codes `run`, `exec` and `attach` use for their own failures. */
export const EXEC_EXIT = { TIMEOUT: 124, CORRAL_ERROR: 125, CANNOT_START: 127 } as const;

/**
 * The exit code for a finished command, shell style (`run`, `exec`, `attach`).
 *
 * @example
 * commandExit({ code: null, signal: 9, timedOut: false }); // 137
 */
export function commandExit(r: { code: number | null; signal: number | null; timedOut: boolean }): number {
  if (r.timedOut) return EXEC_EXIT.TIMEOUT;
  if (r.signal !== null) return 128 + r.signal;
  return r.code ?? EXEC_EXIT.CORRAL_ERROR;
}

/**
 * The exit code for an error of a sandbox or image command.
 *
 * @example
 * process.exitCode = exitCodeOf(new CorralError('E_SANDBOX_NOT_FOUND', '…')); // 3
 */
export function exitCodeOf(err: unknown): number {
  if (!(err instanceof CorralError)) return err instanceof TypeError || err instanceof RangeError ? EXIT.USAGE : EXIT.ERROR;
  switch (err.code) {
    case 'E_USAGE':
    case 'E_INVALID_OPTION':
      return EXIT.USAGE;
    case 'E_SANDBOX_NOT_FOUND':
    case 'E_IMAGE_NOT_FOUND':
    case 'E_IMAGE_NOT_CACHED':
    case 'E_VOLUME_NOT_FOUND':
    case 'E_EXEC_NOT_FOUND':
    case 'E_SNAPSHOT_NOT_FOUND':
      return EXIT.NOT_FOUND;
    case 'E_ILLEGAL_STATE':
    case 'E_VOLUME_IN_USE':
      return EXIT.ILLEGAL_STATE;
    case 'E_SANDBOX_EXISTS':
    case 'E_SNAPSHOT_EXISTS':
      return EXIT.EXISTS;
    case 'E_TIMEOUT':
      return EXIT.TIMEOUT;
    case 'E_BOOT_FAILED':
    case 'E_VM_CRASHED':
      return EXIT.VM_FAILED;
    default:
      return EXIT.ERROR;
  }
}
