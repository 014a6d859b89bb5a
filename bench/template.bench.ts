/**
 * Fast-start benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench:template        (RUNS=10 BURST=10 to change the sample counts; -- --json adds
 *                                  the figures as one JSON line at the end)
 *
 * - create → first exec result: cold boot vs restored from a template, interleaved, with
 *   the ratio between them, and against the floor measured in the same run: a bare restore
 *   of the same template (qemu spawn → migration → first agent PONG) driven by the VM layer
 *   alone, no worker, actor or supervisor in the path.
 * - BURST sandboxes created at once from a template: time until all answered an exec, and
 *   the host PSS of each VM process.
 */
import { execFileSync } from 'node:child_process';
import { kernelLabel } from '../src/runtime/kernel.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor, type SandboxEvent } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { findTemplate } from '../src/snapshot/templates.ts';
import { bareBoot, bareRestoreTimes, pssMib, withBareRestore } from './floors.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 10);
const BURST = Number(process.env.BURST ?? 10);
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir, maxSandboxes: 256 });
const accel = resolveAccel();
console.log(`corral template bench — ${new Date().toISOString()} — accel ${accel.accel} (${accel.reason}), kernel ${kernelLabel()}, node ${process.version}`);

let templateKey = '';
sup.events$.subscribe((e: SandboxEvent) => {
  // Forks restore from snapshots too (template "snapshot:…"): the floors use the shape's template.
  if (e.type === 'sandbox.restored' && !e.template.startsWith('snapshot:')) templateKey = e.template;
});

async function createToFirstExec(name: string, template: boolean): Promise<number> {
  const t0 = performance.now();
  const sb = await Sandbox.builder(name).template(template).supervisor(sup).create();
  await sb.exec('true');
  const ms = performance.now() - t0;
  await sb.stop();
  await sup.remove(name);
  return ms;
}

/** The floors: the same template restored by the VM layer alone, to its first PONG and through its first exec. */
const bareRestore = (i: number) => bareRestoreTimes({ stateDir, templateKey, memoryMib: 256, accel: accel.accel, i, firstExec: true });
const report = new BenchReport('template');

// Warm-up, which also builds the template.
await createToFirstExec('warm-t', true);
await createToFirstExec('warm-c', false);

const cold: number[] = [];
const restored: number[] = [];
const floor: number[] = [];
const floorExec: number[] = [];
const bootFloor: number[] = [];
for (let i = 0; i < RUNS; i++) {
  cold.push(await createToFirstExec(`cold-${i}`, false));
  bootFloor.push(await bareBoot(accel.accel));
  restored.push(await createToFirstExec(`warm-${i}`, true));
  const f = await bareRestore(i);
  floor.push(f.pong);
  floorExec.push(f.firstExec!);
}
console.log(`bare restore → first PONG (floor):       ${fmtMs(floor)}`);
console.log(`bare restore → first exec done (floor):  ${fmtMs(floorExec)}`);
console.log(`create → first exec, restored:           ${fmtMs(restored)}   ${ratio(restored, floorExec)} the first-exec floor, ${ratio(restored, floor)} the PONG floor`);
console.log(`bare qemu boot → agent HELLO (floor):    ${fmtMs(bootFloor)}`);
console.log(`create → first exec, cold boot:          ${fmtMs(cold)}   ${ratio(cold, bootFloor)} the bare boot (goal ≤ ×1.2)`);
console.log(`restored / cold:                         ×${(quantile(restored, 0.5) / quantile(cold, 0.5)).toFixed(2)}`);
report.add('bare_restore_pong', floor, 'ms');
report.add('bare_restore_first_exec', floorExec, 'ms');
report.add('restored_create_first_exec', restored, 'ms', quantile(floorExec, 0.5));
report.add('bare_boot', bootFloor, 'ms');
report.add('cold_create_first_exec', cold, 'ms', quantile(bootFloor, 0.5));

