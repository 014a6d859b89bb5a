/**
 * Boot and exec benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench            (RUNS=7 EXECS=100 to change the sample counts; -- --json adds
 *                             the figures as one JSON line at the end; -- --floors prints
 *                             only the cold-boot floor of each kernel)
 *
 * - create → first exec result, against the floor measured in the same run: a bare qemu
 *   boot of the same kernel + initramfs until the agent (the initramfs's /init) says HELLO,
 *   driven by a dozen lines of Node with no corral code in the path.
 * - exec round trip of `true`, against its floor: a raw PING/PONG over the same virtio-serial
 *   port plus the guest's spawn of `true` timed by the agent itself (PROBE SPAWN), and
 *   against a PROBE SPAWN of one `true` asked and answered over the port between the same
 *   idle gaps (a lone spawn costs this guest more than one of a batch).
 * - stdout throughput of an exec collecting 64 MiB, against the same command in the guest
 *   into /dev/null and into a drained pipe (PROBE SPAWN), and the raw port (PROBE SINK: the
 *   agent's own bytes), with the host CPU of this process per GiB of output.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor } from '../src/index.ts';
import { bareBoot as bareBootFloor } from './floors.ts';
import { loadArtifacts } from '../src/runtime/artifacts.ts';
import { kernelLabel, manifestKernels, resolveKernel, type GuestKernel, type KernelName } from '../src/runtime/kernel.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 7);
const EXECS = Number(process.env.EXECS ?? 100);

const report = new BenchReport('boot');
const floorsOnly = process.argv.includes('--floors');
const sup = new Supervisor({ stateDir: mkdtempSync(join(tmpdir(), 'corral-bench-state-')) });
const accel = resolveAccel();
/** The bare cold-boot floor of kernel `k` (CORRAL_KERNEL's choice by default): bench/floors.ts. */
const bareBoot = (k?: GuestKernel) => bareBootFloor(accel.accel, k);
console.log(`corral boot bench — ${new Date().toISOString()} — accel ${accel.accel} (${accel.reason}), kernel ${kernelLabel()}, node ${process.version}`);

