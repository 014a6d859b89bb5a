/**
 * The node options a worker thread or child process that corral starts may inherit.
 *
 * A worker thread inherits `process.execArgv` unless told otherwise: a script started as
 * `node --input-type=module -e "…"` would hand its `-e` code to every worker, which then
 * runs that code instead of its entry and exits before it started. Inspector flags would
 * make each worker open (or fight for) a debugger port.
 */

/** Options that take the next argument as their value when not written `--opt=value`. */
const WITH_VALUE = new Set(['-e', '--eval', '-p', '--print', '--input-type', '-r', '--require', '--import', '--loader', '--experimental-loader']);
/** Options the children never get. */
const DROPPED = new Set(['-e', '--eval', '-p', '--print', '-pe', '--input-type', '-i', '--interactive', '-c', '--check', '--test', '--watch', '--watch-path']);
const INSPECTOR = /^--(inspect|inspect-brk|inspect-port|inspect-publish-uid|debug-port|inspect-wait)(=|$)/;
const TSX = /(^|[\\/])tsx([\\/]|$)/;

/**
 * `process.execArgv` minus the code to evaluate (`-e`, `-p`, `--input-type`), inspector
 * flags and tsx's loader (the boot files of corral's workers register tsx themselves; on
 * Node 20 an inherited `--import tsx` does not give a worker TypeScript and costs ~0.3 s
 * of CPU per worker). Everything else (memory limits, `--enable-source-maps`, conditions…)
 * passes on.
 *
 * @example
 * new Worker(boot, { execArgv: workerExecArgv() });
 */
export function workerExecArgv(execArgv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i]!;
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const inline = flag !== arg;
    const value = inline ? arg.slice(eq + 1) : WITH_VALUE.has(flag) ? execArgv[i + 1] : undefined;
    const skip = (): void => {
      if (!inline && WITH_VALUE.has(flag)) i++;
    };
    if (DROPPED.has(flag) || INSPECTOR.test(arg)) {
      skip();
      continue;
    }
    if (['-r', '--require', '--import', '--loader', '--experimental-loader'].includes(flag) && TSX.test(value ?? '')) {
      skip();
      continue;
    }
    out.push(arg);
    if (!inline && WITH_VALUE.has(flag) && value !== undefined) out.push(execArgv[++i]!);
  }
  return out;
}
