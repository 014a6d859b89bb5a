/**
 * CPU figures of a VM, which tests do not assert (they are timing, and this 2-core machine
 * is shared): CPU % of the qemu process idle, with the guest burning a core, and paused; the
 * clock ticks a paused VM uses in a second (test/sdk/policies.test.ts and
 * test/metrics/metrics.test.ts test the conditions). Prints figures; asserts nothing.
 *
 *   npm run bench:cpu        (RUNS=5 to change the sample count)
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Sandbox, Supervisor } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { summary } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const WINDOW_MS = 1500;

/** utime + stime of a process, in clock ticks (USER_HZ = 100). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** CPU % of the VM over one window: a first sample opens it, the second closes it. */
async function percentOver(sb: Sandbox): Promise<number> {
  await sb.metrics();
  await sleep(WINDOW_MS);
  return (await sb.metrics()).cpuPercent;
}

const fmt = (label: string, xs: number[], unit: string) => {
  const s = summary(xs);
  console.log(`${label.padEnd(36)} median ${s.median.toFixed(1)} ${unit}, p95 ${s.p95.toFixed(1)} ${unit} (n=${s.n})`);
};

const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir });
console.log(`corral cpu bench — ${new Date().toISOString()} — accel ${resolveAccel().accel}, node ${process.version}, ${WINDOW_MS} ms windows`);
try {
  const sb = await Sandbox.builder('bench-cpu').supervisor(sup).create();
  const { pid } = await sb.info();
  const idle: number[] = [];
  const busy: number[] = [];
  const paused: number[] = [];
  const pausedTicks: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    idle.push(await percentOver(sb));
    const burn = await sb.execStream('sh', ['-c', 'while :; do :; done']);
    busy.push(await percentOver(sb));
    await sb.pause();
    await sleep(300); // in-flight work settles
    const [ticks0, at0] = [cpuTicks(pid!), performance.now()];
    paused.push(await percentOver(sb));
    pausedTicks.push(((cpuTicks(pid!) - ticks0) * 1000) / (performance.now() - at0));
    await sb.resume();
    await burn.kill(9);
    await burn.exited;
  }
  fmt('cpu % idle:', idle, '%');
  fmt('cpu % guest burning a core:', busy, '%');
  fmt('cpu % paused:', paused, '%');
  fmt('clock ticks per second while paused:', pausedTicks, 'ticks/s');
  await sb.stop();
} finally {
  await sup.close();
  rmSync(stateDir, { recursive: true, force: true });
}
