/**
 * `corral [--nats URL] fs watch NAME PATH [--recursive]`: one line per change in a guest
 * directory (`--json`: one JSON object per line), until Ctrl-C, the directory's removal or
 * the sandbox's stop.
 */

import { CorralError } from '../errors.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import type { FsWatchEvent } from '../sdk/FsWatch.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import { logFailure } from '../runtime/log.ts';
import { EXIT } from './exitCodes.ts';

/** What the command reads of its command line. */
export interface FsCommandArgs {
  readonly json: boolean;
  readonly sup: Supervisor;
  /** With `--nats`: the cluster the sandbox is on, instead of `sup`. */
  readonly cluster?: Cluster;
  readonly values: Readonly<Record<string, unknown>>;
  readonly positionals: readonly string[];
}

/** One line of text for a change: `create /work/a`, `rename /work/a -> /work/b`, a `/` after a directory. */
export function watchLine(e: FsWatchEvent): string {
  const dir = e.isDir ? '/' : '';
  if (e.type === 'rename') return `rename ${e.from}${dir} -> ${e.path}${dir}`;
  if (e.type === 'overflow') return `overflow ${e.path} (changes were lost)`;
  return `${e.type} ${e.path}${dir}`;
}

/**
 * Runs `fs watch`; resolves with the exit code (0 when it ended by Ctrl-C, the directory's
 * removal or the sandbox's stop; 1 when the guest failed to read it).
 *
 * @example
 * process.exitCode = await fsCommand({ json: false, sup, values: { recursive: true }, positionals: ['watch', 'web', '/srv'] });
 */
export async function fsCommand(c: FsCommandArgs): Promise<number> {
  const [sub, name, path, ...extra] = c.positionals;
  if (sub !== 'watch') throw new CorralError('E_USAGE', `fs takes watch (got ${sub === undefined ? 'nothing' : JSON.stringify(sub)})`);
  if (!name || !path || extra.length) throw new CorralError('E_USAGE', 'fs watch takes NAME and PATH (corral help)');
  const sb = await Sandbox.get(name, c.cluster ? { cluster: c.cluster } : { supervisor: c.sup });
  try {
    const w = await sb.fs().watch(path, { recursive: c.values.recursive === true });
    let stopping: Promise<void> | undefined;
    const interrupt = () => void (stopping ??= w.stop().catch(logFailure(`stopping the watch of ${path}`)));
    process.once('SIGINT', interrupt);
    process.once('SIGTERM', interrupt);
    // On stderr, so a script knows the watch is in place (stdout is the changes only).
    process.stderr.write(`watching ${path}${c.values.recursive === true ? ' and its subdirectories' : ''}\n`);
    try {
      for await (const e of w) process.stdout.write(`${c.json ? JSON.stringify(e) : watchLine(e)}\n`);
    } catch (err) {
      process.stderr.write(`corral: the watch of ${path} failed: ${(err as Error).message}\n`);
      return EXIT.ERROR;
    } finally {
      process.off('SIGINT', interrupt);
      process.off('SIGTERM', interrupt);
      await stopping; // its call to the sandbox goes out before the handle is let go of
    }
    process.stderr.write(`watch ended: ${w.endReason}\n`);
    return EXIT.OK;
  } finally {
    await sb.detach();
  }
}