const t0 = performance.now();
const burst = await Promise.all(Array.from({ length: BURST }, (_, i) => Sandbox.builder(`burst-${i}`).supervisor(sup).create()));
await Promise.all(burst.map((s) => s.exec('true')));
const burstMs = performance.now() - t0;
await new Promise((r) => setTimeout(r, 1000)); // idle
const pss = await Promise.all(burst.map(async (s) => pssMib((await s.info()).pid!)));
// The PSS floor: a VM restored from the same template by the VM layer alone, idle as long
// after its first exec, while the burst runs (so shared pages are split as many ways).
const barePss = await withBareRestore({ stateDir, templateKey, memoryMib: 256, accel: accel.accel, i: 900 }, async (vm) => {
  await vm.agent.run({ argv: ['true'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/' });
  await new Promise((r) => setTimeout(r, 1000));
  return pssMib(vm.pid);
});
console.log(`${BURST} restored at once, all answered exec:   ${burstMs.toFixed(0)} ms`);
console.log(`PSS per idle restored VM process:        median ${quantile(pss, 0.5).toFixed(1)} MiB, max ${Math.max(...pss).toFixed(1)} MiB   ×${(quantile(pss, 0.5) / barePss).toFixed(2)} a bare restored qemu's ${barePss.toFixed(1)} MiB (goal ≤ 16 MiB)`);
report.add('burst_all_answered', [burstMs], 'ms');
report.add('restored_pss', pss, 'MiB', barePss);
const coldOne = await Sandbox.builder('cold-pss').template(false).supervisor(sup).create();
await new Promise((r) => setTimeout(r, 1000));
const coldPss = pssMib((await coldOne.info()).pid!);
console.log(`PSS of one idle cold-booted VM process:  ${coldPss.toFixed(1)} MiB`);
report.add('cold_pss', [coldPss], 'MiB');
const forkMs: number[] = [];
const snapMs: number[] = [];
const saveFloor: number[] = [];
const deltaFloor: number[] = [];
for (let i = 0; i < Math.min(RUNS, 5); i++) {
  let t = performance.now();
  await burst[0]!.snapshot(`snap-${i}`);
  snapMs.push(performance.now() - t);
  t = performance.now();
  const child = await burst[0]!.fork(`fork-${i}`);
  await child.exec('true');
  forkMs.push(performance.now() - t);
  await child.stop();
  // The snapshot's floor: qemu alone writing the same guest's whole RAM and devices to a file
  // (QMP stop + migrate), on a bare restored VM of the same shape.
  // And of a sandbox restored from a template: the same VM's changed pages and devices alone
  // (Vm.saveDelta), no actor, worker or disk copy in the path.
  await withBareRestore({ stateDir, templateKey, memoryMib: 256, accel: accel.accel, i: 1000 + i }, async (vm) => {
    await vm.agent.ping();
    const file = join(stateDir, `bare-save-${i}`);
    let t1 = performance.now();
    await vm.saveDelta(file, findTemplate(stateDir, templateKey)!);
    deltaFloor.push(performance.now() - t1);
    await vm.resume();
    t1 = performance.now();
    await vm.saveTo(file, { ignoreShared: false });
    saveFloor.push(performance.now() - t1);
    rmSync(file, { force: true });
  });
}
console.log(`qemu alone saving RAM + devices (floor): ${fmtMs(saveFloor)}`);
console.log(`qemu devices + changed pages (floor):    ${fmtMs(deltaFloor)}`);
console.log(`snapshot of a running sandbox:           ${fmtMs(snapMs)}   ${ratio(snapMs, deltaFloor)} the changed-pages floor, ${ratio(snapMs, saveFloor)} the whole-RAM save (goal ≤ 150 ms for 256 MiB)`);
console.log(`fork → child's first exec result:        ${fmtMs(forkMs)}   ${ratio(forkMs, restored)} a restored create → first exec (goal ≤ ×1.3)`);
report.add('bare_save', saveFloor, 'ms');
report.add('bare_delta_save', deltaFloor, 'ms');
report.add('snapshot', snapMs, 'ms', quantile(deltaFloor, 0.5));
report.add('fork_first_exec', forkMs, 'ms', quantile(restored, 0.5));

// A portable snapshot of the 256 MiB sandbox: export to one archive, import into another
// state dir, against tar copying the same snapshot directory (the bytes alone) in this run.
const otherDir = mkdtempSync(join(tmpdir(), 'corral-bench-import-'));
const other = new Supervisor({ stateDir: otherDir });
const exportMs: number[] = [];
const importMs: number[] = [];
const tarMs: number[] = [];
let archiveBytes = 0;
for (let i = 0; i < Math.min(RUNS, 3); i++) {
  const file = join(otherDir, `snap-${i}.corral`);
  let t = performance.now();
  archiveBytes = (await Sandbox.exportSnapshot('snap-0', file, { supervisor: sup })).bytes;
  exportMs.push(performance.now() - t);
  t = performance.now();
  await Sandbox.importSnapshot(file, { name: `imported-${i}`, supervisor: other });
  importMs.push(performance.now() - t);
  t = performance.now();
  execFileSync('tar', ['-cSf', join(otherDir, `plain-${i}.tar`), '-C', join(stateDir, 'snapshots'), 'snap-0']);
  tarMs.push(performance.now() - t);
  rmSync(file, { force: true });
  rmSync(join(otherDir, `plain-${i}.tar`), { force: true });
}
await other.close();
rmSync(otherDir, { recursive: true, force: true });
console.log(`tar of the snapshot's files (floor):      ${fmtMs(tarMs)}`);
console.log(`export of a 256 MiB sandbox's snapshot:   ${fmtMs(exportMs)}   ${ratio(exportMs, tarMs)} the floor; archive ${(archiveBytes / 2 ** 20).toFixed(1)} MiB`);
console.log(`import (every file checked, root compared): ${fmtMs(importMs)}`);
report.add('tar_snapshot', tarMs, 'ms');
report.add('export_snapshot', exportMs, 'ms', quantile(tarMs, 0.5));
report.add('import_snapshot', importMs, 'ms', quantile(tarMs, 0.5));
report.add('archive_size', [archiveBytes / 2 ** 20], 'MiB');
await Promise.all([...burst, coldOne].map((s) => s.stop()));
await sup.close();
rmSync(stateDir, { recursive: true, force: true });
report.print();
