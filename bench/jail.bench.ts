/**
 * What the VM jail costs (src/vm/jail.ts, native/jail). Prints figures; asserts nothing.
 *
 *   npm run bench:jail            (RUNS=20 to change the sample count)
 *
 * - a restored create (create() called → resolved, the template built beforehand), jailed
 *   and with `CORRAL_JAIL=off`, interleaved in the same run, and the difference: what the
 *   jail adds (uid claim, cgroup, the launcher's namespaces and mounts, the pid report);
 * - the same for a sandbox with a NIC (`allowAll`): jailed, its qemu in a network namespace
 *   of its own with slirp4netns outside; unjailed, qemu's own slirp in the host's;
 * - the template restored by the VM layer alone (no supervisor or worker), jailed and not,
 *   interleaved, with the time at which each step of the boot ended (`Vm.bootPhases`): which
 *   step the jail's time goes to;
 * - its parts on the create's path: preparing a jail (uid claim, cgroup with its limits)
 *   and the launcher alone, `corral-jail … -- /usr/bin/true` (the mounts of a VM without
 *   volumes) against `setpriv --pdeathsig KILL -- /usr/bin/true`, what it replaces.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetworkPolicy, Sandbox, Supervisor } from '../src/index.ts';
import { loadArtifacts } from '../src/runtime/artifacts.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { JAIL_UID_BASE, prepareJail } from '../src/vm/jail.ts';
import { withBareRestore } from './floors.ts';
import { BenchReport, fmtMs, quantile } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 20);
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir, maxSandboxes: 256 });
const accel = resolveAccel();
console.log(`corral jail bench — ${new Date().toISOString()} — accel ${accel.accel} (${accel.reason}), node ${process.version}, ${RUNS} runs`);

async function restoredCreate(name: string, jailed: boolean, nic = false): Promise<number> {
  if (jailed) delete process.env.CORRAL_JAIL;
  else process.env.CORRAL_JAIL = 'off';
  const t0 = performance.now();
  const builder = Sandbox.builder(name).supervisor(sup);
  const sb = await (nic ? builder.network((n) => n.policy(NetworkPolicy.allowAll())) : builder).create();
  const ms = performance.now() - t0;
  delete process.env.CORRAL_JAIL;
  const info = await sb.info();
  if (info.jail?.jailed !== jailed) throw new Error(`sandbox ${name}: jailed ${info.jail?.jailed}, wanted ${jailed}: ${info.jail?.missing.join('; ')}`);
  if (nic && info.jail.netns !== jailed) throw new Error(`sandbox ${name}: own network namespace ${info.jail.netns}, wanted ${jailed}: ${info.jail.missing.join('; ')}`);
  await sb.stop();
  await sup.remove(name);
  return ms;
}

function timeSpawn(argv: readonly string[]): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`${argv[0]} exited ${code}`))));
  });
}

// Warm-up, which also builds the template (jailed and not: the same one).
let templateKey = '';
const sub = sup.events$.subscribe((e) => {
  // The first: the plain template (the NIC-shaped one, restored later, has another device layout).
  if (e.type === 'sandbox.restored' && !e.template.startsWith('snapshot:')) templateKey ||= e.template;
});
await restoredCreate('warm-j', true);
await restoredCreate('warm-u', false);
await restoredCreate('warm-nj', true, true);
await restoredCreate('warm-nu', false, true);

const jailed: number[] = [];
const unjailed: number[] = [];
const pairs: number[] = [];
for (let i = 0; i < RUNS; i++) {
  // Alternate which goes first, so neither always follows the other's teardown.
  const [first, second] = i % 2 ? [true, false] : [false, true];
  const a = await restoredCreate(`r-${i}-a`, first);
  const b = await restoredCreate(`r-${i}-b`, second);
  const [j, u] = first ? [a, b] : [b, a];
  jailed.push(j);
  unjailed.push(u);
  pairs.push(j - u);
}

// With a NIC: half as many pairs (each create also sets up its nftables table and cgroup).
const nicJailed: number[] = [];
const nicUnjailed: number[] = [];
const nicPairs: number[] = [];
for (let i = 0; i < Math.ceil(RUNS / 2); i++) {
  const [first, second] = i % 2 ? [true, false] : [false, true];
  const a = await restoredCreate(`n-${i}-a`, first, true);
  const b = await restoredCreate(`n-${i}-b`, second, true);
  const [j, u] = first ? [a, b] : [b, a];
  nicJailed.push(j);
  nicUnjailed.push(u);
  nicPairs.push(j - u);
}

// The VM layer alone, jailed and not in turns: when each step of the boot ended.
sub.unsubscribe();
const phases = { jailed: {} as Record<string, number[]>, unjailed: {} as Record<string, number[]> };
for (let i = 0; i < RUNS * 2; i++) {
  const jailedRun = (i + Math.floor(i / 2)) % 2 === 1; // on, off, off, on, on, off…
  if (jailedRun) delete process.env.CORRAL_JAIL;
  else process.env.CORRAL_JAIL = 'off';
  await withBareRestore({ stateDir, templateKey, memoryMib: 256, accel: accel.accel, i }, async (vm, t0) => {
    await vm.agent.ping();
    for (const [k, v] of Object.entries({ ...vm.bootPhases, pong: performance.now() - t0 })) ((jailedRun ? phases.jailed : phases.unjailed)[k] ??= []).push(v);
  });
}
delete process.env.CORRAL_JAIL;
await sup.close();

const launcher = (loadArtifacts() as { jail?: string }).jail!;
const uid = String(JAIL_UID_BASE + 65_535);
const jailArgv = [launcher, '--uid', uid, '--gid', uid, '--netns', '--sys', '/usr', '--symlink', 'usr/lib', '/lib', '--symlink', 'usr/lib64', '/lib64', '--symlink', 'usr/bin', '/bin', '--sys', '/etc/ld.so.cache', '--dev', '/dev/null', '--dev', '/dev/urandom', '--ro-bind', launcher, '--', '/usr/bin/true'];
const launch: number[] = [];
const plain: number[] = [];
for (let i = 0; i < Math.max(RUNS, 30); i++) {
  launch.push(await timeSpawn(jailArgv));
  plain.push(await timeSpawn(['setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/true']));
}

const prepare: number[] = [];
for (let i = 0; i < Math.max(RUNS, 30); i++) {
  const t0 = performance.now();
  const jail = await prepareJail({ memoryMib: 256, cpus: 1, accel: accel.accel, paths: [], nic: false });
  prepare.push(performance.now() - t0);
  await jail.release();
}

const med = (xs: number[]) => quantile(xs, 0.5);
console.log(`restored create, jailed:                 ${fmtMs(jailed)}`);
console.log(`restored create, CORRAL_JAIL=off:        ${fmtMs(unjailed)}`);
console.log(`jail's cost: median of the pairs ${med(pairs).toFixed(1)} ms (p95 ${quantile(pairs, 0.95).toFixed(1)}), difference of the medians ${(med(jailed) - med(unjailed)).toFixed(1)} ms`);
console.log(`with a NIC, jailed (own network namespace, slirp4netns): ${fmtMs(nicJailed)}`);
console.log(`with a NIC, CORRAL_JAIL=off (qemu's slirp):        ${fmtMs(nicUnjailed)}`);
console.log(`jail's cost with a NIC: median of the pairs ${med(nicPairs).toFixed(1)} ms (p95 ${quantile(nicPairs, 0.95).toFixed(1)}), difference of the medians ${(med(nicJailed) - med(nicUnjailed)).toFixed(1)} ms`);
console.log(`VM layer alone, restored → first PONG, when each step ended (median ms from Vm.boot; jailed / unjailed / difference):`);
for (const k of Object.keys(phases.jailed)) {
  const j = med(phases.jailed[k]!);
  const u = med(phases.unjailed[k]!);
  console.log(`  ${k.padEnd(10)} ${j.toFixed(1).padStart(7)} ${u.toFixed(1).padStart(7)} ${(j - u >= 0 ? '+' : '') + (j - u).toFixed(1)}`);
}
console.log(`preparing a jail (uid, cgroup, limits):  ${fmtMs(prepare)}`);
console.log(`launcher → true: corral-jail ${fmtMs(launch)}; setpriv ${fmtMs(plain)}; difference of the medians ${(med(launch) - med(plain)).toFixed(2)} ms`);
const report = new BenchReport('jail');
report.add('restored_create_jailed', jailed, 'ms', med(unjailed));
report.add('restored_create_unjailed', unjailed, 'ms');
report.add('jail_added_pairs', pairs, 'ms');
report.add('restored_create_nic_jailed', nicJailed, 'ms', med(nicUnjailed));
report.add('restored_create_nic_unjailed', nicUnjailed, 'ms');
report.add('jail_added_nic_pairs', nicPairs, 'ms');
report.add('bare_restore_pong_jailed', phases.jailed.pong!, 'ms', med(phases.unjailed.pong!));
report.add('bare_restore_pong_unjailed', phases.unjailed.pong!, 'ms');
report.add('prepare', prepare, 'ms');
report.add('launcher_true', launch, 'ms', med(plain));
report.print();
rmSync(stateDir, { recursive: true, force: true });
