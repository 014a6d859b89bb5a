/**
 * Leak check, a setupFile: after each test file, nothing the file created may be left.
 *
 * Each file runs in its own child process (pool 'forks'), two at a time, so "created by this
 * file" is told apart from what the other file running beside it creates:
 * - active handles and requests: those that keep this process's loop alive (what
 *   `process.getActiveResourcesInfo()` lists: ref'd timers, sockets, pipes, child processes)
 *   and were created after a beforeAll baseline by code of this repository, not by vitest
 *   (the runner's own timers come and go during hooks, so counting by type is not enough:
 *   an async_hooks hook records each resource's creation stack);
 * - processes: every process whose environment carries this file's CORRAL_LEAK_TAG (set here,
 *   inherited by qemu, detached hosts (setsid'd, so not descendants) and helper scripts);
 * - temp dirs and unix sockets: TMPDIR points at a directory of this file's own, so every
 *   `mkdtemp(tmpdir()…)` of the file and of its children (run dirs with the VM sockets, state
 *   dirs, scratch) lands there; whatever is still in it at the end leaked. Sockets made by
 *   this file in the run's shared state dir (CORRAL_STATE_DIR) and left there count too.
 * The file fails with a list of what leaked; the leftovers are then removed (processes killed)
 * so one leak does not cascade into the next file.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHook } from 'node:async_hooks';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
/** Resources created since the baseline by this repo's code and not destroyed yet. */
const created = new Map<number, { type: string; resource: { hasRef?: () => boolean }; where: string }>();
let tracking = false;
/** The kinds that can outlive a file (ticks, immediates and fs requests end by themselves). */
const LINGERING = new Set(['Timeout', 'TCPWRAP', 'TCPSERVERWRAP', 'PIPEWRAP', 'PIPESERVERWRAP', 'PROCESSWRAP', 'TTYWRAP', 'SIGNALWRAP', 'UDPWRAP', 'FSEVENTWRAP', 'STATWATCHER', 'MESSAGEPORT', 'WORKER']);
const hook = createHook({
  init(id, type, _trigger, resource) {
    if (!tracking || !LINGERING.has(type)) return;
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 40;
    const stack = new Error().stack ?? '';
    Error.stackTraceLimit = limit;
    const frame = stack.split('\n').find((l) => l.includes(REPO) && !l.includes('/node_modules/') && !l.includes(SELF));
    if (frame) created.set(id, { type, resource: resource as { hasRef?: () => boolean }, where: frame.trim() });
  },
  destroy(id) {
    created.delete(id);
  },
});
hook.enable();

const tag = `${process.pid}-${Date.now()}`;
// A directory of its own, made fresh: one named by the pid alone was found already there (left
// by a run that was killed, whose process had the same pid), and its symlink below failed
// with EEXIST before any test ran.
const ownTmp = mkdtempSync(join(tmpdir(), `corral-leak-${process.pid}-`));
// tsx keeps its compile cache in <tmpdir>/tsx-<uid>: children started by this file share the
// real one (a cold cache per file would slow every child), and it is no leak.
const tsxCache = `tsx-${process.getuid?.() ?? 0}`;
mkdirSync(join(tmpdir(), tsxCache), { recursive: true, mode: 0o700 });
symlinkSync(join(tmpdir(), tsxCache), join(ownTmp, tsxCache));
process.env.CORRAL_LEAK_TAG = tag;
process.env.TMPDIR = ownTmp;
const stateDir = process.env.CORRAL_STATE_DIR;
const startedAt = Date.now();

let baseline = new Map<string, number>();
let baselineSockets = new Set<string>();

/** Processes (other than this one) carrying this file's tag, as `pid cmdline`. */
function taggedProcesses(): Array<{ pid: number; cmd: string }> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const d of readdirSync('/proc')) {
    const pid = Number(d);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      if (!readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(`CORRAL_LEAK_TAG=${tag}`)) continue;
      if (/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'latin1'))) continue; // a zombie holds nothing
      out.push({ pid, cmd: readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').join(' ').trim().slice(0, 160) });
    } catch (err) {
      // Ended while being read (ENOENT, ESRCH), or not ours to read (EACCES: init, other users).
      if (!['ENOENT', 'ESRCH', 'EACCES', 'EPERM'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
    }
  }
  return out;
}

function socketsUnder(dir: string, depth = 4): string[] {
  const out: string[] = [];
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return out;
    throw err;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isSocket()) out.push(p);
    else if (e.isDirectory() && depth > 0) out.push(...socketsUnder(p, depth - 1));
  }
  return out;
}

function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

function leaks(): string[] {
  const found: string[] = [];
  // Handles other than timers: vitest's own (its IPC pipes) stay the same, so a count above
  // the baseline is the file's, also one made in a callback (a listen after a lookup) that
  // no creation stack ties to this repo.
  for (const [type, n] of resources()) {
    const extra = n - (baseline.get(type) ?? 0);
    if (type !== 'Timeout' && extra > 0) found.push(`${extra} more active ${type} than before the file (process.getActiveResourcesInfo)`);
  }
  for (const { type, resource, where } of created.values()) {
    // Only what keeps the loop alive (an unref'd timer or handle does not).
    if (typeof resource.hasRef === 'function' && !resource.hasRef()) continue;
    found.push(`an active ${type} created ${where}`);
  }
  for (const p of taggedProcesses()) found.push(`process ${p.pid} still alive: ${p.cmd}`);
  for (const e of readdirSync(ownTmp)) if (e !== tsxCache) found.push(`temp entry left: ${join(ownTmp, e)}`);
  if (stateDir) {
    for (const s of socketsUnder(stateDir)) {
      if (baselineSockets.has(s)) continue;
      const st = statSync(s, { throwIfNoEntry: false });
      if (st && st.ctimeMs >= startedAt && !otherFileOwns(s)) found.push(`unix socket left: ${s}`);
    }
  }
  return found;
}

/** A socket some other live process has open (the other test file's sandbox) is not ours. */
function otherFileOwns(socket: string): boolean {
  const inode = statSync(socket, { throwIfNoEntry: false })?.ino;
  if (inode === undefined) return true;
  return readFileSync('/proc/net/unix', 'latin1').split('\n').some((l) => l.endsWith(` ${socket}`));
}

beforeAll(() => {
  baseline = resources();
  tracking = true;
  baselineSockets = new Set(stateDir ? socketsUnder(stateDir) : []);
});

afterAll(async () => {
  tracking = false;
  // Handles close and processes exit a little after the close that ends them: poll, bounded.
  let found = leaks();
  for (let i = 0; i < 40 && found.length; i++) {
    await new Promise((r) => setTimeout(r, 100));
    found = leaks();
  }
  for (const p of taggedProcesses()) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // gone meanwhile
    }
  }
  rmSync(ownTmp, { recursive: true, force: true });
  hook.disable();
  if (found.length) throw new Error(`this test file leaked:\n  ${found.join('\n  ')}`);
});
