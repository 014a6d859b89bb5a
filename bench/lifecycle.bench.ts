/**
 * Lifecycle benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench:lifecycle        (RUNS=5 to change the sample count; -- --json adds the
 *                                   figures as one JSON line at the end)
 *
 * Each verb against its floor, measured in the same run on a VM restored from the same
 * template by the VM layer alone (no worker, actor or supervisor):
 * - pause / resume (through the actor) against raw QMP `stop` / `cont`.
 * - stop (graceful: agent sync + guest shutdown + process exit) against the VM layer's own
 *   graceful shutdown.
 * - detached: createDetached → handle against an attached restored create, hosted by a
 *   spare host (started by the create before: src/link/spareHost.ts) and, interleaved,
 *   with spares off (a host process starts and loads first); and
 *   Sandbox.get from another handle → first exec against an attached sandbox's first exec
 *   (under TCG a fresh qemu's first exec pays the translation of the guest's exec paths).
 */
import { kernelLabel } from '../src/runtime/kernel.ts';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor, type SandboxEvent } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { withBareRestore } from './floors.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir });
const accel = resolveAccel();
console.log(`corral lifecycle bench — ${new Date().toISOString()} — accel ${accel.accel}, kernel ${kernelLabel()}, node ${process.version}`);
let templateKey = '';
sup.events$.subscribe((e: SandboxEvent) => {
  // Forks restore from snapshots too (template "snapshot:…"): the floors use the shape's template.
  if (e.type === 'sandbox.restored' && !e.template.startsWith('snapshot:')) templateKey = e.template;
});
const report = new BenchReport('lifecycle');

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
const execRt: number[] = [];
for (let i = 0; i < 20; i++) {
  const t0 = performance.now();
  await sb.exec('true');
  execRt.push(performance.now() - t0);
}
await sb.stop();

const bare = { stateDir, templateKey, memoryMib: 256, accel: accel.accel };
const qmpStop: number[] = [];
const qmpCont: number[] = [];
await withBareRestore({ ...bare, i: 0 }, async (vm) => {
  await vm.agent.ping();
  for (let i = 0; i < 30; i++) {
    let t0 = performance.now();
    await vm.pause();
    qmpStop.push(performance.now() - t0);
    t0 = performance.now();
    await vm.resume();
    qmpCont.push(performance.now() - t0);
  }
});
console.log(`raw QMP stop (floor):                ${fmtMs(qmpStop)}`);
console.log(`pause:                               ${fmtMs(pause)}   ${ratio(pause, qmpStop)} the floor`);
console.log(`raw QMP cont (floor):                ${fmtMs(qmpCont)}`);
console.log(`resume:                              ${fmtMs(resume)}   ${ratio(resume, qmpCont)} the floor`);
report.add('qmp_stop', qmpStop, 'ms');
report.add('pause', pause, 'ms', quantile(qmpStop, 0.5));
report.add('qmp_cont', qmpCont, 'ms');
report.add('resume', resume, 'ms', quantile(qmpCont, 0.5));

