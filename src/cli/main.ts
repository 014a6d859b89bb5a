/**
 * The `corral` command line: sandbox verbs over the SDK, images, `serve` and `ui`.
 *
 * Sandboxes that must outlive one invocation (`create`, `start`) are detached: they run in
 * a host process of their own and every later command reaches them by name. `run` is the
 * exception: a throwaway sandbox for one command, removed afterwards. `--json` prints one
 * JSON document per command on stdout (errors too: `{ "error": { code, message } }`).
 * Exit codes: src/cli/exitCodes.ts.
 */

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CorralError, serializeError } from '../errors.ts';
import { Image } from '../image/Image.ts';
import { resolveImage } from '../image/pull.ts';
import { lastValueFrom, tap } from 'rxjs';
import type { LogEntry } from '../logs/ExecLog.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import { Volume, type VolumeInfo } from '../sdk/Volume.ts';
import { Snapshot } from '../sdk/Snapshot.ts';
import { Supervisor } from '../supervisor/Supervisor.ts';
import type { SandboxConfig } from '../config.ts';
import { EXEC_EXIT, EXIT, commandExit, exitCodeOf } from './exitCodes.ts';
import { pullProgress } from './pullProgress.ts';
import { copy } from './cp.ts';
import { execTty } from './execTty.ts';
import { logFailure } from '../runtime/log.ts';
import { NODE_OPTIONS } from './nodeOptions.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import { attach, execsTable, killExec, startBackground } from './background.ts';
import { CREATE_OPTS, createFields, hostPort, integerArg, policyMs, portPair, signalNumber } from './options.ts';

const USAGE = `usage: corral [--json] [--state-dir DIR] <command> [options]

sandboxes (create/start make detached sandboxes, reachable by name from any process)
  run [IMAGE] [--entrypoint E] [--memory MiB] [--cpus N] [--env K=V] [--timeout S] [--user U] [-- ARGS…]
                             a throwaway sandbox running the image's entrypoint + cmd, or
                             entrypoint + ARGS (docker run style); exit with its code
  create NAME [--image I] [--memory MiB] [--cpus N] [--env K=V] [--label K=V] [--workdir D] [--replace]
       [-p|--port HOSTPORT:GUESTPORT] [--idle-timeout S [--idle-action pause|stop]] [--max-duration S]
       [--start-cmd CMD [--ready-cmd CMD]] [--from-snapshot SNAPSHOT]
                             --port: published on host loopback (gives the VM a NIC, so publish works);
                             --idle-timeout: S with no command running stops it (pause: freezes it, and
                             the next exec wakes it); --max-duration: S after the create it drains
                             (running commands, background ones too, end first, then it stops);
                             --start-cmd: runs as the guest comes up (in its template, so a sandbox
                             starts with it running), --ready-cmd polled until it succeeds
  start NAME                 boot a stopped sandbox again
  stop NAME [--timeout S] | kill NAME | pause NAME | resume NAME
  exec NAME [--env K=V] [--cwd D] [--timeout S] [--stdin TEXT] [--user U] [-t|--tty] -- CMD [ARGS…]
                             --tty: a guest terminal wired to this one (stdin forwarded)
  exec NAME -d|--background [-i|--interactive] [--env K=V] [--cwd D] [--stdin TEXT] [--user U] -- CMD [ARGS…]
                             start CMD in the background, print its id and exit; it runs on.
                             -i keeps its stdin open for attach (else it has none, or --stdin's TEXT)
  execs NAME                 running commands: id, pid, background, stdin, started, argv
  attach NAME ID [--since SEQ] [--stdin TEXT | --no-stdin]
                             a command's output from SEQ (default: all that is kept), then live;
                             exit with its code. This process's stdin goes to the command's (if it
                             has one open), and EOF closes it; /dev/null is not forwarded, nor with
                             --no-stdin.
                             Ctrl-C detaches (exit 130): the command runs on, attach again to read on
  exec-kill NAME ID [-s|--signal SIG]   signal a running command (default KILL; TERM, INT, 15, …)
  publish NAME HOSTPORT:GUESTPORT   forward 127.0.0.1:HOSTPORT to the guest's port, from now on
  unpublish NAME HOSTPORT    stop forwarding HOSTPORT
  set-max-duration NAME S    the sandbox drains S seconds from now (replaces --max-duration)
  cp SRC DST                 copy files/dirs between host and sandbox; one side is NAME:/path
  fs watch NAME PATH [--recursive]   one line per change in a guest dir until Ctrl-C or the sandbox stops
  ls [--label K=V]           list sandboxes
  inspect NAME               status, pid, accel, boot timings, stop reason
  logs NAME [--since T] [--tail N] [-f]   recorded exec output (T: ms epoch, ISO date, or 30s/5m/2h ago);
                             -f/--follow keeps printing new output until the sandbox stops
  rm NAME                    remove a stopped sandbox
volumes
  volume ls | volume create NAME | volume inspect NAME | volume rm NAME [--force]
snapshots
  snapshot ls | snapshot rm NAME
  snapshot save SANDBOX SNAPSHOT   memory and disk of a running sandbox (it runs on); create
                             --from-snapshot SNAPSHOT starts a sandbox where it was
  snapshot export NAME FILE  one archive: memory, devices, disk, config, sha256 of each
  snapshot import FILE [--name N]   checked for integrity and for this host's kernel and image
images
  images                     cached images
  pull REF [--insecure]      pull an image (progress on stderr)
servers
  serve [--host H] [--port P] [--token T]   HTTP + WebSocket API (token: --token or CORRAL_TOKEN)
  ui [--port P]              the live inspector page on loopback
  mcp [--http PORT] [--host H] [--token T] [--detached]
                             Model Context Protocol server for AI agents: stdio (default), or
                             streamable HTTP at /mcp; --detached: its sandboxes outlive it
cluster
  node --nats URL[,URL…] --name N --state-dir DIR [--label K=V] [--user U --password P | --nkey-seed FILE | --creds FILE]
       [--max-sandboxes N] [--memory MiB] [--heartbeat MS] [--replicas 1|3|5]
       [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
                             a cluster node: runs sandboxes for the cluster until SIGTERM
  --nats URL[,URL…] ls | inspect NAME | rm NAME | nodes | node drain NAME [--migrate] | exec NAME [-d] -- CMD…
                  | create NAME … | run [IMAGE] … | logs NAME [-f] | cp SRC DST | attach NAME ID | fs watch NAME PATH
                  | stop NAME | kill NAME | pause NAME | resume NAME | start NAME | execs NAME
                  | exec-kill NAME ID | publish NAME H:G | unpublish NAME H | set-max-duration NAME S
                  | serve [--host H] [--port P] [--token T]   the API in front of the whole cluster
                             act on the cluster (credentials: CORRAL_NATS_USER, CORRAL_NATS_PASSWORD or CORRAL_NATS_NKEY_SEED)

exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 illegal state, 5 exists, 6 timeout,
7 boot failed/VM crashed; run/exec/attach: the command's code (128+n signal, 124 timeout,
125 corral failed, 127 cannot start; 2 for a bad command line; attach: 130 detached)`;

