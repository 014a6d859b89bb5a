/**
 * Density benchmark: many idle restored sandboxes in one process. Prints figures; asserts
 * nothing.
 *
 *   npm run bench:density -- --n 100 [--workers 2] [--isolation shared|worker] [--memory 128] [--spares 1] [--json]
 *
 * - N restored sandboxes created one after another, each answering `exec true` before the
 *   next create: create → first exec median/p95, against the bare restore floor measured in
 *   the same run (a qemu restoring the same template by itself, driven by the VM layer
 *   alone, as bench/template.bench.ts does), sampled between the creates so that both see
 *   the same number of live VMs; and the create rate.
 * - With all N alive and idle: host memory per sandbox (this Node process's RSS growth / N,
 *   and its PSS growth from /proc/self/smaps_rollup), qemu PSS per VM (each qemu's
 *   smaps_rollup), how many answer an exec, and the exec latency.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Sandbox, Supervisor, type SandboxEvent } from '../src/index.ts';
import type { Isolation } from '../src/pool/SandboxPool.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { bareRestoreTimes } from './floors.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '100' },
    workers: { type: 'string' },
    isolation: { type: 'string', default: 'shared' },
    memory: { type: 'string', default: '128' },
    'floor-every': { type: 'string' },
    spares: { type: 'string', default: '0' },
    json: { type: 'boolean', default: false },
  },
});
const report = new BenchReport('density');
const N = Number(args.n);
const memoryMib = Number(args.memory);
if (!Number.isInteger(N) || N < 1) throw new RangeError(`--n must be a positive integer (got ${args.n})`);
const floorEvery = Number(args['floor-every'] ?? Math.max(1, Math.floor(N / 10)));
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-density-'));
const sup = new Supervisor({
  stateDir,
  maxSandboxes: N + 8,
  isolation: args.isolation as Isolation,
  spares: Number(args.spares),
  ...(args.workers !== undefined ? { workers: Number(args.workers) } : {}),
});
const accel = resolveAccel();
console.log(
  `corral density bench — ${new Date().toISOString()} — n=${N}, ${memoryMib} MiB each, isolation ${sup.pool.isolation}` +
    `${sup.pool.isolation === 'shared' ? `, ${sup.pool.size} workers` : ''}, spares ${args.spares}, accel ${accel.accel}, ${availableParallelism()} cores, node ${process.version}`,
);

let templateKey = '';
let fromSpare = 0;
sup.events$.subscribe((e: SandboxEvent) => {
  if (e.type === 'sandbox.restored') {
    templateKey = e.template;
    if (e.spare) fromSpare++;
  }
});

function rollupKib(pid: number | 'self', field: 'Pss' | 'Rss'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

/** The floors: the same template restored by the VM layer alone, to its first PONG and through its first exec. */
const bareRestore = (i: number) => bareRestoreTimes({ stateDir, templateKey, memoryMib, accel: accel.accel, i, firstExec: true });

/** Idle for 2 s, then a full GC of this thread, so that RSS compares live memory, not garbage. */
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (() => void) | undefined;
const settle = async () => {
  await new Promise((r) => setTimeout(r, 2000));
  gc?.();
};

// Warm-up: builds the template, loads every module, starts the pool's workers.
const warm = await Sandbox.builder('warm').memory(memoryMib).supervisor(sup).create();
await warm.exec('true');
await warm.stop();
await sup.remove('warm');
sup.pool.warm();
await settle();
const rss0 = process.memoryUsage.rss() / 1024;
const pss0 = rollupKib('self', 'Pss');

