/**
 * Background commands from the CLI (E2B's `commands.run({ background })`, `list`, `connect`;
 * docker's `run -d`, `attach`): `exec -d` starts one and exits, `execs` lists what runs,
 * `attach` reads one's output (kept in the sandbox's replay buffer) from any later process
 * and exits with its code, `exec-kill` signals one. The sandbox must be detached (every
 * sandbox `corral create` makes is), so its commands outlive the process that started them.
 */

import { fstatSync } from 'node:fs';
import type { ExecInfo } from '../actor/contract.ts';
import { CorralError } from '../errors.ts';
import type { ExecStream, ExecStreamItem } from '../sdk/exec.ts';
import type { Sandbox } from '../sdk/Sandbox.ts';
import { logFailure } from '../runtime/log.ts';
import { commandExit } from './exitCodes.ts';

type Exited = Extract<ExecStreamItem, { type: 'exited' }>;

/** How the CLI prints: one JSON document (`--json`), else `text`. */
export type Print = (value: unknown, text: string) => void;

/** Options of {@link startBackground}: exec's own, and where its stdin comes from. */
export interface BackgroundExecOptions {
  readonly env?: Record<string, string>;
  readonly cwd?: string;
  readonly user?: string;
  /** Written to the command's stdin, which is then closed. */
  readonly stdin?: string;
  /** Keep the command's stdin open for a later `attach` to write to (docker's `-i`). */
  readonly interactive?: boolean;
}

/**
 * Starts `argv` in the background and returns at once: the command runs on after this
 * process exits. Without `stdin` or `interactive` the command's stdin is closed.
 *
 * @example
 * const { id } = await startBackground(sb, ['sh', '-c', 'serve'], { interactive: true });
 */
export async function startBackground(sb: Sandbox, argv: readonly string[], opts: BackgroundExecOptions): Promise<{ id: number; sandbox: string; argv: readonly string[]; stdin: boolean }> {
  const [command, ...args] = argv;
  if (!command) throw new CorralError('E_USAGE', 'no command given: put it after -- (corral exec NAME -d -- CMD ARGS…)');
  const { interactive, stdin, ...rest } = opts;
  const stream = await sb.execStream(command, args, { ...rest, background: true, ...(interactive ? { stdin: 'pipe' as const } : stdin !== undefined ? { stdin } : {}) });
  return { id: stream.id, sandbox: sb.name, argv, stdin: interactive === true };
}

/**
 * The running commands of a sandbox as rows for `corral execs`.
 *
 * @example
 * process.stdout.write(execsTable(await sb.execs()));
 */
