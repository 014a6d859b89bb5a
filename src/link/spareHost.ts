/**
 * Spare hosts: a detached sandbox's host process started ahead of the create that needs it.
 *
 * A detached create used to pay for a new process before its sandbox could start: node, the
 * host's modules, the supervisor and its worker thread, ~0.8 s of the ~0.9 s a `corral
 * create` took, where an attached create takes ~0.12 s. So after each detached create a spare
 * host is started, and waits, with its supervisor open and its worker loaded, on a socket in
 * the state dir's run dir. The next detached create hands it its config there and it goes on
 * exactly as a host started for that create (src/detached/hostMain.ts); a new spare follows.
 *
 * - One spare per state dir and launch: its socket (`<stateDir>/run/spare/<digest>.sock`) is named by a digest of what the host
 *   would be started with (node, the host's entry and the code's stamp, the runtime
 *   variables), so a create never lands in a spare of other code or settings.
 * - The first connection takes it: the spare answers `{"spare":pid}` and unlinks its socket at
 *   once; any other connection is closed unanswered, and its create starts a host of its own.
 * - It ends by itself after {@link spareIdleMs} unused, or as soon as its socket is gone (the
 *   state dir removed, say): it holds no VM and nothing of the store's but an open handle.
 * - `CORRAL_SPARE_HOST=0` turns spares off (the test suite's default: each test file must end
 *   with no process of its own left).
 */

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { RUNTIME_VARS } from '../runtime/actorEnv.ts';
import { BUNDLED, sourceStamp } from '../runtime/dist.ts';
import { LineSplitter, socketAnswers } from './wire.ts';
import { logFailure } from '../runtime/log.ts';

/** How long a spare waits for a create before it ends: `CORRAL_SPARE_IDLE_MS`, default 10 min. */
export function spareIdleMs(): number {
  const v = Number(process.env.CORRAL_SPARE_IDLE_MS);
  return Number.isFinite(v) && v > 0 ? v : 10 * 60_000;
}

/** Whether detached creates keep a spare host (`CORRAL_SPARE_HOST=0`: no). */
export function sparesEnabled(): boolean {
  return process.env.CORRAL_SPARE_HOST !== '0';
}

/**
 * The socket a spare for `stateDir`, started as `argv` (node's arguments before the state dir),
 * listens on: named by a digest of all that decides what the host would run.
 */
export function spareSocketPath(stateDir: string, argv: readonly string[]): string {
  const entry = argv.find((a) => a.endsWith('.mjs') || a.endsWith('.ts'));
  const h = createHash('sha256').update(JSON.stringify({
    node: process.execPath,
    version: process.version,
    argv,
    // The bundle changes as a whole when it is rebuilt; the sources, file by file.
    code: entry?.endsWith('.mjs') || BUNDLED ? `${entry}:${entry ? statSync(entry, { throwIfNoEntry: false })?.mtimeMs : ''}` : sourceStamp(),
    env: RUNTIME_VARS.map((k) => [k, process.env[k] ?? null]),
  }));
  // Beside the control sockets, not among them: no sandbox's name can make it one.
  return join(stateDir, 'run', 'spare', `${h.digest('hex').slice(0, 16)}.sock`);
}

/** Starts a spare host for `stateDir` (it ends at once if one is there already). */
export function startSpare(stateDir: string, argv: readonly string[]): void {
  const child = spawn(process.execPath, [...argv, stateDir, '--spare', spareSocketPath(stateDir, argv)], { detached: true, stdio: 'ignore' });
  child.unref();
}

/** What a create hands a spare: the host's config and flags, as a started host gets them. */
export interface SpareRequest {
  readonly config: unknown;
  readonly flags: readonly string[];
}

/** A spare that took a create: its connection, on which the host's answer line comes next. */
export interface TakenSpare {
  readonly pid: number;
  /** Resolves with the host's first line (`{ ready }` or `{ error }`), or undefined if it closed first. */
  readonly answer: Promise<string | undefined>;
}