// --floors: only the per-kernel floors below.
if (!floorsOnly) {
  // Warm-up: page cache, first-use costs.
  await bareBoot();
  {
    const sb = await Sandbox.builder('bench-warm').template(false).supervisor(sup).create();
    await sb.exec('true');
    await sb.stop();
    await sup.remove('bench-warm');
  }

  const floor: number[] = [];
  const create: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    floor.push(await bareBoot());
    const t0 = performance.now();
    // Cold boots: the floor is a cold boot too (restores are bench/template.bench.ts).
    const sb = await Sandbox.builder(`bench-${i}`).template(false).supervisor(sup).create();
    await sb.exec('true');
    create.push(performance.now() - t0);
    await sb.stop();
    await sup.remove(`bench-${i}`);
  }
  console.log(`bare qemu boot → agent HELLO (floor):   ${fmtMs(floor)}`);
  console.log(`create (cold boot) → first exec result:  ${fmtMs(create)}   ${ratio(create, floor)} the floor`);
  report.add('bare_boot', floor, 'ms');
  report.add('cold_create_first_exec', create, 'ms', quantile(floor, 0.5));

  const sb = await Sandbox.builder('bench-exec').supervisor(sup).create();
  const pings: number[] = [];
  const execs: number[] = [];
  const spawnTrips: number[] = [];
  const loneSpawns: number[] = [];
  for (let i = 0; i < 10; i++) await sb.exec('true');
  for (let i = 0; i < EXECS; i++) {
    pings.push(await sb.ping(64));
    const t0 = performance.now();
    await sb.exec('true');
    execs.push(performance.now() - t0);
    // The same spawn asked for in one frame and answered in one, between the same idle gaps
    // as an exec: what an exec would cost with nothing of corral's but the port in its path.
    const t1 = performance.now();
    const one = await sb.probe({ op: 'spawn', argv: ['true'], count: 1 });
    spawnTrips.push(performance.now() - t1);
    if (one.op === 'spawn') loneSpawns.push(one.ms[0]!);
  }
  // The guest's own cost of spawning `true`, timed by the agent (vfork to reaped).
  const spawned = await sb.probe({ op: 'spawn', argv: ['true'], count: EXECS });
  const spawnMs = spawned.op === 'spawn' ? [...spawned.ms] : [];
  const execFloor = quantile(pings, 0.5) + quantile(spawnMs, 0.5);
  console.log(`raw PING/PONG over the agent port:       ${fmtMs(pings)}`);
  console.log(`guest spawn of \`true\` (agent-timed):    ${fmtMs(spawnMs)}`);
  report.add('ping', pings, 'ms');
  report.add('guest_spawn_true', spawnMs, 'ms');
  report.add('exec_true', execs, 'ms', execFloor);
  console.log(`exec round trip of \`true\`:               ${fmtMs(execs)}   ×${(quantile(execs, 0.5) / execFloor).toFixed(2)} the floor (ping + spawn medians, ${execFloor.toFixed(2)} ms; goal ≤ ×1.3)`);
  // A spawn after the guest sat idle for a round trip costs it more than one of a batch: the
  // floor above takes the batch's; these take a lone one's.
  console.log(`  guest spawn of \`true\` alone (agent-timed): ${fmtMs(loneSpawns)}`);
  console.log(`  PROBE SPAWN of one \`true\`, round trip:  ${fmtMs(spawnTrips)}`);
  console.log(`  exec round trip against that:          ×${(quantile(execs, 0.5) / quantile(spawnTrips, 0.5)).toFixed(2)}`);
  report.add('guest_spawn_true_alone', loneSpawns, 'ms');
  report.add('exec_true_vs_probe_trip', execs, 'ms', quantile(spawnTrips, 0.5));

  // stdout: the figure and its floors, each 64 MiB, each from the same sandbox in this run.
  const SIZE = 64 * 1024 * 1024;
  const ROUNDS = 3;
  const rate = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);
  const guestRate = async (script: string) => {
    const r = await sb.probe({ op: 'spawn', argv: ['sh', '-c', script], count: ROUNDS });
    if (r.op !== 'spawn' || r.status !== 0) throw new Error(`guest floor \`${script}\` failed: ${JSON.stringify(r)}`);
    return r.ms.map((ms) => rate(SIZE, ms));
  };
  const toNull = await guestRate(`head -c ${SIZE} /dev/zero >/dev/null`);
  const toPipe = await guestRate(`head -c ${SIZE} /dev/zero | cat >/dev/null`);
  const port: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await sb.probe({ op: 'sink', bytes: SIZE });
    if (r.op === 'sink') port.push(rate(SIZE, r.hostMs));
  }
  const collected: number[] = [];
  let cpuUs = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const r = await sb.exec('head', ['-c', String(SIZE), '/dev/zero']);
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    cpuUs += cpu.user + cpu.system;
    if (r.stdoutBytes.length !== SIZE) throw new Error(`exec collected ${r.stdoutBytes.length} of ${SIZE} bytes`);
    collected.push(rate(SIZE, ms));
  }
  const mb = (xs: readonly number[]) => `median ${quantile(xs, 0.5).toFixed(1)} MB/s (n=${xs.length}, min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`;
  const pct = (a: readonly number[], b: readonly number[]) => `${((100 * quantile(a, 0.5)) / quantile(b, 0.5)).toFixed(0)} %`;
  const slower = quantile(toPipe, 0.5) < quantile(port, 0.5) ? toPipe : port;
  console.log(`guest: head -c 64M > /dev/null (floor):  ${mb(toNull)}`);
  console.log(`guest: head -c 64M | cat (floor):        ${mb(toPipe)}`);
  console.log(`raw guest→host port, 64 MiB (floor):     ${mb(port)}`);
  console.log(`exec collecting head -c 64M:             ${mb(collected)}   ${pct(collected, slower)} of the slower of pipe and port (goal ≥ 80 %), ${pct(collected, toNull)} of /dev/null (goal ≥ 60 %)`);
  report.add('guest_to_devnull', toNull, 'MB/s');
  report.add('guest_to_pipe', toPipe, 'MB/s');
  report.add('raw_port', port, 'MB/s');
  report.add('exec_stdout', collected, 'MB/s', quantile(slower, 0.5));
  report.add('exec_stdout_vs_devnull', collected, 'MB/s', quantile(toNull, 0.5));
  report.add('host_cpu_per_gib', [cpuUs / 1e6 / ((ROUNDS * SIZE) / 2 ** 30)], 's');
  console.log(`host CPU of this process per GiB of exec output: ${((cpuUs / 1e6) / ((ROUNDS * SIZE) / 2 ** 30)).toFixed(2)} s`);
  await sb.stop();
}
await sup.close();
rmSync(sup.stateDir, { recursive: true, force: true });

// The cold-boot floor of each kernel there is (the same bare boot), taken in turns so that a
// change in the host's load falls on both alike.
async function kernelFloors(): Promise<void> {
  const names = Object.keys(manifestKernels(loadArtifacts())) as KernelName[];
  const kernels = names.map((name) => resolveKernel(loadArtifacts(), name));
  const floors: Partial<Record<KernelName, number[]>> = {};
  for (const k of kernels) await bareBoot(k); // warm-up: page cache
  for (let i = 0; i < RUNS; i++) for (const k of kernels) (floors[k.name] ??= []).push(await bareBoot(k));
  for (const k of kernels) {
    report.add(`bare_boot_${k.name}`, floors[k.name]!, 'ms');
    console.log(`bare boot floor, ${`${k.name} ${k.version}:`.padEnd(27)} ${fmtMs(floors[k.name]!)}`);
  }
  if (floors.debian && floors.custom) {
    const d = quantile(floors.debian, 0.5);
    const c = quantile(floors.custom, 0.5);
    console.log(`the custom kernel's floor is ${(d - c).toFixed(0)} ms (${((1 - c / d) * 100).toFixed(0)} %) below Debian's (medians)`);
  }
}
await kernelFloors();
report.print();
