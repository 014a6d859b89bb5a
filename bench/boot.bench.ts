/**
 * Boot and exec benchmarks. Prints figures; asserts nothing.
 *
 *   npm run bench            (RUNS=7 EXECS=100 to change the sample counts)
 *
 * - create → first exec result, against the floor measured in the same run: a bare qemu
 *   boot of the same kernel + initramfs until the agent (the initramfs's /init) says HELLO,
 *   driven by a dozen lines of Node with no corral code in the path.
 * - exec round trip of `true`, against a raw PING/PONG over the same virtio-serial port.
 * - stdout throughput of `cat` of a 64 MiB file.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Supervisor } from '../src/index.ts';
import { loadArtifacts } from '../src/runtime/artifacts.ts';
import { hostTscKhz, resolveAccel } from '../src/vm/accel.ts';
import { fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 7);
const EXECS = Number(process.env.EXECS ?? 100);

/** spawn → HELLO of a bare qemu microVM, no rootfs, no corral runtime. */
async function bareBoot(): Promise<number> {
  const a = loadArtifacts();
  const dir = mkdtempSync(join(tmpdir(), 'corral-run-bench-'));
  const sock = join(dir, 'a.sock');
  const server = createServer();
  await new Promise<void>((r) => server.listen(sock, r));
  const t0 = performance.now();
  const tsc = hostTscKhz();
  const child = spawn(a.qemu, [
    '-M', 'microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on',
    '-accel', resolveAccel().accel, '-cpu', 'max', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', a.kernel, '-initrd', a.initramfs,
    '-append', `console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests mitigations=off audit=0 8250.nr_uarts=1 random.trust_cpu=on ${tsc ? `tsc_early_khz=${tsc}` : ''}`,
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${sock}`,
    '-device', 'virtserialport,chardev=agent,name=corral.agent',
  ], { stdio: 'ignore' });
  const ms = await new Promise<number>((resolve, reject) => {
    server.once('connection', (c) => c.once('data', () => resolve(performance.now() - t0)));
    child.once('exit', (code) => reject(new Error(`bare qemu exited ${code}`)));
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  server.close();
  rmSync(dir, { recursive: true, force: true });
  return ms;
}

const sup = new Supervisor({ stateDir: mkdtempSync(join(tmpdir(), 'corral-bench-state-')) });
const accel = resolveAccel();
console.log(`corral boot bench — ${new Date().toISOString()} — accel ${accel.accel} (${accel.reason}), node ${process.version}`);

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

const sb = await Sandbox.builder('bench-exec').supervisor(sup).create();
const pings: number[] = [];
const execs: number[] = [];
for (let i = 0; i < 10; i++) await sb.exec('true');
for (let i = 0; i < EXECS; i++) {
  pings.push(await sb.ping(64));
  const t0 = performance.now();
  await sb.exec('true');
  execs.push(performance.now() - t0);
}
console.log(`raw PING/PONG over the agent port:       ${fmtMs(pings)}`);
console.log(`exec round trip of \`true\`:               ${fmtMs(execs)}   ${ratio(execs, pings)} the raw round trip`);

await sb.shell('head -c 67108864 /dev/zero > /tmp/big');
const mbps: number[] = [];
for (let i = 0; i < 3; i++) {
  const t0 = performance.now();
  const r = await sb.exec('cat', ['/tmp/big']);
  const s = (performance.now() - t0) / 1000;
  mbps.push(r.stdoutBytes.length / 1e6 / s);
}
console.log(`stdout throughput, cat of 64 MiB:        median ${quantile(mbps, 0.5).toFixed(1)} MB/s (n=${mbps.length}, max ${Math.max(...mbps).toFixed(1)})`);
await sb.stop();
await sup.close();
rmSync(sup.stateDir, { recursive: true, force: true });
