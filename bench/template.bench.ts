/**
 * Fast-start benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench:template        (RUNS=10 BURST=10 to change the sample counts)
 *
 * - create → first exec result: cold boot vs restored from a template, interleaved, with
 *   the ratio between them, and against the floor measured in the same run: a bare restore
 *   of the same template (qemu spawn → migration → first agent PONG) driven by the VM layer
 *   alone, no worker, actor or supervisor in the path.
 * - BURST sandboxes created at once from a template: time until all answered an exec, and
 *   the host PSS of each VM process.
 */
import { kernelLabel } from '../src/runtime/kernel.ts';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor, type SandboxEvent } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { bareRestore as restoreFloor } from './floors.ts';
import { fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 10);
const BURST = Number(process.env.BURST ?? 10);
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir, maxSandboxes: 256 });
const accel = resolveAccel();
console.log(`corral template bench — ${new Date().toISOString()} — accel ${accel.accel} (${accel.reason}), kernel ${kernelLabel()}, node ${process.version}`);

let templateKey = '';
sup.events$.subscribe((e: SandboxEvent) => {
  if (e.type === 'sandbox.restored') templateKey = e.template;
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

/** The floor: the same template restored by the VM layer alone, to its first PONG. */
const bareRestore = (i: number): Promise<number> => restoreFloor({ stateDir, templateKey, memoryMib: 256, accel: accel.accel, i });

// Warm-up, which also builds the template.
await createToFirstExec('warm-t', true);
await createToFirstExec('warm-c', false);

const cold: number[] = [];
const restored: number[] = [];
const floor: number[] = [];
for (let i = 0; i < RUNS; i++) {
  cold.push(await createToFirstExec(`cold-${i}`, false));
  restored.push(await createToFirstExec(`warm-${i}`, true));
  floor.push(await bareRestore(i));
}
console.log(`bare restore → first PONG (floor):      ${fmtMs(floor)}`);
console.log(`create → first exec, restored:           ${fmtMs(restored)}   ${ratio(restored, floor)} the floor`);
console.log(`create → first exec, cold boot:          ${fmtMs(cold)}`);
console.log(`restored / cold:                         ×${(quantile(restored, 0.5) / quantile(cold, 0.5)).toFixed(2)}`);

function pssKib(pid: number): number {
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

const t0 = performance.now();
const burst = await Promise.all(Array.from({ length: BURST }, (_, i) => Sandbox.builder(`burst-${i}`).supervisor(sup).create()));
await Promise.all(burst.map((s) => s.exec('true')));
const burstMs = performance.now() - t0;
await new Promise((r) => setTimeout(r, 1000)); // idle
const pss = await Promise.all(burst.map(async (s) => pssKib((await s.info()).pid!) / 1024));
console.log(`${BURST} restored at once, all answered exec:   ${burstMs.toFixed(0)} ms`);
console.log(`PSS per idle restored VM process:        median ${quantile(pss, 0.5).toFixed(1)} MiB, max ${Math.max(...pss).toFixed(1)} MiB`);
const coldOne = await Sandbox.builder('cold-pss').template(false).supervisor(sup).create();
await new Promise((r) => setTimeout(r, 1000));
console.log(`PSS of one idle cold-booted VM process:  ${(pssKib((await coldOne.info()).pid!) / 1024).toFixed(1)} MiB`);
const forkMs: number[] = [];
const snapMs: number[] = [];
for (let i = 0; i < Math.min(RUNS, 5); i++) {
  let t = performance.now();
  await burst[0]!.snapshot(`snap-${i}`);
  snapMs.push(performance.now() - t);
  t = performance.now();
  const child = await burst[0]!.fork(`fork-${i}`);
  await child.exec('true');
  forkMs.push(performance.now() - t);
  await child.stop();
}
console.log(`snapshot of a running sandbox:           ${fmtMs(snapMs)}`);
console.log(`fork → child's first exec result:        ${fmtMs(forkMs)}`);
await Promise.all([...burst, coldOne].map((s) => s.stop()));
await sup.close();
rmSync(stateDir, { recursive: true, force: true });
