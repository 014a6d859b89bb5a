/**
 * `corral exec --tty`: the command runs on a guest terminal wired to this one. When stdin is
 * a terminal it goes raw (keys, ^C included, reach the guest unchanged) and is put back on
 * the way out; the window size goes along and follows SIGWINCH. Stdin is forwarded either way.
 */

import type { ExecStreamItem } from '../sdk/exec.ts';
import type { Sandbox } from '../sdk/Sandbox.ts';
import { logFailure } from '../runtime/log.ts';

type Exited = Extract<ExecStreamItem, { type: 'exited' }>;

/** The local terminal's size, or 80×24 when stdout is not one. */
function windowSize(): { cols: number; rows: number } {
  const out = process.stdout;
  return out.isTTY && out.columns > 0 && out.rows > 0 ? { cols: out.columns, rows: out.rows } : { cols: 80, rows: 24 };
}

/**
 * Runs `command` on a terminal in the sandbox; terminal output goes to stdout as it comes.
 * With `collect`, it is returned instead (for `--json`).
 *
 * @example
 * const x = await execTty(sb, 'sh', [], { user: 'app' });
 */
export async function execTty(
  sb: Sandbox,
  command: string,
  args: readonly string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number; user?: string },
  collect = false,
): Promise<Exited & { execId: number; stdout: string }> {
  const input = process.stdin;
  const raw = input.isTTY === true;
  const stream = await sb.execStream(command, args, { ...opts, tty: windowSize(), stdin: input });
  const onWinch = () => void stream.resize(windowSize().cols, windowSize().rows).catch(logFailure('resizing the exec terminal'));
  process.on('SIGWINCH', onWinch);
  if (raw) input.setRawMode(true);
  const out: Uint8Array[] = [];
  try {
    for await (const item of stream) {
      if (item.type !== 'stdout') continue;
      if (collect) out.push(item.data);
      else process.stdout.write(item.data);
    }
    return { ...(await stream.exited), execId: stream.execId, stdout: Buffer.concat(out).toString('utf8') };
  } finally {
    process.off('SIGWINCH', onWinch);
    if (raw) input.setRawMode(false);
    // Ends the copy of stdin, which would otherwise keep this process waiting for input.
    input.destroy();
  }
}