/**
 * Hands `request` to the spare of `path` if there is one: resolves once the spare said it took
 * it, or with undefined (no spare, a dead one's socket, or another create took it first).
 */
export function takeSpare(path: string, request: SpareRequest): Promise<TakenSpare | undefined> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.setEncoding('utf8');
    const lines = new LineSplitter();
    let taken: ((line: string | undefined) => void) | undefined;
    socket.on('error', () => socket.destroy());
    socket.on('close', () => (taken ? taken(undefined) : resolve(undefined)));
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: string) => {
      let got: string[];
      try {
        got = lines.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const line of got) {
        if (taken) {
          taken(line);
          socket.destroy();
          return;
        }
        let pid: unknown;
        try {
          pid = (JSON.parse(line) as { spare?: unknown }).spare;
        } catch {
          pid = undefined;
        }
        if (typeof pid !== 'number') {
          socket.destroy();
          return;
        }
        const answer = new Promise<string | undefined>((r) => (taken = r));
        resolve({ pid, answer });
      }
    });
  });
}

/**
 * Serves as the spare of `path` until a create takes it: resolves with the request and the
 * means to answer it, or with undefined when it should end unused (another spare holds the
 * socket, it sat idle for `idleMs`, or its socket was removed).
 */
export async function waitAsSpare(path: string, idleMs: number = spareIdleMs()): Promise<{ request: SpareRequest; answer(line: unknown): Promise<void> } | undefined> {
  // The run dir is there once a detached sandbox was: a spare never makes it (a state dir
  // removed while this process started must stay removed).
  if (!existsSync(dirname(dirname(path)))) return undefined;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const server = createServer();
  const listen = () =>
    new Promise<boolean>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(false) : reject(err));
      server.once('error', onError);
      server.listen(path, () => {
        server.off('error', onError);
        resolve(true);
      });
    });
  let listening: boolean;
  try {
    listening = await listen();
  } catch (err) {
    // A path too long for a unix socket, say: no spare here; creates start hosts of their own.
    logFailure(`serving as a spare host on ${path}`)(err);
    return undefined;
  }
  if (!listening) {
    // A live spare answers a connection (one that sends nothing does not take it); a dead
    // one's socket file refuses it, and is replaced.
    if (await socketAnswers(path)) return undefined;
    rmSync(path, { force: true });
    if (!(await listen())) return undefined;
  }
  chmodSync(path, 0o600);
  return new Promise((resolve) => {
    let taken = false;
    const stop = () => {
      clearTimeout(idle);
      clearInterval(watch);
      server.close();
    };
    const idle = setTimeout(() => {
      stop();
      rmSync(path, { force: true });
      resolve(undefined);
    }, idleMs);
    const watch = setInterval(() => {
      if (existsSync(path)) return;
      stop();
      resolve(undefined);
    }, 1000);
    server.on('connection', (sock) => {
      sock.setEncoding('utf8');
      sock.on('error', () => sock.destroy());
      const lines = new LineSplitter();
      sock.on('data', (chunk: string) => {
        let request: SpareRequest | undefined;
        try {
          const [first] = lines.push(chunk);
          if (first === undefined) return;
          const r = JSON.parse(first) as Partial<SpareRequest>;
          if (r.config !== undefined && Array.isArray(r.flags) && r.flags.every((f) => typeof f === 'string')) request = { config: r.config, flags: r.flags };
        } catch {
          request = undefined;
        }
        if (!request || taken) {
          sock.destroy();
          return;
        }
        taken = true;
        stop();
        rmSync(path, { force: true });
        sock.removeAllListeners('data');
        sock.write(`${JSON.stringify({ spare: process.pid })}\n`);
        // The line is out once the socket finished, or there is no one left to read it.
        const answer = (line: unknown) => new Promise<void>((done) => sock.once('close', done).end(`${JSON.stringify(line)}\n`, () => done()));
        resolve({ request, answer });
      });
    });
  });
}