type Values = Record<string, string | boolean | string[] | undefined>;

/** The verbs that take --nats by running their own code against the cluster (the others: src/cli/clusterCommands.ts). */
const CLUSTER_CTX_VERBS = new Set(['create', 'run', 'logs', 'cp', 'fs', 'serve']);

interface Ctx {
  readonly json: boolean;
  readonly sup: Supervisor;
  /** With `--nats`: the cluster the verb acts on (create, run, logs, cp), instead of `sup`. */
  readonly cluster?: Cluster;
  readonly values: Values;
  readonly positionals: string[];
  /** Everything after `--` (run, exec). */
  readonly rest: string[];
}

const SANDBOX_OPTS = {
  image: { type: 'string' },
  memory: { type: 'string' },
  cpus: { type: 'string' },
  env: { type: 'string', multiple: true },
  label: { type: 'string', multiple: true },
  workdir: { type: 'string' },
  replace: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

const COMMANDS: Record<string, { options?: ParseArgsConfig['options']; run(ctx: Ctx): Promise<number> }> = {
  run: { options: { ...SANDBOX_OPTS, name: { type: 'string' }, timeout: { type: 'string' }, entrypoint: { type: 'string' }, user: { type: 'string', short: 'u' } }, run: cmdRun },
  create: { options: { ...SANDBOX_OPTS, ...CREATE_OPTS }, run: cmdCreate },
  start: { run: async (c) => printInfo(c, await (await Sandbox.start(one(c), { supervisor: c.sup, detached: true })).info()) },
  stop: {
    options: { timeout: { type: 'string' } },
    run: async (c) => withSandbox(c, (sb) => sb.stop(c.values.timeout ? { timeoutMs: seconds(c.values.timeout, 'timeout') } : {})),
  },
  kill: { run: async (c) => withSandbox(c, (sb) => sb.kill()) },
  pause: { run: async (c) => withSandbox(c, async (sb) => (await sb.pause(), sb.info())) },
  resume: { run: async (c) => withSandbox(c, async (sb) => (await sb.resume(), sb.info())) },
  exec: {
    options: {
      env: { type: 'string', multiple: true },
      cwd: { type: 'string' },
      timeout: { type: 'string' },
      stdin: { type: 'string' },
      user: { type: 'string', short: 'u' },
      tty: { type: 'boolean', short: 't' },
      background: { type: 'boolean', short: 'd' },
      interactive: { type: 'boolean', short: 'i' },
    },
    run: cmdExec,
  },
  // The SDK's background commands, ports and lifetime, on a sandbox by name.
  execs: { run: (c) => onSandbox(c, cmdExecs(c)) },
  attach: { options: { since: { type: 'string' }, stdin: { type: 'string' }, 'no-stdin': { type: 'boolean' } }, run: (c) => onSandbox(c, cmdAttach(c)) },
  'exec-kill': { options: { signal: { type: 'string', short: 's' } }, run: (c) => onSandbox(c, cmdExecKill(c)) },
  publish: { run: (c) => onSandbox(c, cmdPublish(c)) },
  unpublish: { run: (c) => onSandbox(c, cmdUnpublish(c)) },
  'set-max-duration': { run: (c) => onSandbox(c, cmdSetMaxDuration(c)) },
  cp: {
    run: async (c) => {
      const [src, dst, ...extra] = c.positionals;
      if (!src || !dst || extra.length) throw new CorralError('E_USAGE', 'cp takes SRC and DST, one of them NAME:/path (corral help)');
      const r = await copy(where(c), src, dst);
      print(c, r, r.direction === 'in' ? `copied ${r.from} to ${r.sandbox}:${r.to}` : `copied ${r.sandbox}:${r.from} to ${r.to}`);
      return EXIT.OK;
    },
  },
  fs: { options: { recursive: { type: 'boolean', short: 'r' } }, run: async (c) => (await import('./fsWatch.ts')).fsCommand(c) },
  ls: { options: { label: { type: 'string', multiple: true } }, run: cmdLs },
  inspect: { run: async (c) => withSandbox(c, (sb) => sb.info()) },
  logs: { options: { since: { type: 'string' }, tail: { type: 'string' }, follow: { type: 'boolean', short: 'f' } }, run: cmdLogs },
  volume: { options: { force: { type: 'boolean' } }, run: cmdVolume },
  snapshot: { options: { name: { type: 'string' } }, run: cmdSnapshot },
  rm: {
    run: async (c) => {
      const name = one(c);
      await Sandbox.remove(name, { supervisor: c.sup });
      print(c, { removed: name }, `removed ${name}`);
      return EXIT.OK;
    },
  },
  images: { run: cmdImages },
  pull: { options: { insecure: { type: 'boolean' } }, run: cmdPull },
  serve: { options: { host: { type: 'string' }, port: { type: 'string' }, token: { type: 'string' } }, run: (c) => cmdServe(c, false) },
  ui: { options: { port: { type: 'string' } }, run: (c) => cmdServe(c, true) },
  mcp: { options: { http: { type: 'string' }, host: { type: 'string' }, token: { type: 'string' }, detached: { type: 'boolean' } }, run: cmdMcp },
  node: { options: { ...NODE_OPTIONS, migrate: { type: 'boolean' } }, run: async () => EXIT.USAGE },
  nodes: { run: async () => Promise.reject(new CorralError('E_USAGE', 'nodes lists the nodes of a cluster: corral --nats URL nodes')) },
};

/**
 * Runs one command line; resolves with the exit code.
 *
 * @example
 * process.exitCode = await main(['ls', '--json']);
 */
export async function main(argv: readonly string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const head = dash >= 0 ? argv.slice(0, dash) : [...argv];
  const rest = dash >= 0 ? argv.slice(dash + 1) : [];
  const json = head.includes('--json');
  let stateDir: string | undefined;
  const sdIdx = head.indexOf('--state-dir');
  if (sdIdx >= 0) {
    stateDir = head[sdIdx + 1];
    head.splice(sdIdx, 2);
  }
  let nats: string | undefined;
  const natsIdx = head.indexOf('--nats');
  // `corral node --nats URL` starts a node; before the verb, --nats points any verb at a cluster.
  if (natsIdx >= 0 && natsIdx < head.findIndex((a, i) => !a.startsWith('--') && head[i - 1] !== '--state-dir' && head[i - 1] !== '--nats')) {
    nats = head[natsIdx + 1];
    head.splice(natsIdx, 2);
  }
  const args = head.filter((a) => a !== '--json');
  const name = args[0];
  if (!name || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(`${USAGE}\n`);
    return name ? EXIT.OK : EXIT.USAGE;
  }
  const cmd = COMMANDS[name];
  if (!cmd) return fail(json, new CorralError('E_USAGE', `unknown command "${name}" (corral help lists them)`), false);
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args: args.slice(1), options: cmd.options ?? {}, allowPositionals: true, strict: true }) as { values: Values; positionals: string[] };
  } catch (err) {
    return fail(json, new CorralError('E_USAGE', `${(err as Error).message} (corral help)`, { cause: err }), false);
  }
  if (nats !== undefined && CLUSTER_CTX_VERBS.has(name)) {
    // Verbs whose code takes a cluster where it takes a supervisor.
    try {
      const { connectCluster } = await import('./clusterCommands.ts');
      const cluster = await connectCluster(nats);
      try {
        return await cmd.run({ json, values: parsed.values, positionals: parsed.positionals, rest, cluster } as unknown as Ctx);
      } finally {
        await cluster.close();
      }
    } catch (err) {
      return fail(json, err, name === 'run');
    }
  }
  if (nats !== undefined) {
    try {
      // The handle verbs' own flags and output are the same as without --nats.
      const ctx = { json, values: parsed.values, positionals: parsed.positionals, rest } as unknown as Ctx;
      // The servers, the MCP SDK and the NATS client load only for the commands that use them:
      // every other command starts without paying for them.
      // A verb's arguments are checked before the cluster is contacted.
      const verbs: Partial<Record<string, SandboxVerb>> = { execs: cmdExecs, attach: cmdAttach, 'exec-kill': cmdExecKill, publish: cmdPublish, unpublish: cmdUnpublish, 'set-max-duration': cmdSetMaxDuration };
      const onVerb = verbs[name]?.(ctx);
      const { runOnCluster } = await import('./clusterCommands.ts');
      return await runOnCluster(
        nats,
        name,
        parsed,
        (value, text) => process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`),
        async (verb, sb) => {
          switch (verb) {
            case 'exec':
              return execIn(ctx, sb);
            case 'execs':
            case 'attach':
            case 'exec-kill':
            case 'publish':
            case 'unpublish':
            case 'set-max-duration':
              return onVerb!(sb);
            case 'stop':
              return printInfo(ctx, await sb.stop(parsed.values.timeout ? { timeoutMs: seconds(parsed.values.timeout, 'timeout') } : {}));
            case 'kill':
              return printInfo(ctx, await sb.kill());
            case 'pause':
              await sb.pause();
              return printInfo(ctx, await sb.info());
            case 'resume':
              await sb.resume();
              return printInfo(ctx, await sb.info());
            default:
              return printInfo(ctx, await sb.info());
          }
        },
      );
    } catch (err) {
      return fail(json, err, false);
    }
  }
  // A node owns its supervisor (its own state dir), for as long as it runs.
  if (name === 'node') return (await import('./node.ts')).cmdNode(stateDir, parsed.values);
  const sup = new Supervisor(stateDir ? { stateDir } : {});
  try {
    return await cmd.run({ json, sup, values: parsed.values, positionals: parsed.positionals, rest });
  } catch (err) {
    return fail(json, err, name === 'run' || name === 'exec' || name === 'attach');
  } finally {
    await sup.close();
  }
}

function fail(json: boolean, err: unknown, execLike: boolean): number {
  const s = serializeError(err);
  if (json) process.stdout.write(`${JSON.stringify({ error: { code: s.code ?? 'E_INTERNAL', name: s.name, message: s.message } })}\n`);
  else process.stderr.write(`corral: ${s.message}\n`);
  // A command line that is not valid is a usage error for every verb: the command never ran.
  if (!execLike || exitCodeOf(err) === EXIT.USAGE) return exitCodeOf(err);
  return err instanceof CorralError && err.code === 'E_EXEC_START' ? EXEC_EXIT.CANNOT_START : EXEC_EXIT.CORRAL_ERROR;
}

function print(c: Ctx, value: unknown, text: string): void {
  process.stdout.write(c.json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}

function printInfo(c: Ctx, info: Awaited<ReturnType<Sandbox['info']>>): number {
  print(c, info, c.json ? '' : formatInfo(info));
  return EXIT.OK;
}

function formatInfo(i: Awaited<ReturnType<Sandbox['info']>>): string {
  const lines = [`name:      ${i.name}`, `status:    ${i.status} (${i.state})`];
  if (i.pid) lines.push(`pid:       ${i.pid}`);
  if (i.accel) lines.push(`accel:     ${i.accel}${i.accelReason ? ` (${i.accelReason})` : ''}`);
  if (i.kernel) lines.push(`kernel:    ${i.kernel}`);
  if (i.bootMs !== null) lines.push(`boot:      ${Math.round(i.bootMs)} ms (guest ${i.guestBootMs ?? '?'} ms)`);
  if (i.jail) {
    const j = i.jail;
    const walls = j.jailed ? [`uid ${j.uid}`, j.netns ? 'own network namespace' : 'host network (NIC, policed)', j.limits ? `cgroup ${j.cgroup}: ${Math.round(j.limits.memoryMaxBytes / 2 ** 20)} MiB` : 'no cgroup'] : ['not jailed'];
    lines.push(`jail:      ${walls.join(', ')}`, ...j.missing.map((m) => `  missing: ${m}`));
  }
  if (i.stopReason) lines.push(`stopped:   ${i.stopReason}`);
  return lines.join('\n');
}

function one(c: Ctx): string {
  const [name, ...extra] = c.positionals;
  if (!name) throw new CorralError('E_USAGE', 'a sandbox name is needed (corral help)');
  if (extra.length) throw new CorralError('E_USAGE', `unexpected argument "${extra[0]}" (a command to run goes after --)`);
  return name;
}

async function withSandbox(c: Ctx, fn: (sb: Sandbox) => Promise<Awaited<ReturnType<Sandbox['info']>>>): Promise<number> {
  const sb = await Sandbox.get(one(c), { supervisor: c.sup });
  try {
    return printInfo(c, await fn(sb));
  } finally {
    await sb.detach();
  }
}

/**
 * A verb on one sandbox: its command line is checked first (a bad one never reaches the
 * sandbox), then the returned function runs on the handle, locally or on a cluster.
 */
type SandboxVerb = (c: Ctx) => (sb: Sandbox) => Promise<number>;

/** Runs a verb on the handle of the sandbox named first (its other arguments are the verb's). */
async function onSandbox(c: Ctx, run: (sb: Sandbox) => Promise<number>): Promise<number> {
  const name = c.positionals[0];
  if (!name) throw new CorralError('E_USAGE', 'a sandbox name is needed (corral help)');
  const sb = await Sandbox.get(name, { supervisor: c.sup });
  try {
    return await run(sb);
  } finally {
    await sb.detach();
  }
}

/** The arguments after the sandbox's name: exactly `n` of them, else the verb's usage. */
function argsAfterName(c: Ctx, n: number, usage: string): string[] {
  const args = c.positionals.slice(1);
  if (args.length !== n) throw new CorralError('E_USAGE', `usage: corral ${usage} (corral help)`);
  return args;
}

function seconds(v: unknown, what: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new CorralError('E_USAGE', `--${what} must be a positive number of seconds (got ${JSON.stringify(v)})`);
  return Math.round(n * 1000);
}

function pairs(list: unknown, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of (list as string[] | undefined) ?? []) {
    const eq = kv.indexOf('=');
    if (eq < 1) throw new CorralError('E_USAGE', `--${what} takes KEY=VALUE (got ${JSON.stringify(kv)})`);
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function configFrom(c: Ctx, name: string): SandboxConfig {
  const v = c.values;
  const int = (x: unknown, what: string) => {
    const n = Number(x);
    if (!Number.isInteger(n)) throw new CorralError('E_USAGE', `--${what} must be an integer (got ${JSON.stringify(x)})`);
    return n;
  };
  return {
    name,
    ...(v.image ? { image: v.image } : {}),
    ...(v.memory ? { memoryMib: int(v.memory, 'memory') } : {}),
    ...(v.cpus ? { cpus: int(v.cpus, 'cpus') } : {}),
    ...(v.workdir ? { workdir: v.workdir } : {}),
    env: pairs(v.env, 'env'),
    labels: pairs(v.label, 'label'),
  } as SandboxConfig;
}

/** Where a verb's sandboxes are: the cluster given with --nats, or this host's supervisor. */
function where(c: Ctx): { cluster: Cluster } | { supervisor: Supervisor } {
  return c.cluster ? { cluster: c.cluster } : { supervisor: c.sup };
}

async function cmdCreate(c: Ctx): Promise<number> {
  const config = { ...configFrom(c, one(c)), ...createFields(c.values) } as SandboxConfig;
  // A cluster's sandboxes live on their nodes: reachable by name from anywhere already.
  const sb = c.cluster
    ? await Sandbox.create(config, { cluster: c.cluster, replace: c.values.replace === true })
    : await Sandbox.createDetached(config, { supervisor: c.sup, replace: c.values.replace === true });
  try {
    return printInfo(c, await sb.info());
  } finally {
    await sb.detach();
  }
}

/** Runs `c.rest` (exec), or the image's command with `c.rest` as its arguments (`image` given: run). */
async function runIn(c: Ctx, sb: Sandbox, opts: ExecFlags, image?: { entrypoint?: string[] }): Promise<number> {
  const [command, ...args] = c.rest;
  if (!command && !image) throw new CorralError('E_USAGE', 'no command given: put it after -- (corral exec NAME -- CMD ARGS…)');
  if (c.values.tty === true) {
    if (!command) throw new CorralError('E_USAGE', '--tty needs a command after --');
    if (opts.stdin !== undefined) throw new CorralError('E_USAGE', '--stdin and --tty do not go together: with --tty stdin is forwarded');
    const x = await execTty(sb, command, args, opts, c.json);
    if (c.json) print(c, { execId: x.execId, code: x.code, signal: x.signal, timedOut: x.timedOut, durationMs: x.durationMs, stdout: x.stdout }, '');
    return commandExit(x);
  }
  if (c.json) {
    const r = image ? await sb.run(c.rest, { ...opts, ...image }) : await sb.exec(command!, args, opts);
    print(c, { execId: r.execId, code: r.code, signal: r.signal, timedOut: r.timedOut, reason: r.reason, durationMs: r.durationMs, stdout: r.stdout, stderr: r.stderr }, '');
    return commandExit(r);
  }
  // Output as it happens.
  const stream = image ? await sb.runStream(c.rest, { ...opts, ...image }) : await sb.execStream(command!, args, opts);
  for await (const item of stream) {
    if (item.type === 'stdout') process.stdout.write(item.data);
    else if (item.type === 'stderr') process.stderr.write(item.data);
  }
  const x = await stream.exited;
  return commandExit(x);
}

type ExecFlags = { env?: Record<string, string>; cwd?: string; timeoutMs?: number; stdin?: string; user?: string };

function execOpts(c: Ctx): ExecFlags {
  const v = c.values;
  return {
    ...(typeof v.user === 'string' ? { user: v.user } : {}),
    ...(v.env ? { env: pairs(v.env, 'env') } : {}),
    ...(typeof v.cwd === 'string' ? { cwd: v.cwd } : {}),
    ...(v.timeout ? { timeoutMs: seconds(v.timeout, 'timeout') } : {}),
    ...(typeof v.stdin === 'string' ? { stdin: v.stdin } : {}),
  };
}

async function cmdExec(c: Ctx): Promise<number> {
  const name = one(c);
  checkExecLine(c);
  const sb = await Sandbox.get(name, { supervisor: c.sup });
  try {
    return await execIn(c, sb);
  } finally {
    await sb.detach();
  }
}

/** Throws E_USAGE for an exec command line that cannot run, before any sandbox is reached. */
function checkExecLine(c: Ctx): void {
  const v = c.values;
  if (c.rest.length === 0) throw new CorralError('E_USAGE', `no command given: put it after -- (corral exec NAME${v.background === true ? ' -d' : ''} -- CMD ARGS…)`);
  execOpts(c);
  if (v.background !== true) {
    if (v.interactive === true) throw new CorralError('E_USAGE', '--interactive keeps the stdin of a background command open for attach: it goes with --background (-d)');
    return;
  }
  if (v.timeout !== undefined) throw new CorralError('E_USAGE', '--timeout does not go with --background: a background command runs until it ends or corral exec-kill ends it');
  if (v.tty === true) throw new CorralError('E_USAGE', '--tty does not go with --background: attach does not drive a terminal (yet)');
  if (v.interactive === true && v.stdin !== undefined) throw new CorralError('E_USAGE', '--stdin and --interactive do not go together: --stdin writes TEXT and closes stdin, --interactive keeps it open for attach');
}

/** `exec`, in the foreground (exit with the command's code) or with `-d` in the background. */
async function execIn(c: Ctx, sb: Sandbox): Promise<number> {
  checkExecLine(c);
  if (c.values.background !== true) return runIn(c, sb, execOpts(c));
  const { timeoutMs: _none, ...opts } = execOpts(c);
  const job = await startBackground(sb, c.rest, { ...opts, interactive: c.values.interactive === true });
  print(c, job, String(job.id));
  return EXIT.OK;
}

const cmdExecs: SandboxVerb = (c) => {
  argsAfterName(c, 0, 'execs NAME');
  return async (sb) => {
    const rows = await sb.execs();
    print(c, rows, rows.length ? execsTable(rows) : '(no running commands)');
    return EXIT.OK;
  };
};

const cmdAttach: SandboxVerb = (c) => {
  const [arg] = argsAfterName(c, 1, 'attach NAME ID [--since SEQ] [--stdin TEXT | --no-stdin]');
  const v = c.values;
  if (v.stdin !== undefined && v['no-stdin'] === true) throw new CorralError('E_USAGE', '--stdin and --no-stdin do not go together');
  const id = integerArg(arg, 'ID', 1, 'the id of a running command (corral execs NAME lists them)');
  const since = v.since === undefined ? 0 : integerArg(v.since, '--since', 0, "a non-negative integer seq (an earlier attach's lastSeq)");
  return (sb) =>
    attach(sb, id, {
      since,
      ...(typeof v.stdin === 'string' ? { stdin: v.stdin } : {}),
      noStdin: v['no-stdin'] === true,
      json: c.json,
      print: (value, text) => print(c, value, text),
    });
};

const cmdExecKill: SandboxVerb = (c) => {
  const [arg] = argsAfterName(c, 1, 'exec-kill NAME ID [--signal SIG]');
  const id = integerArg(arg, 'ID', 1, 'the id of a running command (corral execs NAME lists them)');
  const signo = c.values.signal === undefined ? 9 : signalNumber(c.values.signal);
  return async (sb) => {
    const r = await killExec(sb, id, signo);
    print(c, r, `sent signal ${r.signal} to command ${r.id}`);
    return EXIT.OK;
  };
};

const cmdPublish: SandboxVerb = (c) => {
  const [pair] = argsAfterName(c, 1, 'publish NAME HOSTPORT:GUESTPORT');
  const { hostPort: host, guestPort } = portPair(pair, 'HOSTPORT:GUESTPORT');
  return async (sb) => {
    await sb.publish(host, guestPort);
    print(c, { sandbox: sb.name, hostPort: host, guestPort }, `127.0.0.1:${host} -> ${sb.name}:${guestPort}`);
    return EXIT.OK;
  };
};

const cmdUnpublish: SandboxVerb = (c) => {
  const [port] = argsAfterName(c, 1, 'unpublish NAME HOSTPORT');
  const host = hostPort(port, 'HOSTPORT');
  return async (sb) => {
    await sb.unpublish(host);
    print(c, { sandbox: sb.name, hostPort: host, unpublished: true }, `127.0.0.1:${host} no longer forwarded`);
    return EXIT.OK;
  };
};

const cmdSetMaxDuration: SandboxVerb = (c) => {
  const [s] = argsAfterName(c, 1, 'set-max-duration NAME SECONDS');
  const ms = policyMs(s, 'SECONDS');
  return async (sb) => {
    await sb.setMaxDuration(ms / 1000);
    const stopsAt = new Date(Date.now() + ms).toISOString();
    print(c, { sandbox: sb.name, maxDurationMs: ms, stopsAt }, `${sb.name} stops by ${stopsAt} unless set again`);
    return EXIT.OK;
  };
};

async function cmdRun(c: Ctx): Promise<number> {
  const [image, extra] = c.positionals;
  if (extra !== undefined || (image && c.values.image)) throw new CorralError('E_USAGE', `unexpected argument "${extra ?? image}" (one image, then the arguments after --)`);
  const name = (c.values.name as string | undefined) ?? `run-${process.pid}-${Date.now().toString(36)}`;
  const { env: _env, ...config } = configFrom(c, name);
  const ep = c.values.entrypoint;
  // The env flags are the command's; the sandbox itself keeps the image's environment.
  const sb = await Sandbox.create({ ...config, ...(image ? { image } : {}), env: {} } as SandboxConfig, where(c));
  try {
    // `--entrypoint ''` clears the image's entrypoint, as with docker.
    return await runIn(c, sb, execOpts(c), typeof ep === 'string' ? { entrypoint: ep === '' ? [] : [ep] } : {});
  } finally {
    await sb.stop().catch(() => sb.kill());
    await Sandbox.remove(name, where(c)).catch(logFailure(`removing the run's sandbox ${name}`));
  }
}

async function cmdLs(c: Ctx): Promise<number> {
  const labels = pairs(c.values.label, 'label');
  const rows = await Sandbox.list({ supervisor: c.sup, ...(Object.keys(labels).length ? { labels } : {}) });
  const table = [['NAME', 'STATUS', 'IMAGE', 'DETACHED', 'STOP REASON'], ...rows.map((r) => [r.name, r.status, r.image, r.detached ? 'yes' : 'no', r.stopReason ?? ''])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  print(c, rows, table.map((r) => r.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n'));
  return EXIT.OK;
}

/** A `--since` value: ms since the epoch, an ISO date, or a duration ago (`30s`, `5m`, `2h`). */
function sinceTime(v: string): number {
  const ago = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(v);
  if (ago) return Date.now() - Number(ago[1]) * { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[ago[2] as 'ms'];
  if (/^\d+$/.test(v)) return Number(v);
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new CorralError('E_USAGE', `--since takes ms since the epoch, an ISO date or a duration like 5m (got ${JSON.stringify(v)})`);
  return t;
}

async function cmdLogs(c: Ctx): Promise<number> {
  const name = one(c);
  const tail = c.values.tail === undefined ? undefined : Number(c.values.tail);
  if (tail !== undefined && (!Number.isInteger(tail) || tail < 0)) throw new CorralError('E_USAGE', `--tail takes a number of entries (got ${JSON.stringify(c.values.tail)})`);
  const options = {
    ...where(c),
    ...(typeof c.values.since === 'string' ? { since: sinceTime(c.values.since) } : {}),
    ...(tail !== undefined ? { tail } : {}),
  };
  const line = (e: LogEntry) => ({ ts: e.ts, execId: e.execId, stream: e.stream, text: Buffer.from(e.data).toString('utf8') });
  if (c.values.follow) {
    // --json --follow prints one JSON object per line (JSON Lines), as entries arrive.
    const write = (e: LogEntry): void => {
      if (c.json) process.stdout.write(`${JSON.stringify(line(e))}\n`);
      else (e.stream === 'stderr' ? process.stderr : process.stdout).write(e.data);
    };
    const interrupted = new Promise<void>((resolve) => process.once('SIGINT', resolve));
    await Promise.race([lastValueFrom(Sandbox.followLogs(name, options).pipe(tap(write)), { defaultValue: undefined }), interrupted]);
    return EXIT.OK;
  }
  const entries = await Sandbox.logs(name, options);
  if (c.json) print(c, entries.map(line), '');
  else for (const e of entries) (e.stream === 'stderr' ? process.stderr : process.stdout).write(e.data);
  return EXIT.OK;
}

async function cmdSnapshot(c: Ctx): Promise<number> {
  const [sub, a, b, ...extra] = c.positionals;
  const opts = { supervisor: c.sup };
  const args = (n: number, usage: string): void => {
    const given = [a, b].filter((x) => x !== undefined).length;
    if (given !== n || extra.length) throw new CorralError('E_USAGE', `usage: corral snapshot ${usage} (corral help)`);
  };
  switch (sub) {
    case 'ls': {
      args(0, 'ls');
      const list = await Snapshot.list(opts);
      print(c, list, list.map((s) => `${s.name}  from ${s.source}  ${(s.bytes / 2 ** 20).toFixed(1)} MiB  ${new Date(s.createdAt).toISOString()}`).join('\n') || '(no snapshots)');
      return EXIT.OK;
    }
    case 'rm': {
      args(1, 'rm NAME');
      await Snapshot.remove(a!, opts);
      print(c, { removed: a }, `removed ${a}`);
      return EXIT.OK;
    }
    case 'save': {
      args(2, 'save SANDBOX SNAPSHOT');
      const sb = await Sandbox.get(a!, opts);
      try {
        const m = await sb.snapshot(b!);
        print(c, m, `saved ${m.name} from ${m.source}  ${(m.bytes / 2 ** 20).toFixed(1)} MiB; start one with corral create NAME --from-snapshot ${m.name}`);
      } finally {
        await sb.detach();
      }
      return EXIT.OK;
    }
    case 'export': {
      args(2, 'export NAME FILE');
      const r = await Sandbox.exportSnapshot(a!, b!, opts);
      print(c, r, `${r.file}  ${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${(r.ms / 1000).toFixed(1)} s`);
      return EXIT.OK;
    }
    case 'import': {
      args(1, 'import FILE [--name N]');
      const m = await Sandbox.importSnapshot(a!, { ...opts, ...(typeof c.values.name === 'string' ? { name: c.values.name } : {}) });
      print(c, m, `imported ${m.name} (from sandbox ${m.source}); start one with Sandbox.builder(…).fromSnapshot('${m.name}')`);
      return EXIT.OK;
    }
    default:
      throw new CorralError('E_USAGE', `snapshot takes ls, save, rm, export or import (got ${sub === undefined ? 'nothing' : JSON.stringify(sub)})`);
  }
}

async function cmdVolume(c: Ctx): Promise<number> {
  const [sub, name, ...extra] = c.positionals;
  const opts = { supervisor: c.sup };
  const needName = (): string => {
    if (!name) throw new CorralError('E_USAGE', `volume ${sub} needs a volume name (corral help)`);
    if (extra.length) throw new CorralError('E_USAGE', `unexpected argument "${extra[0]}"`);
    return name;
  };
  const show = (v: VolumeInfo): string => `${v.name}  ${v.path}  ${v.usedBy.length ? `used by ${v.usedBy.join(', ')}` : 'unused'}`;
  switch (sub) {
    case 'ls': {
      const list = await Volume.list(opts);
      print(c, list, list.map(show).join('\n') || '(no volumes)');
      return EXIT.OK;
    }
    case 'create': {
      const v = await Volume.create(needName(), opts);
      print(c, v, v.name);
      return EXIT.OK;
    }
    case 'inspect': {
      const v = await Volume.get(needName(), opts);
      print(c, v, show(v));
      return EXIT.OK;
    }
    case 'rm': {
      const n = needName();
      await Volume.remove(n, { ...opts, force: c.values.force === true });
      print(c, { removed: n }, `removed ${n}`);
      return EXIT.OK;
    }
    default:
      throw new CorralError('E_USAGE', `volume takes ls, create, inspect or rm (got ${sub === undefined ? 'nothing' : JSON.stringify(sub)})`);
  }
}

async function cmdImages(c: Ctx): Promise<number> {
  const list = await Image.list({ stateDir: c.sup.stateDir });
  const table = [['REFERENCE', 'DIGEST', 'SIZE'], ...list.map((i) => [i.tags.join(',') || '<none>', i.digest.slice(0, 19), `${(i.sizeBytes / 1048576).toFixed(1)} MiB`])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  print(c, list, table.map((r) => r.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n'));
  return EXIT.OK;
}

async function cmdPull(c: Ctx): Promise<number> {
  const ref = one(c);
  const img = await resolveImage(ref, {
    stateDir: c.sup.stateDir,
    policy: 'always',
    ...(c.values.insecure ? { insecureRegistries: [ref.split('/')[0]!] } : {}),
    ...(c.json ? {} : { onEvent: pullProgress(process.stderr) }),
  });
  print(c, { ref: img.ref, digest: img.digest, layers: img.layers.length, pulled: img.pulled }, `${img.ref}@${img.digest}`);
  return EXIT.OK;
}

async function cmdMcp(c: Ctx): Promise<number> {
  const detached = c.values.detached === true;
  if (c.values.http === undefined) {
    // stdout is the protocol's: nothing else is printed there.
    const { serveMcpStdio } = await import('../mcp/serve.ts');
    await serveMcpStdio({ supervisor: c.sup, detached });
    return EXIT.OK;
  }
  if (!/^\d+$/.test(String(c.values.http)) || Number(c.values.http) > 65535) {
    throw new CorralError('E_INVALID_OPTION', `invalid option --http: a port, an integer from 0 to 65535 (got ${JSON.stringify(c.values.http)})`);
  }
  const token = (c.values.token as string | undefined) ?? process.env.CORRAL_TOKEN;
  const { McpHttpServer } = await import('../mcp/serve.ts');
  const server = await McpHttpServer.listen({
    supervisor: c.sup,
    detached,
    port: Number(c.values.http),
    ...(typeof c.values.host === 'string' ? { host: c.values.host } : {}),
    ...(token ? { token } : {}),
  });
  print(c, { url: `${server.url}/mcp` }, `corral MCP server on ${server.url}/mcp  (Ctrl-C to stop)`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
  return EXIT.OK;
}

/** `serve` (or `ui`): the API of this host's supervisor, or with `--nats` of the whole cluster. */
async function cmdServe(c: Ctx, ui: boolean): Promise<number> {
  const cluster = ui ? undefined : c.cluster;
  const token = (c.values.token as string | undefined) ?? process.env.CORRAL_TOKEN;
  const port = c.values.port === undefined ? (ui ? 0 : 7070) : Number(c.values.port);
  // checked here with the text as typed: past Number() a typo would read "got NaN"
  if (!/^\d+$/.test(String(c.values.port ?? port)) || port > 65535) {
    throw new CorralError('E_INVALID_OPTION', `invalid option --port: an integer from 0 to 65535 (got ${JSON.stringify(c.values.port)})`);
  }
  const { CorralServer } = await import('../server/CorralServer.ts');
  const server = await CorralServer.listen({
    ...(cluster ? { cluster } : { supervisor: c.sup }),
    port,
    ...(!ui && typeof c.values.host === 'string' ? { host: c.values.host } : {}),
    ...(token && !ui ? { token } : {}),
  });
  const url = ui ? `${server.url}/ui` : server.url;
  print(c, { url }, ui ? `corral inspector: ${url}  (Ctrl-C to stop)` : `corral API on ${url}  (Ctrl-C to stop)`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
  return EXIT.OK;
}
