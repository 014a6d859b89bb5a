/**
 * Lifecycle benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench:lifecycle        (RUNS=5 to change the sample count)
 *
 * - pause → resume latency (QMP stop + cont through the actor), and the raw QMP floor is
 *   not separable from the SDK call here, so each verb's own latency is printed.
 * - stop latency (graceful: agent sync + guest shutdown + process exit).
 * - detached: createDetached → handle ready, and Sandbox.get → first exec (reconnect).
 */
import { kernelLabel } from '../src/runtime/kernel.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { fmtMs } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const sup = new Supervisor({ stateDir: mkdtempSync(join(tmpdir(), 'corral-bench-state-')) });
console.log(`corral lifecycle bench — ${new Date().toISOString()} — accel ${resolveAccel().accel}, kernel ${kernelLabel()}, node ${process.version}`);

const sb = await Sandbox.builder('bench-pause').supervisor(sup).create();
const pause: number[] = [];
const resume: number[] = [];
for (let i = 0; i < 30; i++) {
  let t0 = performance.now();
  await sb.pause();
  pause.push(performance.now() - t0);
  t0 = performance.now();
  await sb.resume();
  resume.push(performance.now() - t0);
}
await sb.exec('true');
console.log(`pause:                               ${fmtMs(pause)}`);
console.log(`resume:                              ${fmtMs(resume)}`);
await sb.stop();

const stop: number[] = [];
const detachedCreate: number[] = [];
const reconnect: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const s = await Sandbox.builder(`bench-stop-${i}`).supervisor(sup).create();
  await s.exec('true');
  const t0 = performance.now();
  await s.stop();
  stop.push(performance.now() - t0);

  const t1 = performance.now();
  const d = await Sandbox.builder(`bench-det-${i}`).supervisor(sup).createDetached();
  detachedCreate.push(performance.now() - t1);
  await d.detach();
  const t2 = performance.now();
  const again = await Sandbox.get(`bench-det-${i}`, { supervisor: sup });
  await again.exec('true');
  reconnect.push(performance.now() - t2);
  await again.stop();
}
console.log(`stop (graceful, to process exit):    ${fmtMs(stop)}`);
console.log(`createDetached → handle:             ${fmtMs(detachedCreate)}`);
console.log(`Sandbox.get → first exec result:     ${fmtMs(reconnect)}`);
await sup.close();
rmSync(sup.stateDir, { recursive: true, force: true });
