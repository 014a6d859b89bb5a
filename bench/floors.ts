/** Floors the benchmarks measure in the same run as the figures they compare with them. */

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { selectKernel, type GuestKernel } from '../src/runtime/kernel.ts';
import { join } from 'node:path';
import type { Accel } from '../src/bus/events.ts';
import { loadArtifacts } from '../src/runtime/artifacts.ts';
import { findTemplate } from '../src/snapshot/templates.ts';
import { hostTscKhz } from '../src/vm/accel.ts';
import { Vm } from '../src/vm/Vm.ts';

/** What {@link bareRestore} restores: the template of a shape, found in a state dir. */
export interface BareRestoreOptions {
  readonly stateDir: string;
  readonly templateKey: string;
  readonly memoryMib: number;
  readonly accel: Accel;
  /** Makes the overlay's file name unique in the state dir. */
  readonly i: number;
  /**
   * Also time the guest's first exec of `true` (spawn to exit, straight over the agent
   * protocol). Under TCG a fresh qemu translates the guest's fork/exec paths on first use,
   * so the first exec of any VM costs more than later ones: the floor of "create → first
   * exec" pays it too.
   */
  readonly firstExec?: boolean;
}

/** What {@link bareRestore} measured, ms from qemu spawn. */
export interface BareRestoreTimes {
  readonly pong: number;
  /** Present when `firstExec` was asked for. */
  readonly firstExec?: number;
}

/**
 * The restore floor: the template restored by the VM layer alone (no supervisor, no worker,
 * no guest setup), from qemu spawn to the agent's first PONG. Returns ms.
 */
export async function bareRestore(o: BareRestoreOptions): Promise<number> {
  return (await bareRestoreTimes(o)).pong;
}

/** {@link bareRestore}, with the first exec's time when `o.firstExec`. */
export async function bareRestoreTimes(o: BareRestoreOptions): Promise<BareRestoreTimes> {
  return withBareRestore(o, async (vm, t0) => {
    await vm.agent.ping();
    const pong = performance.now() - t0;
    if (!o.firstExec) return { pong };
    const code = await vm.agent.run({ argv: ['true'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/' });
    if (code !== 0) throw new Error(`true exited ${code}`);
    return { pong, firstExec: performance.now() - t0 };
  });
}

/**
 * Restores the template by the VM layer alone (as {@link bareRestore}), runs `fn` on the VM
 * (`t0`: just before the overlay was made), then kills it and removes its overlay.
 */
export async function withBareRestore<T>(o: Omit<BareRestoreOptions, 'firstExec'>, fn: (vm: Vm, t0: number) => Promise<T>): Promise<T> {
  const a = loadArtifacts();
  // the kernel the template was built with: the one a create picks (CORRAL_KERNEL)
  const k = selectKernel();
  const tpl = findTemplate(o.stateDir, o.templateKey);
  if (!tpl) throw new Error(`no template ${o.templateKey} in ${o.stateDir}: create one sandbox of the shape first`);
  const img = a.images['corral/base']!;
  const upper = join(o.stateDir, `bare-${o.i}.qcow2`);
  const t0 = performance.now();
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', tpl.upper, upper]);
  const vm = await Vm.boot({
    qemu: a.qemu, kernel: k.kernel, initramfs: k.initramfs, acpi: k.acpi, lower: { path: img.rootfs, fstype: img.fstype },
    memoryMib: o.memoryMib, cpus: 1, accel: o.accel, tscKhz: hostTscKhz(), upper, hostname: 'corral',
    memoryFile: { path: tpl.memFile, share: false }, incoming: true, restore: { stateFile: tpl.stateFile, hello: tpl.hello },
  });
  try {
    return await fn(vm, t0);
  } finally {
    vm.kill();
    await vm.exited;
    rmSync(upper, { force: true });
  }
}

/** Proportional set size of a process, MiB (`/proc/<pid>/smaps_rollup`). */
export function pssMib(pid: number | 'self'): number {
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

/**
 * The cold-boot floor: spawn → agent HELLO of a bare qemu microVM of kernel `k` (the one
 * CORRAL_KERNEL picks by default; same initramfs, no root disk, no corral runtime: a dozen
 * lines of Node). Returns ms.
 */
export async function bareBoot(accel: Accel, k: GuestKernel = selectKernel()): Promise<number> {
  const a = loadArtifacts();
  const dir = mkdtempSync(join(tmpdir(), 'corral-run-bench-'));
  const sock = join(dir, 'a.sock');
  const server = createServer();
  await new Promise<void>((r) => server.listen(sock, r));
  const t0 = performance.now();
  const tsc = hostTscKhz();
  const child = spawn(a.qemu, [
    '-M', `microvm,acpi=${k.acpi ? 'on' : 'off'},x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on`,
    '-accel', accel, '-cpu', 'max', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', k.kernel, '-initrd', k.initramfs,
    '-append', `console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests mitigations=off audit=0 8250.nr_uarts=1 random.trust_cpu=on no_timer_check tsc=reliable ${tsc ? `tsc_early_khz=${tsc}` : ''}`,
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${sock}`,
    '-device', 'virtserialport,chardev=agent,name=corral.agent',
  ], { stdio: 'ignore' });
  try {
    return await new Promise<number>((resolve, reject) => {
      server.once('connection', (c) => c.once('data', () => resolve(performance.now() - t0)));
      child.once('exit', (code) => reject(new Error(`bare qemu exited ${code}`)));
    });
  } finally {
    child.kill('SIGKILL');
    if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
