/**
 * The host process of a detached sandbox. Started by `createDetached()` in a session of its
 * own (`setsid`), it owns the sandbox's worker (and so its VM and its policy timers) and
 * serves the sandbox's API on a unix socket that any process can reach by name.
 *
 *   node --import tsx src/detached/hostMain.ts <stateDir> [--replace]   (config JSON on stdin)
 *   node --import tsx src/detached/hostMain.ts <stateDir> --spare <socket>
 *
 * It prints one JSON line on stdout — `{ "ready": info }` or `{ "error": … }` — and never
 * writes there again (its creator may be gone). It exits when the sandbox has stopped.
 *
 * With `--spare` it starts its supervisor and worker first and waits on `<socket>` for the
 * create it will host (src/link/spareHost.ts): the config and flags come on that
 * connection, and the line goes back on it instead of stdout. Unused, it ends by itself.
 */

import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError, serializeError } from '../errors.ts';
import type { WorkerLink } from '../link/WorkerLink.ts';
import { Supervisor } from '../supervisor/Supervisor.ts';
import { FORWARDED_CALLS, LineSplitter, controlSocketPath, fromWire, socketAnswers, toWire, type WireRequest } from '../link/wire.ts';
import { logFailure } from '../runtime/log.ts';
import { waitAsSpare } from '../link/spareHost.ts';

const CALLS = new Set<string>(FORWARDED_CALLS);
const END_CALLS = new Set(['stop', 'kill', 'drain', 'stopped']);

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}

/** Where the one line goes: stdout, or a spare's connection. */
let say = (line: unknown): Promise<void> => new Promise((resolve) => process.stdout.write(`${JSON.stringify(line)}\n`, () => resolve()));

const [stateDir, ...argFlags] = process.argv.slice(2);
if (!stateDir) {
  await say({ error: { name: 'Error', message: 'usage: hostMain <stateDir>' } });
  process.exit(2);
}
const spareAt = argFlags.includes('--spare') ? argFlags[argFlags.indexOf('--spare') + 1] : undefined;

// One sandbox per host process: one worker is all its pool needs.
const sup = new Supervisor({ stateDir, workers: 1 });
let config: SandboxConfig;
let flags: readonly string[] = argFlags;
if (spareAt) {
  sup.pool.warm();
  const taken = await waitAsSpare(spareAt);
  if (!taken) {
    await sup.close();
    process.exit(0);
  }
  config = taken.request.config as SandboxConfig;
  flags = taken.request.flags;
  say = taken.answer;
} else {
  config = JSON.parse(await readStdin()) as SandboxConfig;
}
const socketPath = controlSocketPath(stateDir, config.name);
mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
// A live host of the same name owns this socket: taking it over would cut that sandbox off
// from every client (the create then fails here anyway, and would remove the socket).
if (existsSync(socketPath) && (await socketAnswers(socketPath))) {
  await say({ error: serializeError(new CorralError('E_SANDBOX_EXISTS', `a sandbox named "${config.name}" is already running detached (its host answers on ${socketPath})`)) });
  await sup.close();
  process.exit(1);
}
rmSync(socketPath, { force: true });

const clients = new Set<Socket>();
let ctl: WorkerLink | undefined;

// Every event is in the replay buffer before it is published here: in LMDB, or held by the
// supervisor until the worker's write of it commits (the replay read below sees both).
sup.events$.subscribe((e) => {
  const line = `${JSON.stringify(toWire({ event: e }))}\n`;
  for (const c of clients) if ((c as Socket & { subscribed?: boolean }).subscribed) c.write(line);
});

/** File watches started over each connection: a client that goes away takes its watches with it. */
const watchesOf = new WeakMap<Socket, Set<number>>();