const sandboxes: Sandbox[] = [];
const createMs: number[] = [];
/** Create alone (the call's own time), then create → first exec. */
const createOnlyMs: number[] = [];
const floor: number[] = [];
const floorExec: number[] = [];
let floorTotal = 0;
const tAll = performance.now();
for (let i = 0; i < N; i++) {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`d-${i}`).memory(memoryMib).supervisor(sup).create();
  createOnlyMs.push(performance.now() - t0);
  await sb.exec('true');
  createMs.push(performance.now() - t0);
  sandboxes.push(sb);
  if (i % floorEvery === 0) {
    const tf = performance.now();
    const f = await bareRestore(i);
    floorTotal += performance.now() - tf;
    floor.push(f.pong);
    floorExec.push(f.firstExec!);
  }
}
const allMs = performance.now() - tAll - floorTotal;
const p95Ratio = (a: number[], b: number[]) => `p95 ×${(quantile(a, 0.95) / quantile(b, 0.95)).toFixed(2)}`;
console.log(`bare restore → first PONG (floor):         ${fmtMs(floor)}`);
console.log(`bare restore → first exec done (floor):    ${fmtMs(floorExec)}   (a fresh qemu's first exec: TCG translates the guest's fork/exec paths once per process)`);
console.log(`create, restored, back to back:            ${fmtMs(createOnlyMs)}   ${ratio(createOnlyMs, floor)} the PONG floor (median), ${p95Ratio(createOnlyMs, floor)}`);
console.log(`create → first exec, restored:             ${fmtMs(createMs)}   ${ratio(createMs, floorExec)} the first-exec floor (median), ${p95Ratio(createMs, floorExec)}; ${ratio(createMs, floor)} the PONG floor`);
console.log(`create rate (create + first exec, in a row): ${(N / (allMs / 1000)).toFixed(2)} sandboxes/s; ${fromSpare}/${N} creates took a spare VM`);

report.add('bare_restore_pong', floor, 'ms');
report.add('bare_restore_first_exec', floorExec, 'ms');
report.add('create', createOnlyMs, 'ms', quantile(floor, 0.5));
report.add('create_first_exec', createMs, 'ms', quantile(floorExec, 0.5));
report.add('create_rate', [N / (allMs / 1000)], 'sandboxes/s');

await settle(); // idle
const rss1 = process.memoryUsage.rss() / 1024;
const pss1 = rollupKib('self', 'Pss');
const qemuPss = await Promise.all(sandboxes.map(async (s) => rollupKib((await s.info()).pid!, 'Pss') / 1024));
console.log(`host Node process, baseline after warm-up: RSS ${(rss0 / 1024).toFixed(1)} MiB, PSS ${(pss0 / 1024).toFixed(1)} MiB (${sup.pool.workerCount} sandbox workers${gc ? ', main thread GC\'d before each reading' : ', no --expose-gc: garbage counts'})`);
const signed = (mib: number) => `${mib >= 0 ? '+' : ''}${mib.toFixed(2)}`;
console.log(`host memory per idle sandbox:              RSS ${signed((rss1 - rss0) / 1024 / N)} MiB, PSS ${signed((pss1 - pss0) / 1024 / N)} MiB (n=${N}, ${sup.pool.workerCount} workers, loads ${sup.pool.loads.join('/')})`);
console.log(`qemu PSS per idle VM:                      median ${quantile(qemuPss, 0.5).toFixed(1)} MiB, max ${Math.max(...qemuPss).toFixed(1)} MiB`);

const execMs: number[] = [];
let answered = 0;
for (const sb of sandboxes) {
  const t0 = performance.now();
  const r = await sb.exec('echo', ['ok']);
  execMs.push(performance.now() - t0);
  if (r.stdout === 'ok\n') answered++;
}
console.log(`with all ${N} alive: ${answered}/${N} answered exec, exec latency ${fmtMs(execMs)}`);
report.add('host_rss_per_sandbox', [(rss1 - rss0) / 1024 / N], 'MiB');
report.add('qemu_pss', qemuPss, 'MiB');
report.add('exec_all_alive', execMs, 'ms');
report.add('answered', [answered / N], 'fraction');

await Promise.all(sandboxes.map((s) => s.stop()));
await sup.close();
rmSync(stateDir, { recursive: true, force: true });
report.print();