export function execsTable(rows: readonly ExecInfo[]): string {
  const quote = (a: string) => (a === '' || /[\s'"\\$`]/.test(a) ? JSON.stringify(a) : a);
  const table = [
    ['ID', 'PID', 'BACKGROUND', 'STDIN', 'STARTED', 'COMMAND'],
    ...rows.map((r) => [String(r.id), r.pid === null ? '-' : String(r.pid), r.background ? 'yes' : 'no', r.stdin ? 'open' : '-', new Date(r.startedAt).toISOString(), r.argv.map(quote).join(' ')]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  return table.map((r) => r.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/** Options of {@link attach}. */
export interface AttachOptions {
  /** Read the output after this seq (a previous attach's `lastSeq`); 0: all that is kept. */
  readonly since: number;
  /** Written to the command's stdin, which is then closed (the command must have stdin open). */
  readonly stdin?: string;
  /** Leave the command's stdin alone: this process only reads. */
  readonly noStdin: boolean;
  /** Collect the output and print one JSON document at the end. */
  readonly json: boolean;
  readonly print: Print;
}

/**
 * `corral attach`: the command's output from `since` as it comes (stdout to stdout, stderr
 * to stderr), this process's stdin forwarded to the command's when that is open (ending it
 * at EOF), then the exit code `corral exec` would give. A stdin that can give no input
 * (/dev/null, or none) is not forwarded: an attach from cron or `< /dev/null` must not
 * close the stdin a later attach means to write to. SIGINT or SIGTERM detaches: the command
 * runs on; the exit code is then 130 and stderr says which seq to read on from.
 *
 * @example
 * process.exitCode = await attach(sb, 7, { since: 0, noStdin: false, json: false, print });
 */
export async function attach(sb: Sandbox, id: number, opts: AttachOptions): Promise<number> {
  const running = await runningCommand(sb, id);
  if (opts.stdin !== undefined && !running.stdin) {
    throw new CorralError('E_USAGE', `--stdin: command ${id} was started without stdin (start it with corral exec -d -i to write to it later)`);
  }
  const stream = await sb.attach(id, { since: opts.since });
  let detached = false;
  const detach = () => {
    detached = true;
    stream.disconnect();
  };
  process.once('SIGINT', detach);
  process.once('SIGTERM', detach);
  let finished = false;
  const forwarding = running.stdin && !opts.noStdin && opts.stdin === undefined && stdinGivesInput();
  try {
    if (opts.stdin !== undefined) {
      await stream.write(opts.stdin);
      await stream.end();
    } else if (forwarding) {
      void forwardStdin(stream, process.stdin, () => finished);
    }
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    let exited: Exited;
    try {
      for await (const item of stream) {
        if (item.type !== 'stdout' && item.type !== 'stderr') continue;
        if (opts.json) (item.type === 'stdout' ? out : err).push(item.data);
        else (item.type === 'stdout' ? process.stdout : process.stderr).write(item.data);
      }
      exited = await stream.exited;
    } catch (e) {
      if (!detached) throw e;
      const again = `corral attach ${sb.name} ${id} --since ${stream.lastSeq}`;
      if (opts.json) opts.print({ id, detached: true, lastSeq: stream.lastSeq, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }, '');
      process.stderr.write(`corral: detached from command ${id}: it runs on (${again} reads on)\n`);
      return 130;
    }
    if (opts.json) {
      opts.print(
        { id, code: exited.code, signal: exited.signal, timedOut: exited.timedOut, durationMs: exited.durationMs, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), lastSeq: stream.lastSeq },
        '',
      );
    }
    return commandExit(exited);
  } finally {
    finished = true;
    process.off('SIGINT', detach);
    process.off('SIGTERM', detach);
    // Ends the copy of stdin, which would otherwise keep this process waiting for input.
    if (forwarding) process.stdin.destroy();
  }
}

/**
 * Whether this process's stdin can give input: a terminal, a pipe, a file or a socket can;
 * /dev/null (a character device that is not a terminal) or a closed fd 0 cannot.
 */
function stdinGivesInput(): boolean {
  if (process.stdin.isTTY) return true;
  try {
    return !fstatSync(0).isCharacterDevice();
  } catch (err) {
    // fd 0 is closed (EBADF): there is no stdin to forward.
    if ((err as NodeJS.ErrnoException).code === 'EBADF') return false;
    throw err;
  }
}

/** The running command `id`, or E_EXEC_NOT_FOUND in the CLI's words. */
async function runningCommand(sb: Sandbox, id: number): Promise<ExecInfo> {
  const running = (await sb.execs()).find((e) => e.id === id);
  if (running) return running;
  throw new CorralError('E_EXEC_NOT_FOUND', `no running command ${id} in sandbox "${sb.name}" (corral execs ${sb.name} lists them; a finished one's output is in corral logs ${sb.name})`);
}

/** Copies `input` into the command's stdin, closing it at EOF; a failure after the attach ended is expected. */
async function forwardStdin(stream: ExecStream, input: NodeJS.ReadStream, over: () => boolean): Promise<void> {
  try {
    for await (const chunk of input) await stream.write(chunk as Uint8Array);
    await stream.end();
  } catch (err) {
    // The command ended (its stdin is gone) or this process destroyed its own stdin on the way out.
    if (!over()) logFailure(`forwarding stdin to command ${stream.id}`)(err);
  }
}

/**
 * `corral exec-kill`: sends `signo` to a running command's process group. Does not wait
 * for it to end (a command may handle the signal): `attach` or `execs` shows that.
 *
 * @example
 * await killExec(sb, 7, 15);
 */
export async function killExec(sb: Sandbox, id: number, signo: number): Promise<{ id: number; sandbox: string; signal: number }> {
  await runningCommand(sb, id);
  // A stream that is never read connects to nothing: only its control is used.
  const handle = await sb.attach(id);
  await handle.kill(signo);
  return { id, sandbox: sb.name, signal: signo };
}
