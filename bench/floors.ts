/** Floors the benchmarks measure in the same run as the figures they compare with them. */

import { selectKernel } from '../src/runtime/kernel.ts';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
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
  await vm.agent.ping();
  const pong = performance.now() - t0;
  let firstExec: number | undefined;
  if (o.firstExec) {
    const code = await vm.agent.run({ argv: ['true'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/' });
    if (code !== 0) throw new Error(`true exited ${code}`);
    firstExec = performance.now() - t0;
  }
  vm.kill();
  await vm.exited;
  rmSync(upper, { force: true });
  return firstExec === undefined ? { pong } : { pong, firstExec };
}