const server = createServer((sock) => {
  clients.add(sock);
  sock.setEncoding('utf8');
  const lines = new LineSplitter();
  sock.on('close', () => {
    clients.delete(sock);
    for (const id of watchesOf.get(sock) ?? []) void ctl?.api.watchStop(id).catch(logFailure(`stopping watch ${id} of a client that went away`));
  });
  sock.on('error', () => sock.destroy());
  sock.on('data', (chunk: string) => {
    let reqs: WireRequest[];
    try {
      reqs = lines.push(chunk).map((l) => fromWire(JSON.parse(l)) as WireRequest);
    } catch {
      sock.destroy();
      return;
    }
    for (const req of reqs) void answer(sock, req);
  });
});

async function answer(sock: Socket, req: WireRequest): Promise<void> {
  try {
    let result: unknown;
    if (req.method === 'subscribe') {
      // Replay first, then live, in one tick: the client's stream has no gap and no
      // duplicate. No `since` (or a negative one): live events only.
      const since = req.args[0];
      if (typeof since === 'number' && since >= 0) {
        const r = sup.replayLog.read(config.name, since);
        if (r.missed !== undefined) {
          const gap: SandboxEvent = { type: 'stream.gap', name: config.name, seq: r.missed, ts: Date.now(), since, missed: r.missed };
          sock.write(`${JSON.stringify(toWire({ event: gap }))}\n`);
        }
        for (const e of r.events) sock.write(`${JSON.stringify(toWire({ event: e }))}\n`);
      }
      (sock as Socket & { subscribed?: boolean }).subscribed = true;
    } else if (CALLS.has(req.method) && ctl) {
      const fn = (ctl.api as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[req.method]!;
      // JSON has no undefined: an omitted optional argument (stop()'s timeoutMs) arrives as
      // null, which must not read as a value (a null stop timeout was a kill with no sync).
      result = await fn(...req.args.map((a) => (a === null ? undefined : a)));
      // The verbs that end the sandbox answer at its end state: once the store says
      // stopped, so the caller's next remove() or list() reads it so.
      if (END_CALLS.has(req.method)) await sup.recordStopped(ctl);
      if (req.method === 'watchStart' || req.method === 'watchStop') {
        const ids = watchesOf.get(sock) ?? new Set<number>();
        watchesOf.set(sock, ids);
        if (req.method === 'watchStart') ids.add(req.args[0] as number);
        else ids.delete(req.args[0] as number);
      }
    } else {
      throw new TypeError(`unknown method ${req.method}`);
    }
    sock.write(`${JSON.stringify(toWire({ id: req.id, result }))}\n`);
  } catch (err) {
    if (!sock.destroyed) sock.write(`${JSON.stringify({ id: req.id, error: serializeError(err) })}\n`);
  }
}

await new Promise<void>((resolve) => server.listen(socketPath, resolve));
// Only this user may drive the sandbox (the run dir is 0700 already).
chmodSync(socketPath, 0o600);

try {
  ctl = flags.includes('--restart')
    ? await sup.restart(config.name, { controlSocket: socketPath })
    : await sup.create(config, { replace: flags.includes('--replace'), controlSocket: socketPath });
  await say({ ready: await ctl.api.info() });
} catch (err) {
  await say({ error: serializeError(err) });
  server.close();
  rmSync(socketPath, { force: true });
  await sup.close();
  process.exit(1);
}

// A polite signal to the host is a request to stop the sandbox, not to drop it.
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => void ctl?.api.stop().catch(logFailure(`stopping the sandbox on ${sig}`)));

// From here on nobody reads our stdout; a write there must not kill us.
process.stdout.on('error', () => {});
process.stdin.destroy();

await ctl.api.stopped();
// Let the last events reach connected clients before the socket goes.
await new Promise((r) => setTimeout(r, 100));
server.close();
rmSync(socketPath, { force: true });
await ctl.terminate();
await sup.close();
// The clients' connections are left to close with this process: a client that waits for
// its connection to close (SocketLink.release after a stop) then knows this host is gone.
process.exit(0);
