/**
 * File watch benchmark: how long a change in the guest takes to reach the host as an
 * `sb.fs().watch` event. Prints figures; asserts nothing.
 *
 *   npm run bench:watch            (RUNS=100 to change the sample count; -- --json adds the
 *                                   figures as one JSON line at the end)
 *
 * - guest change → watch event, against its floor measured in the same loop: one shell in
 *   the guest reads a number on its stdin, creates a file of that name (a builtin
 *   redirection, no fork) and echoes the number. The host times, from sending the number,
 *   the exec output event carrying the echo (the floor: the guest→host path every exec's
 *   output takes) and the watch event of the file, which left the guest at the same moment
 *   through inotify and the agent's WATCH_EVENTS frame instead.
 * - fs().write → the file's `write` event, against the fs().write round trip itself (an open,
 *   a write and a close, each a round trip to the agent): what a host program that writes
 *   and watches sees. The event can come before the call's answer: it leaves the guest at
 *   the write, before the close.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor } from '../src/index.ts';
import { kernelLabel } from '../src/runtime/kernel.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 100);
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir });
const accel = resolveAccel();
console.log(`corral watch bench — ${new Date().toISOString()} — accel ${accel.accel}, kernel ${kernelLabel()}, node ${process.version}`);
const report = new BenchReport('watch');

const sb = await Sandbox.builder('bench-watch').supervisor(sup).create();
await sb.fs().mkdir('/tmp/b');
const watch = await sb.fs().watch('/tmp/b');

/** Resolvers waiting for a watch event of a file name, or for an echoed number. */
const created = new Map<string, () => void>();
const written = new Map<string, () => void>();
// Read as a user's loop reads it; a pending iteration also keeps this process alive.
void (async () => {
  for await (const e of watch) (e.type === 'create' ? created : e.type === 'write' ? written : undefined)?.get(e.name)?.();
})();
const arrival = (waiters: Map<string, () => void>, key: string, t0: number) =>
  new Promise<number>((resolve) => waiters.set(key, () => (waiters.delete(key), resolve(performance.now() - t0))));

const shell = await sb.execStream('sh', ['-c', 'while read n; do : > /tmp/b/g$n; echo $n; done'], { stdin: 'pipe' });
const echoed = new Map<string, () => void>();
void (async () => {
  let pending = '';
  for await (const item of shell) {
    if (item.type !== 'stdout') continue;
    pending += Buffer.from(item.data).toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const l of lines) echoed.get(l)?.();
  }
})();

const outputMs: number[] = [];
const watchMs: number[] = [];
for (let i = 0; i < RUNS + 5; i++) {
  const t0 = performance.now();
  const out = arrival(echoed, String(i), t0);
  const ev = arrival(created, `g${i}`, t0);
  await shell.write(`${i}\n`);
  const [o, w] = await Promise.all([out, ev]);
  // The first few warm the guest's paths up (under TCG a path's first run translates it).
  if (i >= 5) (outputMs.push(o), watchMs.push(w));
}
await shell.end();
await shell.exited;

const writeMs: number[] = [];
const writeEventMs: number[] = [];
for (let i = 0; i < RUNS + 5; i++) {
  const t0 = performance.now();
  const ev = arrival(written, `w${i}`, t0);
  await sb.fs().write(`/tmp/b/w${i}`, 'x');
  const tw = performance.now() - t0;
  const te = await ev;
  if (i >= 5) (writeMs.push(tw), writeEventMs.push(te));
}
await watch.stop();
await sb.stop();

console.log(`guest echo → exec output event (floor): ${fmtMs(outputMs)}`);
console.log(`guest create → watch event:             ${fmtMs(watchMs)}   ${ratio(watchMs, outputMs)} the floor`);
console.log(`fs().write round trip (floor):          ${fmtMs(writeMs)}`);
console.log(`fs().write → its write event:           ${fmtMs(writeEventMs)}   ${ratio(writeEventMs, writeMs)} the floor`);
report.add('exec_output_event', outputMs, 'ms');
report.add('watch_event', watchMs, 'ms', quantile(outputMs, 0.5));
report.add('fs_write', writeMs, 'ms');
report.add('fs_write_watch_event', writeEventMs, 'ms', quantile(writeMs, 0.5));
await sup.close();
rmSync(stateDir, { recursive: true, force: true });
report.print();