const stop: number[] = [];
const stopFloor: number[] = [];
const create: number[] = [];
/** An attached sandbox's first exec: under TCG a fresh qemu translates the guest's exec paths then. */
const firstExec: number[] = [];
const detachedCreate: number[] = [];
const detachedNoSpare: number[] = [];
const reconnect: number[] = [];
/** Waits until a spare host listens for the next detached create. */
async function spareReady(): Promise<void> {
  const dir = join(stateDir, 'run', 'spare');
  for (const end = Date.now() + 60_000; !(existsSync(dir) && readdirSync(dir).length > 0); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > end) throw new Error('no spare host came up');
  }
}
{
  // The first detached create of a state dir has no spare to take: it leaves one.
  process.env.CORRAL_SPARE_HOST = '1';
  const warm = await Sandbox.builder('bench-det-warm').supervisor(sup).createDetached();
  await warm.stop();
  await sup.remove('bench-det-warm');
}
for (let i = 0; i < RUNS; i++) {
  const tc = performance.now();
  const s = await Sandbox.builder(`bench-stop-${i}`).supervisor(sup).create();
  create.push(performance.now() - tc);
  const tf = performance.now();
  await s.exec('true');
  firstExec.push(performance.now() - tf);
  const t0 = performance.now();
  await s.stop();
  stop.push(performance.now() - t0);
  stopFloor.push(
    await withBareRestore({ ...bare, i: 1 + i }, async (vm) => {
      await vm.agent.run({ argv: ['true'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/' });
      const t = performance.now();
      await vm.shutdown();
      return performance.now() - t;
    }),
  );

  process.env.CORRAL_SPARE_HOST = '0';
  const tn = performance.now();
  const n = await Sandbox.builder(`bench-det-ns-${i}`).supervisor(sup).createDetached();
  detachedNoSpare.push(performance.now() - tn);
  await n.stop();
  process.env.CORRAL_SPARE_HOST = '1';
  await spareReady();
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
console.log(`VM layer's graceful shutdown (floor): ${fmtMs(stopFloor)}`);
console.log(`stop (graceful, to process exit):    ${fmtMs(stop)}   ${ratio(stop, stopFloor)} the floor`);
console.log(`create, attached (floor):            ${fmtMs(create)}`);
console.log(`createDetached → handle, spare host: ${fmtMs(detachedCreate)}   ${ratio(detachedCreate, create)} an attached create`);
console.log(`createDetached → handle, no spare:   ${fmtMs(detachedNoSpare)}   ${ratio(detachedNoSpare, create)} an attached create (a host process starts and loads first)`);
console.log(`first exec, attached (floor):        ${fmtMs(firstExec)}   (a fresh qemu translates the guest's exec paths; later execs ${quantile(execRt, 0.5).toFixed(1)} ms)`);
console.log(`Sandbox.get → first exec result:     ${fmtMs(reconnect)}   ${ratio(reconnect, firstExec)} an attached sandbox's first exec`);
report.add('bare_shutdown', stopFloor, 'ms');
report.add('stop', stop, 'ms', quantile(stopFloor, 0.5));
report.add('create_attached', create, 'ms');
report.add('create_detached', detachedCreate, 'ms', quantile(create, 0.5));
report.add('create_detached_no_spare', detachedNoSpare, 'ms', quantile(create, 0.5));
report.add('exec_attached', execRt, 'ms');
report.add('first_exec_attached', firstExec, 'ms');
report.add('get_first_exec', reconnect, 'ms', quantile(firstExec, 0.5));

// A sandbox paused by its idle limit, resumed by the next exec (E2B's autoResume), against
// an exec of a running sandbox; and reconnecting to a background command by id.
const napper = await Sandbox.builder('bench-napper').idleTimeout(1, { action: 'pause' }).supervisor(sup).create();
await napper.exec('true');
const wake: number[] = [];
for (let i = 0; i < RUNS; i++) {
  await napper.waitForEvent('sandbox.paused', { where: (e) => e.reason === 'idle' });
  const t0 = performance.now();
  await napper.exec('true');
  wake.push(performance.now() - t0);
}
const attachMs: number[] = [];
const job = await napper.execStream('sh', ['-c', 'while :; do echo tick; sleep 0.05; done'], { background: true });
for (let i = 0; i < 10; i++) {
  const t0 = performance.now();
  const s = await napper.attach(job.id);
  const it = s[Symbol.asyncIterator]();
  await it.next();
  attachMs.push(performance.now() - t0);
  await it.return?.();
}
await job.kill(9);
await napper.stop();
console.log(`exec on a sandbox paused by idle:    ${fmtMs(wake)}   ${ratio(wake, execRt)} an exec of a running one`);
console.log(`attach to a background command → first item: ${fmtMs(attachMs)}   ${ratio(attachMs, execRt)} an exec round trip`);
report.add('exec_resumes_idle_pause', wake, 'ms', quantile(execRt, 0.5));
report.add('attach_first_item', attachMs, 'ms', quantile(execRt, 0.5));
await sup.close();
rmSync(stateDir, { recursive: true, force: true });
report.print();
